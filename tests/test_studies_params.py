"""Bad study params: one `error:` line naming the param, before any work; the report folder untouched."""
from __future__ import annotations

import importlib

import pytest

from tests.conftest import ROOT, one_line_error, run_module

BAD = [
    ("hello", "studies.hello.steps=0", "studies.hello.steps: must be >= 1"),
    ("hello", "studies.hello.word=h", "studies.hello.word: needs at least 2 letters"),
    ("vanishing", "studies.vanishing.steps=0", "studies.vanishing.steps: must be >= 1"),
    ("vanishing", "studies.vanishing.lengths=[]", "studies.vanishing.lengths: empty"),
    ("vanishing", "studies.vanishing.lengths=[20,0]", "studies.vanishing.lengths: every T must be >= 4"),
    ("vanishing", "studies.vanishing.lengths=[20,20]", "studies.vanishing.lengths: [20] listed twice"),
    ("vanishing", "studies.vanishing.test_sequences=0", "studies.vanishing.test_sequences: must be >= 1"),
    ("vanishing", "studies.vanishing.workers=-1", "studies.vanishing.workers: must be >= 0"),
    ("vanishing", "studies.vanishing.repeats=0", "studies.vanishing.repeats: must be >= 1"),
    ("bptt", "studies.bptt.full_len=0", "studies.bptt.full_len: must be >= 1"),
    ("bptt", "studies.bptt.k1_eq_k2=[16,0]", "studies.bptt.k1_eq_k2: every K must be >= 1"),
    ("bptt", "studies.bptt.k1_eq_k2=[-16]", "studies.bptt.k1_eq_k2: every K must be >= 1"),
    ("bptt", "studies.bptt.k1_lt_k2=['64:32']", "studies.bptt.k1_lt_k2: '64:32' needs 0 < K1 <= K2"),
    ("bptt", "studies.bptt.k1_lt_k2=['0:16']", "studies.bptt.k1_lt_k2: '0:16' needs 0 < K1 <= K2"),
    ("variants", "studies.variants.hidden_min=0", "studies.variants.hidden_min: must be >= 1"),
    ("variants", "studies.variants.hidden_min=80", "studies.variants.hidden_min: 80 is above studies.variants.hidden_max=64"),
    ("variants", "studies.variants.lr_min=0", "studies.variants.lr_min: must be > 0"),
    ("variants", "studies.variants.lr_min=0.1", "studies.variants.lr_min: 0.1 is above studies.variants.lr_max=0.01"),
    ("variants", "studies.variants.trials=0", "studies.variants.trials: must be >= 1"),
    ("variants", "studies.variants.workers=-1", "studies.variants.workers: must be >= 0"),
    ("variants", "studies.variants.tasks=[]", "studies.variants.tasks: empty"),
    ("variants", "studies.variants.variants=[V,GRU,GRU]", "studies.variants.variants: ['GRU'] listed twice"),
    ("variants", "studies.variants.width=param", "studies.variants.width: unknown 'param'; choose equal or params"),
    ("variants", "studies.variants.variants=[V]", "studies.variants.variants: V alone leaves nothing to compare"),
    ("hello", "studies.helo.steps=1", "studies.helo: unknown study"),  # a misspelled section would run the defaults
    ("hello", "studies.prest=full", "studies.prest: unknown study"),
    ("hello", "studies.presets.full.generatorz.seconds=1", "studies.presets.full.generatorz: unknown study"),
    ("bptt", "studies.bptt.val_points=0", "studies.bptt.val_points: must be >= 1"),
    ("bptt", "studies.bptt.val_points=1000", "studies.bptt.val_points: 1000 is more than full BPTT's 183 steps for this budget"),
]


def _report(tmp_path, study):
    """A previous report in reports/<study> under the working folder; its bytes, to compare after."""
    d = tmp_path / "reports" / study
    d.mkdir(parents=True)
    (d / "result.json").write_text('{"previous": true}\n')
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.mark.parametrize("study,setting,message", BAD, ids=[b[1] for b in BAD])
def test_bad_study_param_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, study, setting, message):
    before = _report(tmp_path, study)
    monkeypatch.chdir(tmp_path)  # the entry point writes reports/<study> under the working folder
    main = importlib.import_module(f"studies.{study}").main
    with pytest.raises(SystemExit) as e:
        main(["--params", str(ROOT / "params.yaml"), "--set", "tracking.enabled=false", "--set", setting])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "; " in lines[0]  # the problem, then the fix
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [study]  # no half-made folder beside it
    assert {p.name: p.read_bytes() for p in (tmp_path / "reports" / study).iterdir()} == before


def test_bad_study_param_from_the_command_line(tmp_path):
    """The same through `python -m`, as a user runs it."""
    before = _report(tmp_path, "vanishing")
    p = run_module("studies.vanishing", "--params", ROOT / "params.yaml", "--set", "tracking.enabled=false",
                   "--set", "studies.vanishing.steps=0", cwd=tmp_path)
    assert "error: --set studies.vanishing.steps: must be >= 1, got 0" in one_line_error(p)  # named as the user gave it
    assert {p.name: p.read_bytes() for p in (tmp_path / "reports/vanishing").iterdir()} == before


def test_variants_refuses_a_later_tasks_missing_data_before_the_first_trial(tmp_path, monkeypatch):
    from studies import variants

    (tmp_path / "onehot/jsb_chorales").mkdir(parents=True)
    (tmp_path / "onehot/jsb_chorales/meta.json").write_text("{}")  # jsb looks ready, the text corpus is not there
    monkeypatch.setattr(variants, "run_trials", lambda *a: pytest.fail("a trial ran before the data check"))
    from pipeline.config import load_params
    from pipeline.errors import UserError

    p = load_params(ROOT / "params.yaml", {"tracking.enabled": False, "studies.variants.text_corpus": "absent"})
    with pytest.raises(UserError, match="onehot/absent/meta.json: not found; run `dvc repro onehot@absent` first"):
        variants.run(p, tmp_path / "reports/variants", data_root=tmp_path / "onehot")
    assert not (tmp_path / "reports").exists()


def test_a_value_given_with_set_wins_over_the_studies_preset():
    """studies.preset=full overlays its sizes; a key the user sets explicitly keeps the user's value
    (flat or as a section given whole), the rest comes from the preset."""
    from pipeline.config import load_params
    from studies.common import preset_section

    p = load_params(ROOT / "params.yaml", {"studies.preset": "full", "studies.generators.seconds": 5, "studies.generators.hidden": 32})
    g = preset_section(p, "generators")
    assert (g["seconds"], g["hidden"], g["layers"]) == (5, 32, 3)  # layers: the preset's
    v = preset_section(load_params(ROOT / "params.yaml", {"studies.preset": "full", "studies": {"vanishing": {"steps": 7}}}), "vanishing")
    assert v["steps"] == 7 and v["lengths"] == [20, 50, 100, 200]


def test_a_report_folder_that_holds_other_files_is_refused_not_emptied(tmp_path, monkeypatch, capsys):
    """A study replaces its --out folder whole: a folder without an earlier report's result.json
    (a project folder, reports/ itself) is one line before any work, its files kept."""
    from studies import hello

    mine = tmp_path / "myproject"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes/todo.txt").write_text("x\n")
    monkeypatch.setattr(hello, "train", lambda *a, **k: pytest.fail("trained before the check"))
    from pipeline.config import load_params
    from pipeline.errors import UserError

    p = load_params(ROOT / "params.yaml", {"tracking.enabled": False})
    with pytest.raises(UserError, match=r"holds files that are no study's report \(no result.json\)"):
        hello.run(p, mine)
    assert (mine / "notes/todo.txt").read_text() == "x\n"
    (tmp_path / "file").write_text("y")
    with pytest.raises(UserError, match="not a folder"):
        hello.run(p, tmp_path / "file")


def test_the_variants_text_task_needs_a_validation_split(tmp_path):
    """Trials score on the val split: one without it (onehot.val_frac: 0) is one line before any
    trial, not a TypeError after all of them."""
    import json

    from pipeline.config import load_params
    from pipeline.errors import UserError
    from studies import variants

    hp = variants.study_params(load_params(ROOT / "params.yaml"), "variants", variants.VariantsParams)
    d = tmp_path / hp.text_corpus
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"splits": {"train": 1000, "val": 0, "test": 0}}))
    with pytest.raises(UserError, match="the validation split has 0 tokens.*onehot.val_frac > 0"):
        variants.task_data(hp, "text", tmp_path)
    (d / "meta.json").write_text(json.dumps({"splits": {"train": 1000, "val": 500, "test": 0}}))
    assert variants.task_data(hp, "text", tmp_path) == d
