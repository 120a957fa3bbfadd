"""Prefect: the flow served as a deployment on a real API server (127.0.0.1), triggered, completed, tracked."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from tests.conftest import PY, ROOT, dvc
from tests.pipeline_project import tiny_project


def test_served_deployment_runs_and_tracks(tmp_path, prefect_api):
    proj, env = tiny_project(tmp_path, max_steps=10, val_every=5)
    e = dict(os.environ, **env, PREFECT_API_URL=prefect_api, PYTHONPATH=str(ROOT))
    e["PATH"] = str(Path(PY).parent) + os.pathsep + e["PATH"]
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([PY, "-m", "flows.serve", "--name", "charlm-test", "--cron", "0 3 * * *", "--corpus", "tiny"],
                             cwd=proj, env=e, stdout=log, stderr=subprocess.STDOUT)
    prefect = str(Path(PY).parent / "prefect")
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # the serve process registers the deployment
            r = subprocess.run([prefect, "deployment", "inspect", "charlm-pipeline/charlm-test"], env=e, capture_output=True, text=True)
            if r.returncode == 0:
                break
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(2)
        assert "0 3 * * *" in r.stdout  # the cron schedule is on the deployment
        run = subprocess.run([prefect, "deployment", "run", "charlm-pipeline/charlm-test", "--watch", "--watch-timeout", "600"],
                             env=e, capture_output=True, text=True, timeout=700)
        out = run.stdout + run.stderr
        assert run.returncode == 0 and "COMPLETED" in out.upper(), out[-3000:] + (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        serve.terminate()
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("charlm-tiny").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "eval_val_loss" in runs[0].data.metrics
    assert (proj / "outputs/flow/samples/tiny.txt").read_text().startswith("ROMEO:")
    # the flow's data went through DVC, and its model outputs stayed out of DVC's workspace
    assert (proj / "dvc.lock").exists() and not (proj / "models").exists()


def test_studies_flow_runs_the_studies_as_tasks_and_publishes_their_tables(tmp_path, prefect_api):
    """`python -m flows.studies_flow --study hello --study captioning` against a real API server:
    each study's report lands, each table is a Markdown artifact, each study logs to MLflow."""
    import yaml

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p["studies"]["captioning"].update(train_images=600, val_images=60, steps=30, val_every=30, embed=16, hidden=24,
                                      feeds=["every"], examples=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    e = dict(os.environ, PREFECT_API_URL=prefect_api, PYTHONPATH=str(ROOT), PREFECT_HOME=str(tmp_path / "prefect"))
    run = subprocess.run([PY, "-m", "flows.studies_flow", "--study", "hello", "--study", "captioning"], cwd=tmp_path,
                         env=e, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]  # a failed task fails the flow and the command
    assert (tmp_path / "reports/hello/result.json").is_file() and (tmp_path / "reports/captioning/metrics.md").is_file()
    assert not (tmp_path / "docs/review.md").exists()  # the review page needs every study's report
    prefect = str(Path(PY).parent / "prefect")
    art = subprocess.run([prefect, "artifact", "inspect", "study-captioning", "-o", "json"], env=e, capture_output=True, text=True)
    assert art.returncode == 0, art.stderr
    latest = json.loads(art.stdout)[0]  # newest first
    assert latest["type"] == "markdown" and re.search(r"\|\s*CNN \+ LSTM \(image at every step\)\s*\|\s*greedy", latest["data"]), latest
    import mlflow

    client = mlflow.MlflowClient(p["tracking"]["uri"])
    for study in ("hello", "captioning"):
        assert client.search_runs([client.get_experiment_by_name(f"study-{study}").experiment_id])
