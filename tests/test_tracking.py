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
