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


def test_champion_is_the_best_version_scored_on_the_same_data(tmp_path, capsys):
    """pipeline/champion.py on a real sqlite store: the alias goes to the lowest eval_val_loss
    among the versions scored on the same data by the same streams (a tie keeps the holder);
    a version scored on other data is compared with those only, and once the data is back the
    best earlier version on it takes the alias again, not merely the newest."""
    from pipeline import champion
    from pipeline.evaluate import crown

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    client.create_registered_model("charlm-t")
    for _ in range(6):
        client.create_model_version("charlm-t", source=str(tmp_path))
    params = load_params(ROOT / "params.yaml", {"tracking.uri": uri})
    meta = {"corpus_sha256": "a" * 64, "level": "char", "vocab_size": 65, "splits": {"train": 90, "val": 10, "test": 0}}
    same = champion.score_key(meta, params.train.eval_batch, params.train.eval_len)
    other = champion.score_key({**meta, "splits": {"train": 80, "val": 20, "test": 0}}, params.train.eval_batch, params.train.eval_len)
    assert same == champion.score_key(dict(reversed(list(meta.items()))), params.train.eval_batch, params.train.eval_len) and same != other
    for changed in ({**meta, "vocab_size": 66}, {**meta, "level": "word"}, {**meta, "corpus_sha256": "b" * 64}):
        assert champion.score_key(changed, params.train.eval_batch, params.train.eval_len) != same
    assert champion.score_key(meta, 64, params.train.eval_len) != same and champion.score_key(meta, params.train.eval_batch, 128) != same

    def holder():
        return str(client.get_model_version_by_alias("charlm-t", "champion").version)

    steps = [("1", 0.9, same, "1", "set -> version 1"), ("2", 1.0, same, "1", "stays on version 1"),
             ("3", 0.8, same, "3", "from version 1 -> version 3"), ("3", 0.8, same, "3", "stays on version 3"),
             ("4", 1.5, other, "4", "from version 3 -> version 4 (1.5000, the best of 1 version scored"),
             ("5", 0.85, same, "3", "from version 4 -> version 3 (0.8000, the best of 4 versions"),
             ("6", 0.8, same, "3", "stays on version 3")]
    for version, loss, key, expect, said in steps:
        line = champion.promote(uri, "charlm-t", version, loss, key)
        assert holder() == expect and said in line, (version, line)
    tags = client.get_model_version("charlm-t", "2").tags
    assert tags["eval_val_loss"] == "1.00000" and tags["score_key"] == same
    # evaluate's step: run.json's "registered" read, a version deleted in the UI one note
    assert champion.registered_version({"registered": "charlm-t version 12"}) == ("charlm-t", "12")
    assert champion.registered_version({"registered": None}) is None and champion.registered_version({}) is None
    client.delete_model_version("charlm-t", "3")
    crown({"tracking_uri": uri, "registered": "charlm-t version 3"}, params, 0.1, meta)
    assert "charlm-t version 3 is not in the registry any more" in capsys.readouterr().err
    crown({"tracking_uri": uri, "registered": "charlm-t version 6"}, params, 0.8, meta)  # the alias went with version 3
    assert holder() == "6" and "set -> version 6" in capsys.readouterr().err
