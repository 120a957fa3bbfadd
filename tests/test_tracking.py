"""The tracking URI a run logs to is the one its params (or the user's environment) name."""
from __future__ import annotations

import os

import mlflow

from pipeline import tracking
from tests.conftest import ROOT
from pipeline.config import load_params


def test_a_run_leaves_no_tracking_uri_in_the_environment_for_the_next_one(tmp_path):
    """MLflow 3's set_tracking_uri writes MLFLOW_TRACKING_URI into os.environ; `tracking_uri`
    reads that variable as the user's choice, so a second run with other params in the same
    process logged into the first run's store."""
    assert "MLFLOW_TRACKING_URI" not in os.environ
    default = mlflow.get_tracking_uri()
    uris = [f"sqlite:///{tmp_path / name}.db" for name in ("a", "b")]
    for uri in uris:
        params = load_params(ROOT / "params.yaml", {"tracking.uri": uri})
        assert tracking.tracking_uri(params) == uri
        run_id = tracking.start_run(uri, "study-x", "r", {"p": "1"}, {})
        with tracking.fluent_uri(uri):  # the fluent API sees the URI inside, not after
            assert mlflow.get_tracking_uri() == uri
        tracking.end_run(uri, run_id)
        assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() == default
    for uri in uris:  # one run in each store
        client = mlflow.MlflowClient(uri)
        assert len(client.search_runs([client.get_experiment_by_name("study-x").experiment_id])) == 1
    os.environ["MLFLOW_TRACKING_URI"] = uris[0]  # a URI the user set stays set
    try:
        with tracking.fluent_uri(uris[1]):
            assert mlflow.get_tracking_uri() == uris[1]
        assert os.environ["MLFLOW_TRACKING_URI"] == uris[0] and mlflow.get_tracking_uri() == uris[0]
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


def test_git_dirty_means_the_code_not_the_pipelines_outputs(tmp_path, monkeypatch):
    """`dvc repro` rewrites the git-tracked outputs (curves, scores, samples, reports) and the
    locks: a run after it is not 'dirty'; a changed source file or dvc.yaml is."""
    import subprocess

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    files = ["model.py", "dvc.yaml", "dvc.lock", "params.yaml", "plots/c/val_loss.csv", "metrics/c/eval.json",
             "samples/c.txt", "reports/hello/result.json", "studies/dvc.lock"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("a\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@127.0.0.1", "commit", "-qm", "c")
    monkeypatch.chdir(tmp_path)
    assert tracking.source_tags("x")["git.dirty"] == "false"
    for f in files[2:]:
        (tmp_path / f).write_text("b\n")
    assert tracking.source_tags("x")["git.dirty"] == "false"
    for f in ("model.py", "dvc.yaml"):
        (tmp_path / f).write_text("b\n")
        assert tracking.source_tags("x")["git.dirty"] == "true", f
        git("checkout", "--", f)


def test_champion_moves_to_the_best_version_on_the_same_data(tmp_path, capsys):
    """pipeline/champion.py on a real sqlite store: the first scored version takes the alias; a
    worse one or a tie leaves it; a better one takes it; a version scored on other data takes
    it (the old loss is not comparable); a rerun of the champion keeps it."""
    from pipeline import champion
    from pipeline.evaluate import crown

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    client.create_registered_model("charlm-t")
    for _ in range(6):
        client.create_model_version("charlm-t", source=str(tmp_path))
    meta = {"corpus_sha256": "a" * 64, "level": "char", "vocab_size": 65, "splits": {"train": 90, "val": 10, "test": 0}}
    same, other = champion.data_key(meta), champion.data_key({**meta, "splits": {"train": 80, "val": 20, "test": 0}})
    assert same == champion.data_key(dict(reversed(list(meta.items())))) and same != other
    assert champion.data_key({**meta, "vocab_size": 66}) != same and champion.data_key({**meta, "level": "word"}) != same

    def holder():
        return str(client.get_model_version_by_alias("charlm-t", "champion").version)

    steps = [("1", 0.9, same, "1", "the first scored"), ("2", 1.0, same, "1", "does not beat"), ("3", 0.8, same, "3", "beats version 1"),
             ("3", 0.8, same, "3", "stays"), ("4", 1.5, other, "4", "other data"), ("5", 0.5, other, "5", "beats version 4"),
             ("6", 0.5, other, "5", "does not beat")]
    for version, loss, key, expect, said in steps:
        line = champion.promote(uri, "charlm-t", version, loss, key)
        assert holder() == expect and said in line, (version, line)
    tags = client.get_model_version("charlm-t", "2").tags
    assert tags["eval_val_loss"] == "1.00000" and tags["data_key"] == same
    # evaluate's step: run.json's "registered" read, a version deleted in the UI one note
    assert champion.registered_version({"registered": "charlm-t version 12"}) == ("charlm-t", "12")
    assert champion.registered_version({"registered": None}) is None and champion.registered_version({}) is None
    params = load_params(ROOT / "params.yaml", {"tracking.uri": uri})
    client.delete_model_version("charlm-t", "5")
    crown({"tracking_uri": uri, "registered": "charlm-t version 5"}, params, 0.1, meta)
    assert "charlm-t version 5 is not in the registry any more" in capsys.readouterr().err
    crown({"tracking_uri": uri, "registered": "charlm-t version 6"}, params, 0.7, meta)  # the alias went with version 5
    assert holder() == "6" and "is now @champion" in capsys.readouterr().err
