"""Training logs to a real `mlflow server` on 127.0.0.1 over HTTP."""
from __future__ import annotations

import contextlib
from pathlib import Path

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


def test_make_mlflow_ui_serves_the_store_without_its_uri_on_a_command_line(tmp_path):
    """`make mlflow-ui` opens the stages' store (here MLFLOW_TRACKING_URI's) on 127.0.0.1 and
    passes its URI in the environment: a database URI's password never shows in `ps`."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port, wait_http

    store = tmp_path / "hidden-store-name.db"
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    log = open(tmp_path / "log", "w")
    venv = Path(sys.executable).parent.parent  # this test run's environment, taken as installed (-o): no pip run
    ui = subprocess.Popen(["make", "--no-print-directory", "-o", f"{venv}/.installed", "mlflow-ui", f"VENV={venv}",
                           f"MLFLOW_PORT={port}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", ui, 120, "make mlflow-ui")
        assert store.is_file()  # the server opened the store it was given
        group = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and os.getpgid(int(proc.name)) == ui.pid:
                    group.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, ProcessLookupError):
                continue
        assert any("mlflow" in c for c in group), group
        assert not [c for c in group if "hidden-store-name" in c], group
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGKILL)
        log.close()
    out = (tmp_path / "log").read_text()
    assert f"open http://127.0.0.1:{port}" in out, out
