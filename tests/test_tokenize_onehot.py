"""Tokenize and onehot stages: exactness, levels, bad inputs (real files, real CLI)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import charscan
from pipeline.config import OnehotParams
from pipeline.onehot import split_bounds
from tests.conftest import one_line_error, run_module
from tests.test_download import write_params


def corpus_project(tmp_path: Path, data: bytes, **sections) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_params(tmp_path, {"c": {"kind": "text", "url": "https://example.invalid/c.txt"}}, **sections)
    raw = tmp_path / "data/raw/c"
    raw.mkdir(parents=True)
    (raw / "corpus.txt").write_bytes(data)
    return tmp_path


def stages(project: Path):
    run_module("pipeline.tokenize", "c", cwd=project, check=True)
    return run_module("pipeline.onehot", "c", cwd=project, check=True)


def decode(project: Path) -> str:
    vocab = json.loads((project / "data/onehot/c/vocab.json").read_text(encoding="utf-8"))
    ids = np.concatenate([np.load(project / f"data/onehot/c/{s}.npy") for s in ("train", "val", "test")])
    return "".join(vocab["tokens"][i] for i in ids)


def test_char_level_is_exact_unicode_and_keeps_crlf(tmp_path):
    text = ("Grüße, мир!\r\n¿Qué? 日本語 \U0001F600 tab\there\r\n" * 3000)
    p = corpus_project(tmp_path, text.encode())
    stages(p)
    assert decode(p) == text
    vocab = json.loads((p / "data/tokens/c/vocab.json").read_text(encoding="utf-8"))
    assert vocab["tokens"] == sorted(set(text)) and "\r" in vocab["stoi"]
    assert sum(vocab["counts"]) == len(text)
    meta = json.loads((p / "data/onehot/c/meta.json").read_text())
    assert meta["dtype"] == "uint8" and meta["splits"]["train"] == int(0.9 * len(text))


def test_multibyte_characters_across_piece_boundaries(tmp_path, monkeypatch):
    # pieces of 7 bytes cut 3- and 4-byte characters everywhere
    text = "a€😀b日" * 50 + "é" * 37
    p = tmp_path / "t.txt"
    p.write_bytes(text.encode())
    monkeypatch.setattr(charscan, "PIECE", 7)
    monkeypatch.setattr(charscan, "READ", 16)
    for workers in (1, 3):
        counts, seg_tokens, segs, _ = charscan.scan(p, "char", "strict", workers=workers)
        assert len(segs) == workers and sum(seg_tokens) == len(text)
        ids = np.flatnonzero(counts)
        assert [chr(i) for i in ids] == sorted(set(text))
        out = tmp_path / f"o{workers}.npy"
        charscan.write_ids(p, "char", "strict", ids, np.uint8, seg_tokens, segs, out)
        assert "".join(chr(ids[i]) for i in np.load(out)) == text


def test_byte_and_word_levels(tmp_path):
    text = "the cat sat on the mat; the end.\n" * 200 + "rare"
    p = corpus_project(tmp_path / "b", text.encode(), tokenize={"level": "byte"})
    stages(p)
    v = json.loads((p / "data/onehot/c/vocab.json").read_text())
    ids = np.concatenate([np.load(p / f"data/onehot/c/{s}.npy") for s in ("train", "val")])
    assert bytes(v["tokens"][i] for i in ids) == text.encode()
    p = corpus_project(tmp_path / "w", text.encode(), tokenize={"level": "word", "min_count": 2})
    stages(p)
    v = json.loads((p / "data/onehot/c/vocab.json").read_text())
    assert v["tokens"][0] == "<unk>" and "rare" not in v["stoi"] and v["counts"][0] == 1
    assert v["stoi"]["the"] > 0 and " " in v["stoi"] and ";" in v["stoi"] and "\n" in v["stoi"]
    assert decode(p) == text.replace("rare", "<unk>")


def test_word_level_caps_the_vocabulary(tmp_path):
    words = " ".join(f"w{i % 50}" for i in range(5000))
    p = corpus_project(tmp_path, words.encode(), tokenize={"level": "word", "max_vocab": 11})
    stages(p)
    v = json.loads((p / "data/onehot/c/vocab.json").read_text())
    assert v["size"] == 11 and v["tokens"][0] == "<unk>"


@pytest.mark.parametrize(
    "data, expect",
    [
        (b"", "empty"),
        (b"text\x00\x01\x02binary" * 200, "looks binary (NUL byte at offset 4)"),
        (b"a" * 5000 + b"\xff\xfe" + b"b" * 5000, "invalid UTF-8 at byte offset 5000"),
        (b"too short\n", "fewer than onehot.min_train_tokens"),
    ],
)
def test_bad_corpora_fail_cleanly_and_keep_good_outputs(tmp_path, data, expect):
    good = b"A good corpus.\n" * 1000
    p = corpus_project(tmp_path, good)
    stages(p)
    before = {f.name: f.read_bytes() for f in (p / "data/onehot/c").iterdir()}
    before_tok = {f.name: f.read_bytes() for f in (p / "data/tokens/c").iterdir()}
    (p / "data/raw/c/corpus.txt").write_bytes(data)
    r = run_module("pipeline.tokenize", "c", cwd=p)
    if r.returncode == 0:  # the short corpus tokenizes; its split is what fails
        r = run_module("pipeline.onehot", "c", cwd=p)
    else:
        assert {f.name: f.read_bytes() for f in (p / "data/tokens/c").iterdir()} == before_tok
    assert expect in one_line_error(r)
    assert {f.name: f.read_bytes() for f in (p / "data/onehot/c").iterdir()} == before
    assert not [f for f in (p / "data/onehot").iterdir() if f.name.startswith(".")]


def test_invalid_utf8_replace_mode(tmp_path):
    p = corpus_project(tmp_path, b"ok " * 1000 + b"\xff" + b" ok" * 1000, tokenize={"errors": "replace"})
    stages(p)
    assert "\ufffd" in decode(p)


def test_split_fractions():
    n = 1_115_394
    b = split_bounds(n, OnehotParams())
    assert b["train"] == (0, 1_003_854) and b["val"] == (1_003_854, n) and b["test"] == (n, n)
    b = split_bounds(1000, OnehotParams(train_frac=0.8, val_frac=0.1))
    assert b == {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}


def test_bad_split_params(tmp_path):
    p = corpus_project(tmp_path, b"x" * 5000, onehot={"train_frac": 0.95, "val_frac": 0.1})
    # params are validated once, by whichever stage runs first
    assert "onehot.train_frac/val_frac" in one_line_error(run_module("pipeline.tokenize", "c", cwd=p))


def test_missing_inputs_name_the_stage_to_run(tmp_path):
    write_params(tmp_path, {"c": {"kind": "text", "url": "https://example.invalid/c.txt"}})
    assert "dvc repro download@" in one_line_error(run_module("pipeline.tokenize", "c", cwd=tmp_path))
    assert "dvc repro tokenize@c" in one_line_error(run_module("pipeline.onehot", "c", cwd=tmp_path))


@pytest.mark.parametrize(
    "obj, expect",
    [
        ({"train": 5, "valid": [], "test": []}, "train: expected a list of chorales"),
        ({"train": [[[60, 64]], 7], "valid": [], "test": []}, "train: expected a list of chorales"),
        ({"train": [[[60.7]]], "valid": [], "test": []}, "pitch 60.7, not a whole MIDI pitch"),
        ({"train": [[[True]]], "valid": [], "test": []}, "pitch True"),
        ({"train": [[[120]]], "valid": [], "test": []}, "pitch 120"),
    ],
)
def test_malformed_chorales_are_one_line_errors(tmp_path, obj, expect):
    write_params(tmp_path, {"m": {"kind": "music", "url": "https://example.invalid/m.json"}})
    raw = tmp_path / "data/raw/m"
    raw.mkdir(parents=True)
    (raw / "corpus.json").write_text(json.dumps(obj))
    err = one_line_error(run_module("pipeline.tokenize", "m", cwd=tmp_path))
    assert expect in err, err
    assert not (tmp_path / "data/tokens/m").exists()


def test_whole_float_pitches_are_taken(tmp_path):
    write_params(tmp_path, {"m": {"kind": "music", "url": "https://example.invalid/m.json"}})
    raw = tmp_path / "data/raw/m"
    raw.mkdir(parents=True)
    (raw / "corpus.json").write_text(json.dumps({"train": [[[60.0, 64], []]], "valid": [[[21]]], "test": []}))
    run_module("pipeline.tokenize", "m", cwd=tmp_path, check=True)
    roll = np.load(tmp_path / "data/tokens/m/train.npy")
    assert roll.shape == (2, 88) and roll[0].nonzero()[0].tolist() == [60 - 21, 64 - 21] and roll[1].sum() == 0
