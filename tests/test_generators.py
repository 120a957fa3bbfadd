"""The generators study (slides 15-18): char- and word-level models, bits per character, samples."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import UserError
from studies.generators import capped, scored_chars, token_chars
from tests.conftest import one_line_error, run_module
from tests.fakeclock import install
from tests.lmdata import make_corpus, toy_text
from tests.test_studies import _params_file, params_for

TINY = {"studies.generators.hidden": 16, "studies.generators.layers": 1, "studies.generators.batch_size": 8,
        "studies.generators.seq_len": 32, "studies.generators.warmup_steps": 5, "studies.generators.seconds": 1.5,
        "studies.generators.val_every": 25, "studies.generators.word_val_every": 10, "studies.generators.sample_chars": 120, "studies.generators.val_chars": 3000,
        "studies.generators.precision": "32-true", "studies.generators.primes": {"toy": "ROMEO:"}}


@pytest.fixture(autouse=True)
def exact_clock(monkeypatch):
    """Every training step takes 1/128 s of the budget's clock (tests/fakeclock.py): on the
    wall clock a loaded machine trained too few steps in 1.5 s to pass the quality checks."""
    install(monkeypatch, 1 / 128)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """data/onehot/toy (char level, as the onehot stage writes it) and data/raw/toy/corpus.txt."""
    root = tmp_path_factory.mktemp("gen")
    text = toy_text(40_000, seed=3)
    make_corpus(root / "onehot/toy", text)
    (root / "onehot/wordy").mkdir(parents=True)  # a corpus the onehot stage made at word level
    (root / "onehot/wordy/meta.json").write_text(json.dumps({"kind": "text", "level": "word"}))
    (root / "raw/toy").mkdir(parents=True)
    (root / "raw/toy/corpus.txt").write_text(text, encoding="utf-8")
    return root


def _run(tmp_path, roots, **over):
    from studies import generators

    p = params_for(tmp_path, **{**TINY, "studies.generators.corpora": ["toy"], "studies.generators.word_corpora": ["toy"], **over})
    return generators.run(p, tmp_path / "out", data_root=roots / "onehot", raw_root=roots / "raw")


def test_the_study_trains_char_and_word_models_and_scores_both_in_bits_per_character(tmp_path, roots):
    r = _run(tmp_path, roots)
    t = pd.read_csv(tmp_path / "out/models.csv")
    assert list(zip(t.corpus, t.level)) == [("toy", "char"), ("toy", "word")]
    char, word = t.iloc[0], t.iloc[1]
    vocab = json.loads((roots / "onehot/toy/vocab.json").read_text())
    assert char.vocab == vocab["size"] and char.chars_per_token == 1
    # the toy text's words: 4 names, 17 words, and the marks and whitespace runs between them
    assert 20 < word.vocab < 40 and 2 < word.chars_per_token < 6
    # a char model's bits/char is its nats/token over ln 2; a word model's is scaled by tokens/chars
    assert char.val_bpc == pytest.approx(char.val_nats_per_token / math.log(2), abs=2e-4)
    assert word.val_bpc < word.val_nats_per_token / math.log(2) / 2
    # both score about the same validation text: the last 10% of 40,000 characters, under val_chars
    assert 3000 - 40 < char.val_chars <= 3000 and 3000 - 40 < word.val_chars <= 3000
    # both learned: far below a uniform guess over their vocabularies (bits per token -> per char)
    assert char.val_bpc < 0.6 * math.log2(char.vocab)
    assert word.val_bpc < 0.6 * math.log2(word.vocab) / word.chars_per_token
    assert (t.train_s <= 1.5 * 1.5 + 1.0).all() and (t.steps > 5).all()
    for level in ("char", "word"):
        s = (tmp_path / f"out/toy-{level}.txt").read_text(encoding="utf-8")
        assert s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 120 + 1
    md = (tmp_path / "out/samples.md").read_text(encoding="utf-8")
    assert md.count("```text\nROMEO:") == 2 and "toy, word level" in md
    assert (tmp_path / "out/curves.png").stat().st_size > 1000
    assert [m["level"] for m in r["models"]] == ["char", "word"]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("study-generators").experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) == {"toy-char", "toy-word", "report"}
    assert by_name["toy-word"].data.metrics["val_bpc"] == pytest.approx(word.val_bpc)
    assert "toy-word.txt" in {a.path for a in client.list_artifacts(by_name["toy-word"].info.run_id)}


def test_capped_keeps_the_longest_prefix_within_the_characters_and_counts_what_is_scored(tmp_path):
    tokens = ["<unk>", "a", "bb", "ccc", " "]
    src = tmp_path / "src"
    src.mkdir()
    val = np.array([1, 2, 3, 4, 3, 2, 1, 3] * 4, np.uint8)  # 16 characters each 8 tokens, 64 in all
    np.save(src / "val.npy", val)
    np.save(src / "train.npy", np.arange(1, 5, dtype=np.uint8).repeat(10))
    (src / "vocab.json").write_text(json.dumps({"level": "word", "tokens": tokens}))
    (src / "meta.json").write_text(json.dumps({"kind": "text", "vocab_size": 5, "splits": {"train": 40, "val": 32, "test": 0}}))
    lens = token_chars({"level": "word", "tokens": tokens})
    assert lens.tolist() == [5, 1, 2, 3, 1]
    d, info = capped(src, tmp_path / "c", 40)  # 16 tokens spell 32; then 1+2+3+1 = 39 fits, one more token (3) would not
    assert np.load(d / "val.npy").tolist() == val[:20].tolist()
    assert json.loads((d / "meta.json").read_text())["splits"] == {"train": 40, "val": 20, "test": 0}
    assert info["train_chars_per_token"] == pytest.approx((1 + 2 + 3 + 1) / 4)
    # 2 streams of (20 - 1) // 2 = 9 tokens each score data[1:19]: the first 19 tokens' 38 characters but the first's 1
    assert scored_chars(d, lens, 2) == 37
    assert scored_chars(d, lens, 1) == 39 - 1
    with pytest.raises(UserError, match="compares char and word levels only"):
        token_chars({"level": "byte", "tokens": [0, 1]})


@pytest.mark.parametrize("over, message", [
    ({"studies.generators.corpora": ["nope"]}, r"onehot/nope/meta.json: not found; run `dvc repro onehot@nope` first"),
    ({"studies.generators.word_corpora": ["nope"]}, r"raw/nope/corpus.txt: not found; run `dvc repro download@nope` first"),
    ({"studies.generators.corpora": [], "studies.generators.word_corpora": []}, "both empty"),
    ({"studies.generators.primes": {"toy": "ROMEO: §"}}, r"primes.toy: .*'§'"),
    ({"studies.generators.primes": ["ROMEO:"]}, "a mapping of corpus name to prime text"),
    ({"studies.generators.seconds": 0}, r"seconds: must be > 0"),
    ({"studies.generators.corpora": ["toy", "toy"]}, r"corpora: toy is listed twice; list each corpus once"),
    ({"studies.generators.word_corpora": ["toy", "toy"]}, r"word_corpora: toy is listed twice"),
    ({"studies.generators.corpora": ["wordy"]}, r"wordy/meta.json: tokenized at word level, .* list wordy in word_corpora"),
    ({"studies.generators.val_chars": 12}, r"val_chars=12 leaves 12 validation tokens of toy at char level, fewer than the 17 .* raise val_chars"),
    ({"studies.generators.word_max_vocab": 10}, r"more distinct words than studies.generators.word_max_vocab=10 .* raise it"),
])
def test_bad_settings_are_refused_before_any_training(tmp_path, roots, over, message):
    with pytest.raises(UserError, match=message):
        _run(tmp_path, roots, **{"studies.generators.corpora": ["toy"], **over})
    assert not (tmp_path / "out/models.csv").exists()


def test_the_command_line_gives_one_line_for_a_music_corpus(tmp_path):
    music = tmp_path / "data/onehot/music"
    music.mkdir(parents=True)
    (music / "meta.json").write_text(json.dumps({"kind": "music"}))
    f = _params_file(tmp_path, "generators", {"corpora": ["music"], "word_corpora": []})
    p = run_module("studies.generators", "--params", str(f), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert p.returncode != 0
    assert one_line_error(p) == "error: studies.generators.corpora: music is not a text corpus (data/onehot/music/meta.json); list text corpora only"
    assert not (tmp_path / "o").exists()


def test_a_split_too_short_for_the_word_model_fails_before_the_char_model_trains(tmp_path, roots):
    # 30 characters are 30 char tokens (enough for 16 streams) but only about 10 word tokens
    with pytest.raises(UserError, match=r"val_chars=30 leaves \d+ validation tokens of toy at word level"):
        _run(tmp_path, roots, **{"studies.generators.val_chars": 30})
    import mlflow

    exp = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("study-generators")
    assert exp is None  # no model was trained and logged before the refusal
