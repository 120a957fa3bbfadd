"""Prefect: the flow served as a deployment on a real API server (127.0.0.1), triggered, completed, tracked."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from tests.conftest import PY, ROOT, one_line_error, run_module, stop_process
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
        # a run whose parameters the flow refuses: failed, its one line in the log, no traceback of it
        bad = subprocess.run([prefect, "deployment", "run", "charlm-pipeline/charlm-test", "--params", '{"overrides": {"tokenize.max_vocab": 3}}',
                              "--watch", "--watch-timeout", "300"], env=e, capture_output=True, text=True, timeout=400)
        assert "FAILED" in (bad.stdout + bad.stderr).upper(), bad.stdout[-2000:] + bad.stderr[-2000:]
        log.flush()
        served = (tmp_path / "serve.log").read_text()
        assert "overrides tokenize.max_vocab: the flow prepares data with `dvc repro`" in served, served[-3000:]
        assert "pipeline.errors.UserError" not in served, served[-3000:]
    finally:
        stop_process(serve, 30)
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


def test_flow_retries_a_download_only_when_the_failure_may_pass(tmp_path, prefect_api, http_server):
    """Against a real API server: a 404 (the user's to fix) fails the flow at once, in one line,
    exit 2; a server that stays down (the stage's exit 75) is retried by the flow's task, three
    times, then exit 75."""
    import yaml

    url, www, srv = http_server
    proj, env = tiny_project(tmp_path)
    env.pop("CORPUS_MIRROR")
    e = dict(env, PREFECT_API_URL=prefect_api, FLOW_RETRY_BACKOFF_S="0.05", DOWNLOAD_BACKOFF_S="0.05")
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["data"]["retries"] = 1
    for path, code, requests in (("missing.txt", 2, 1), ("busy/tiny.txt", 75, 4)):
        p["corpora"]["tiny"]["url"] = f"{url}/{path}"
        (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        srv.requests.clear()
        r = run_module("flows.pipeline_flow", "--corpus", "tiny", cwd=proj, env=e)
        assert r.returncode == code, r.stderr[-3000:]
        last = one_line_error(r)  # Prefect's tracebacks of it stay off the console (the UI has them)
        assert r.stderr.strip().splitlines()[-1] == last and f"(dvc repro download@tiny, stage exit {code})" in last, last
        assert len(srv.requests) == requests, srv.requests
    assert not (proj / "data/raw/tiny").exists() and not (proj / "outputs").exists()


def test_flow_retries_train_when_the_tracking_server_does_not_answer(tmp_path, prefect_api, http_server):
    """A tracking server behind a proxy that answers 503: the train task fails before any
    training with a TransientFailure, which the flow retries three times (four probes of
    /health), then exits 75 with the one line; the data tasks are not rerun."""
    url, www, srv = http_server
    proj, env = tiny_project(tmp_path)
    e = dict(env, PREFECT_API_URL=prefect_api, FLOW_RETRY_BACKOFF_S="0.05", MLFLOW_TRACKING_URI=f"{url}/busy")
    r = run_module("flows.pipeline_flow", "--corpus", "tiny", cwd=proj, env=e)
    assert r.returncode == 75, r.stderr[-3000:]
    last = one_line_error(r)
    assert "answers HTTP 503" in last and f"{url}/busy" in last, last
    assert [path for path, _ in srv.requests if path.endswith("/health")] == ["/busy/health"] * 4, srv.requests
    assert not (proj / "outputs/flow/models/tiny").exists()


def test_a_prefect_server_lost_during_the_flow_is_one_line_and_the_work_is_kept(tmp_path):
    """The Prefect server dies while the model trains: the tasks go on, the model, metrics and
    sample are written and the MLflow run finished; the command ends in one line that says
    so, exit 75, with none of Prefect's tracebacks, soon after its client's retries (one here)."""
    import mlflow

    from tests.conftest import prefect_server

    proj, env = tiny_project(tmp_path, max_steps=800, val_every=400, log_every=50, progress_every=50)
    with prefect_server(tmp_path / "server") as (url, kill):
        e = dict(os.environ, **env, PREFECT_API_URL=url, PYTHONPATH=str(ROOT), PREFECT_CLIENT_MAX_RETRIES="1")
        log = open(tmp_path / "flow.log", "w")
        flow = subprocess.Popen([PY, "-m", "flows.pipeline_flow", "--corpus", "tiny"], cwd=proj, env=e,
                                stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.time() + 300
            while "step    100" not in (tmp_path / "flow.log").read_text():  # training has begun
                assert flow.poll() is None and time.time() < deadline, (tmp_path / "flow.log").read_text()[-3000:]
                time.sleep(0.2)
            kill()
            code = flow.wait(300)
        finally:
            if flow.poll() is None:
                stop_process(flow)
            log.close()
    err = (tmp_path / "flow.log").read_text()
    assert code == 75, err[-3000:]
    assert "step    800" in err and "Traceback" not in err, err[-3000:]
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err[-3000:]
    assert f"the Prefect API at {url} stopped answering during the run" in lines[0], lines[0]
    assert "the flow's work had finished (the model, metrics and sample under outputs/flow/" in lines[0], lines[0]
    out = proj / "outputs/flow"
    assert (out / "samples/tiny.txt").read_text().startswith("ROMEO:") and (out / "metrics/tiny").is_dir()
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("charlm-tiny").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] and "eval_val_loss" in runs[0].data.metrics, runs


def test_prefect_yaml_deploys_to_a_process_pool_with_its_schedules_and_limits(tmp_path, prefect_api, monkeypatch):
    """`prefect deploy --all` of the project's prefect.yaml, as its header says, on a real API server."""
    import asyncio

    e = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(ROOT))
    prefect = str(Path(PY).parent / "prefect")
    r = subprocess.run([prefect, "work-pool", "create", "charlm-pool", "--type", "process", "--overwrite"], cwd=ROOT, env=e,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # `make deploy` from elsewhere, $PWD not the project (make -C leaves it): the pull step still records the project
    venv = Path(PY).parent.parent  # this test run's environment, taken as installed (-o): no pip run
    r = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-o", f"{venv}/.installed", "deploy", f"VENV={venv}"],
                       cwd=tmp_path, env=dict(e, PWD=str(tmp_path)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    async def read():
        from prefect.client.orchestration import PrefectClient

        async with PrefectClient(prefect_api) as c:
            return {n: await c.read_deployment_by_name(f"charlm-pipeline/{n}") for n in ("charlm-nightly", "charlm-gru-weekly")}

    deps = asyncio.run(read())
    nightly, gru = deps["charlm-nightly"], deps["charlm-gru-weekly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"] and [s.schedule.cron for s in gru.schedules] == ["0 4 * * 0"]
    assert all(d.work_pool_name == "charlm-pool" and d.global_concurrency_limit.limit == 1 for d in deps.values())
    assert gru.parameters["overrides"] == {"train.cell": "gru", "tracking.register": False}
    for d in deps.values():  # the worker runs the flow in the project
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    # the flow accepts what the deployments pass it
    from flows.pipeline_flow import flow_params

    monkeypatch.chdir(ROOT)
    for d in deps.values():
        assert flow_params("params.yaml", d.parameters.get("preset"), d.parameters["overrides"]).corpus(d.parameters["corpus"])
