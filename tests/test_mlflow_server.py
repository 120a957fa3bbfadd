"""Training logs to a real `mlflow server` on 127.0.0.1 over HTTP."""
from __future__ import annotations

from tests.conftest import dvc, mlflow_server, run_module
from tests.pipeline_project import tiny_project


def test_train_logs_over_http(tmp_path):
    proj, env = tiny_project(tmp_path, max_steps=10, val_every=5)
    assert dvc(proj, "repro", "onehot@tiny", env=env).returncode == 0
    with mlflow_server(tmp_path / "server") as (uri, _):
        p = run_module("pipeline.train", "tiny", cwd=proj, env=dict(env, MLFLOW_TRACKING_URI=uri))
        assert p.returncode == 0, p.stderr[-3000:]
        import mlflow

        client = mlflow.MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("charlm-tiny").experiment_id])
        assert len(runs) == 1
        assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")] == [5, 10]
        assert client.get_model_version("charlm-tiny", "1").run_id == runs[0].info.run_id
        assert any(a.path == "vocab.json" for a in client.list_artifacts(runs[0].info.run_id))
        assert list((tmp_path / "server/artifacts").rglob("best.ckpt"))  # the artifact went through the server
