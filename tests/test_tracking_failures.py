"""The train stage and MLflow when things go wrong: a file store, a server that is down or
dies mid-run, Ctrl-C and SIGTERM, a model torch.export cannot trace, a run no longer in
the store. Real stores only: sqlite files and `mlflow server` on 127.0.0.1."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from tests.conftest import ROOT, ctrl_c_default, dvc, free_port, mlflow_server, one_line_error, run_module
from tests.pipeline_project import tiny_project


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny project whose data stages have run (data/onehot/tiny)."""
    proj, env = tiny_project(tmp_path_factory.mktemp("trackfail"))
    r = dvc(proj, "repro", "onehot@tiny", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return proj, env


def _store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _runs(uri: str):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("charlm-tiny")
    return client, client.search_runs([exp.experiment_id]) if exp else []


def _fresh(proj):
    shutil.rmtree(proj / "models" / "tiny", ignore_errors=True)


@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/mlruns"])
def test_a_file_store_is_one_line_before_training(data, uri):
    proj, env = data
    _fresh(proj)
    e = one_line_error(run_module("pipeline.train", "tiny", cwd=proj, env=dict(env, MLFLOW_TRACKING_URI=uri)))
    assert "MLFLOW_TRACKING_URI" in e and "file store" in e and "sqlite:///" in e
    assert not (proj / "models/tiny").exists() and not (proj / "mlruns").exists()
    e = one_line_error(run_module("pipeline.tracking", cwd=proj, env=dict(env, MLFLOW_TRACKING_URI=uri)))
    assert "file store" in e
    # flows.sample from a folder without params.yaml: the URI from the environment alone
    e = one_line_error(run_module("flows.sample", "--model", "models:/charlm-tiny/1", cwd=proj.parent, env=dict(env, MLFLOW_TRACKING_URI=uri)))
    assert "file store" in e


def test_a_server_that_does_not_answer_is_one_line_before_training(data):
    proj, env = data
    _fresh(proj)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t = time.monotonic()
    p = run_module("pipeline.train", "tiny", cwd=proj, env=dict(env, MLFLOW_TRACKING_URI=uri))
    e = one_line_error(p)
    assert time.monotonic() - t < 60  # not MLflow's minutes of retries
    assert uri in e and "does not answer" in e and "tracking.enabled=false" in e
    assert p.returncode == 75  # may pass by itself: the flows retry the stage
    assert not (proj / "models/tiny").exists()
    t = time.monotonic()  # flows.sample of a registered model from that server: the same one line
    p = run_module("flows.sample", "--model", "models:/charlm-tiny/latest", cwd=proj, env=dict(env, MLFLOW_TRACKING_URI=uri))
    e = one_line_error(p)
    assert time.monotonic() - t < 60 and p.returncode == 75
    assert uri in e and "does not answer" in e and "sample a checkpoint file" in e


def test_an_lstm_variant_is_exported_registered_and_sampled(data, tmp_path):
    # the variants' C kernel reads raw pointers, which torch.export's fake tensors have not:
    # the stage failed after training until the traced graph took the torch ops
    proj, env = data
    uri = _store(tmp_path)
    p = run_module("pipeline.train", "tiny", "--set", "train.cell=lstm-cifg", "--set", "train.max_steps=10", "--set", "train.val_every=5",
                   cwd=proj, env=dict(env, MLFLOW_TRACKING_URI=uri))
    assert p.returncode == 0, p.stderr[-3000:]
    run = json.loads((proj / "models/tiny/run.json").read_text())
    assert run["mlflow"]["registered"] == "charlm-tiny version 1" and "error" not in run["mlflow"]
    client, runs = _runs(uri)
    assert runs[0].info.status == "FINISHED" and runs[0].data.params["train.cell"] == "lstm-cifg"
    s = run_module("flows.sample", "--model", "models:/charlm-tiny/1", "--prime", "ROMEO:", "--length", "40", cwd=proj,
                   env=dict(env, MLFLOW_TRACKING_URI=uri))
    assert s.returncode == 0 and s.stdout.startswith("ROMEO:"), s.stderr[-2000:]


def test_a_model_export_cannot_trace_is_logged_as_its_files(data, tmp_path, monkeypatch, capsys):
    """The C kernel taken even while torch.export traces (as before the fix): log_model says
    so in one warning and logs the checkpoint and vocab where flows.sample finds them; the
    training's run still ends FINISHED."""
    from lightning_modules import lstm_cpu
    from pipeline.config import load_params
    from pipeline.train import train

    proj, env = data
    uri = _store(tmp_path)
    params = load_params(proj / "params.yaml", {"train.cell": "lstm-cifg", "train.max_steps": 10, "train.val_every": 5, "tracking.uri": uri})
    monkeypatch.chdir(proj)
    monkeypatch.setattr(lstm_cpu, "usable", lambda x, lay: x.dtype == lstm_cpu.torch.float32 and lstm_cpu.library(lay) is not None)
    summary = train("tiny", params, models_root=tmp_path / "models", plots_root=tmp_path / "plots")
    err = capsys.readouterr().err
    assert "warning: torch.export cannot trace this model" in err and "no model version is registered" in err
    assert summary["mlflow"]["registered"] is None and "error" not in summary["mlflow"]
    client, runs = _runs(uri)
    run_id = runs[0].info.run_id
    assert runs[0].info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id, "checkpoint/extra_files")} == {
        "checkpoint/extra_files/best.ckpt", "checkpoint/extra_files/vocab.json"}
    assert not client.search_registered_models()
    s = run_module("flows.sample", "--model", f"runs:/{run_id}/checkpoint", "--prime", "ROMEO:", "--length", "40", cwd=proj,
                   env=dict(env, MLFLOW_TRACKING_URI=uri))
    assert s.returncode == 0 and s.stdout.startswith("ROMEO:"), s.stderr[-2000:]


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_an_interrupted_training_is_killed_in_mlflow_with_its_last_losses(data, tmp_path, sig, code, word):
    proj, env = data
    _fresh(proj)
    uri = _store(tmp_path)
    e = {**os.environ, **env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    e.pop("CORPUS_MIRROR", None)
    args = ["--set", "train.max_steps=100000", "--set", "train.max_seconds=120", "--set", "train.val_every=30",
            "--set", "train.log_every=1", "--set", "train.progress_every=1"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", "tiny", *args], cwd=proj, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_default)
    try:
        client = mlflow.MlflowClient(uri)
        end = time.monotonic() + 120
        while time.monotonic() < end and proc.poll() is None:  # a validation has been logged: training is under way
            _, runs = _runs(uri) if (tmp_path / "mlflow.db").exists() else (None, [])
            if runs and client.get_metric_history(runs[0].info.run_id, "val_loss"):
                break
            time.sleep(0.3)
        time.sleep(1.0)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-3000:]
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {word}"), err[-3000:]
    assert "Traceback" not in err
    assert not (proj / "models/tiny").exists()  # no half-written model under the final name
    _, runs = _runs(uri)
    assert runs[0].info.status == "KILLED"
    # every step's loss up to the last one printed reached the run: those since the last
    # flush (a validation, or 50 pending) were sent on the way out
    last = max(int(l.split()[1]) for l in out.splitlines() if l.startswith("step ") and "train_loss" in l)
    train_steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert max(train_steps) >= last - 1 and len(set(train_steps)) == len(train_steps)


def test_a_server_that_dies_during_training_does_not_stop_it(data, tmp_path):
    proj, env = data
    _fresh(proj)
    with mlflow_server(tmp_path / "server") as (uri, kill):
        e = {**os.environ, **env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}  # MLflow's own retry settings
        e.pop("CORPUS_MIRROR", None)
        t = time.monotonic()
        args = ["--set", "train.max_steps=100000", "--set", "train.max_seconds=40", "--set", "train.val_every=10"]
        # 40 s of training: the kill must land while it runs, and the first val_loss reached the store 7-15 s in
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", "tiny", *args], cwd=proj, env=e,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # watch the server's own sqlite store (not through the server, whose one worker is busy)
            client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'server/store.db'}")
            end = time.monotonic() + 120
            while time.monotonic() < end and proc.poll() is None:
                runs = client.search_runs([x.experiment_id for x in client.search_experiments()])
                if runs and client.get_metric_history(runs[0].info.run_id, "val_loss"):
                    break
                time.sleep(0.2)
            t_kill = time.monotonic() - t
            kill()  # the server goes away, workers and all, with the training under way
            _, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    # no request waited out MLflow's retries (about 4 minutes each): the 12 s budget and seconds more
    assert time.monotonic() - t < 150, (t_kill, time.monotonic() - t, err[-3000:])
    assert "warning: MLflow at" in err and "training goes on" in err and "points are not logged" in err
    assert "warning: training finished and" in err and "the run is marked FAILED" in err
    assert "Traceback" not in err
    run = json.loads((proj / "models/tiny/run.json").read_text())
    assert "metric points not logged" in run["mlflow"]["error"] and (proj / "models/tiny/best.ckpt").is_file()


def test_a_server_that_dies_after_training_costs_seconds_not_retries(data, tmp_path):
    """The store goes away after the last metrics reached it, as the model uploads begin: the
    stage still ends at once (few retries, seconds apart), its outputs written, the run FAILED."""
    proj, env = data
    _fresh(proj)
    with mlflow_server(tmp_path / "server") as (uri, kill):
        e = {**os.environ, **env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}  # MLflow's own retry settings
        e.pop("CORPUS_MIRROR", None)
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", "tiny", "--set", "train.max_steps=30"], cwd=proj, env=e,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            end = time.monotonic() + 180
            while time.monotonic() < end and proc.poll() is None and not (proj / "models/tiny/run.json").exists():
                time.sleep(0.05)  # run.json appears when the training's outputs are complete, before the uploads
            kill()
            t = time.monotonic()
            _, err = proc.communicate(timeout=600)
        finally:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - t < 60, (time.monotonic() - t, err[-3000:])  # MLflow's own retries: minutes per request
    assert "but logging to MLflow at" in err and "the run is marked FAILED" in err and "Traceback" not in err
    run = json.loads((proj / "models/tiny/run.json").read_text())
    assert run["mlflow"]["error"] and run["mlflow"]["registered"] is None and (proj / "models/tiny/best.ckpt").is_file()


def test_evaluate_and_sample_go_on_when_the_run_is_gone(data, tmp_path):
    proj, env = data
    uri = _store(tmp_path)
    run_env = dict(env, MLFLOW_TRACKING_URI=uri)
    p = run_module("pipeline.train", "tiny", "--set", "train.max_steps=6", "--set", "train.val_every=3", cwd=proj, env=run_env)
    assert p.returncode == 0, p.stderr[-2000:]
    for _ in range(2):  # evaluate rerun: its scores are not logged twice
        assert run_module("pipeline.evaluate", "tiny", cwd=proj, env=run_env).returncode == 0
    client, runs = _runs(uri)
    assert len(client.get_metric_history(runs[0].info.run_id, "eval_val_loss")) == 1
    assert len(client.get_metric_history(runs[0].info.run_id, "eval_val_tokens_per_s")) == 1  # nor the speed beside them
    (tmp_path / "mlflow.db").unlink()  # the store deleted (or models/ pulled from a DVC remote)
    for module, out in (("pipeline.evaluate", "metrics/tiny/eval.json"), ("pipeline.sample", "samples/tiny.txt")):
        (proj / out).unlink(missing_ok=True)
        p = run_module(module, "tiny", cwd=proj, env=run_env)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "note: MLflow run" in p.stderr and "nothing logged" in p.stderr and "Traceback" not in p.stderr
        assert (proj / out).is_file()
    assert not (tmp_path / "mlflow.db").exists()  # no empty store made on the way


@pytest.mark.parametrize("uri, words", [
    ("127.0.0.1:5000", "needs its scheme, e.g. http://127.0.0.1:5000"),
    ("localhost:5000/mlflow", "http://localhost:5000/mlflow"),
    ("http://ann:s3cret@127.0.0.1:5000", "MLFLOW_TRACKING_PASSWORD"),
    ("mlruns", "file store"),
])
def test_tracking_uris_that_cannot_work_are_one_line(uri, words, monkeypatch):
    from pipeline.errors import UserError
    from pipeline.tracking import check_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(UserError, match="MLFLOW_TRACKING_URI") as e:
        check_uri(uri)
    assert words in str(e.value) and "s3cret" not in str(e.value)


@pytest.mark.parametrize("uri", ["databricks", "postgresql://u@db/mlflow", "mysql+pymysql://u@db/mlflow", "sqlite:///rel.db",
                                 "http://ann@127.0.0.1:5000/mlflow", "https://mlflow.example.invalid"])
def test_tracking_uris_that_can_work_pass(uri):
    from pipeline.tracking import check_uri

    check_uri(uri)


def test_a_database_password_is_never_shown(data):
    """A SQL store's URI holds its password (SQLAlchemy has nowhere else for it): every line the
    stage prints, and run.json, show it as ***. Here the driver is not installed (or, where it
    is, nothing listens on port 9): one line either way, before training."""
    proj, env = data
    _fresh(proj)
    r = run_module("pipeline.train", "tiny", cwd=proj, env=dict(env, MLFLOW_TRACKING_URI="postgresql://ann:s3cret@127.0.0.1:9/mlflow"))
    e = one_line_error(r)
    assert r.returncode == 2 and "postgresql://ann:***@127.0.0.1:9/mlflow" in e, e
    assert "s3cret" not in r.stdout + r.stderr
    assert not (proj / "models/tiny").exists()


def test_a_long_error_keeps_its_start_and_its_reason():
    """A connection error names its reason at the end of a long line; cut at the limit, the
    server-down message ended inside `host='127`."""
    from pipeline.tracking import error_line

    e = ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /api/2.0/mlflow/"
                        "experiments/get-by-name?experiment_name=charlm-tiny (Caused by NewConnectionError('<urllib3."
                        "connection.HTTPConnection object at 0x7f>: Failed to establish a new connection: [Errno 111] "
                        "Connection refused'))")
    line = error_line(e, 160)
    assert len(line) == 160 and line.startswith("ConnectionError: HTTPConnectionPool(host='127.0.0.1', port=9)")
    assert line.endswith("Connection refused'))") and " ... " in line
    assert error_line(ValueError("short\nsecond line")) == "ValueError: short"


def test_a_redacted_uri_in_run_json_takes_the_full_one_of_the_same_store(monkeypatch):
    from pipeline.errors import UserError, redact
    from pipeline.tracking import error_line, hide_password, stored_uri

    full = "postgresql://ann:s3cret@db.internal:5432/mlflow"
    assert redact(full) == "postgresql://ann:***@db.internal:5432/mlflow"
    assert redact(f"could not connect to {full} and mysql://u:p@h/x") == "could not connect to postgresql://ann:***@db.internal:5432/mlflow and mysql://u:***@h/x"
    assert "s3cret" not in error_line(RuntimeError(f"bad {full}"))
    # passwords SQLAlchemy reads: '/' in it, '@' in the user (user@server), a space (run.json's form parses the URI)
    assert redact("postgresql://ann:pa/ss@db/m") == hide_password("postgresql://ann:pa/ss@db/m") == "postgresql://ann:***@db/m"
    assert redact("postgresql://ann@srv:s3cret@db/m") == "postgresql://ann@srv:***@db/m"
    assert "s3cret" not in hide_password("postgresql://ann@srv:s3cret@db/m")
    assert hide_password("postgresql://ann:pa ss@db/m") == "postgresql://ann:***@db/m"
    assert redact("http://127.0.0.1:5000/x is down, ask ann@example.org") == "http://127.0.0.1:5000/x is down, ask ann@example.org"
    for plain in ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "postgresql://ann@db/mlflow"):
        assert redact(plain) == plain and stored_uri(plain, None) == plain
    assert stored_uri(redact(full), lambda: full) == full  # the same store, given in full now
    with pytest.raises(UserError, match=r"password left out; give the full URI in MLFLOW_TRACKING_URI"):
        stored_uri(redact(full), lambda: "postgresql://ann:s3cret@other-db/mlflow")
    with pytest.raises(UserError, match="password left out"):
        stored_uri(redact(full), None)


def test_a_proxy_without_its_server_is_one_line_and_any_other_answer_is_up(http_server):
    """/busy/... answers 503 (a proxy whose MLflow is down): refused now, not after MLflow's
    minutes of retries; a 404 is a server that answers (a proxy may hide /health)."""
    from pipeline.errors import UserError
    from pipeline.tracking import check_server, find_run

    base, _, _ = http_server
    with pytest.raises(UserError, match="answers HTTP 503"):
        check_server(f"{base}/busy")
    check_server(f"{base}/missing")
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match="does not answer"):
        find_run(down, "0" * 32)  # evaluate/sample: a store that cannot be asked fails the stage, in one line


def test_a_run_deleted_in_the_ui_counts_as_gone_and_a_score_is_logged_once(tmp_path):
    from pipeline import tracking

    uri = _store(tmp_path)
    run_id = tracking.start_run(uri, "charlm-x", "r", {"p": "1"}, {})
    mlf = {"tracking_uri": uri, "run_id": run_id}
    for _ in range(2):  # a rerun: NaN and numbers alike are not logged twice
        assert tracking.add_to_run(mlf, [], {"eval_val_loss": 1.5, "eval_test_loss": float("nan")}, 3)
    client = mlflow.MlflowClient(uri)
    assert [len(client.get_metric_history(run_id, k)) for k in ("eval_val_loss", "eval_test_loss")] == [1, 1]
    client.delete_run(run_id)
    assert tracking.find_run(uri, run_id) == (None, "the run was deleted")
    assert tracking.add_to_run(mlf, [], {"eval_val_loss": 1.4}, 3) is False  # a note, no error


def test_the_printed_tracking_uri_hides_a_database_password(tmp_path):
    """`python -m pipeline.tracking` shows the URI without its password; `--full` (the Makefile's, to open the store) with it."""

    env = dict(os.environ, MLFLOW_TRACKING_URI="postgresql://ann:s3cret@127.0.0.1:5432/mlflow")
    shown = run_module("pipeline.tracking", "--params", str(ROOT / "params.yaml"), cwd=tmp_path, env=env)
    full = run_module("pipeline.tracking", "--params", str(ROOT / "params.yaml"), "--full", cwd=tmp_path, env=env)
    assert shown.returncode == full.returncode == 0, shown.stderr + full.stderr
    assert shown.stdout.strip() == "postgresql://ann:***@127.0.0.1:5432/mlflow"
    assert full.stdout.strip() == "postgresql://ann:s3cret@127.0.0.1:5432/mlflow"


def test_models_copied_to_another_checkout_log_to_that_checkouts_store(data, tmp_path):
    """run.json names the project's own sqlite store relative to the project: evaluate in a
    copy of the project (models/ copied, or pulled from a DVC remote) logs to the copy's
    store, or notes that the run is not there, and never writes into the first store."""
    proj, env = data
    _fresh(proj)
    own = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}  # the default: <project>/mlflow.db
    (proj / "mlflow.db").unlink(missing_ok=True)
    p = run_module("pipeline.train", "tiny", "--set", "train.max_steps=6", "--set", "train.val_every=3", cwd=proj, env=own)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((proj / "models/tiny/run.json").read_text())["mlflow"]["tracking_uri"] == "sqlite:///mlflow.db"
    copy = tmp_path / "copy"
    shutil.copytree(proj, copy, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    p = run_module("pipeline.evaluate", "tiny", cwd=copy, env=own)
    assert p.returncode == 0 and "is not in sqlite:///mlflow.db" in p.stderr and "nothing logged" in p.stderr, p.stderr[-2000:]
    assert not (copy / "mlflow.db").exists()
    client, runs = _runs(f"sqlite:///{proj / 'mlflow.db'}")
    assert len(runs) == 1 and not [k for k in runs[0].data.metrics if k.startswith("eval_")]  # the first store untouched
    assert run_module("pipeline.evaluate", "tiny", cwd=proj, env=own).returncode == 0  # in its own checkout it logs
    client, runs = _runs(f"sqlite:///{proj / 'mlflow.db'}")
    assert "eval_val_loss" in runs[0].data.metrics


def test_an_interrupted_upload_leaves_no_pending_model(tmp_path):
    """MLflow marks a logged model FAILED after an error in log_model, not after Ctrl-C or
    SIGTERM; tracking.fail_pending_models (log_model calls it then) does."""
    from pipeline import tracking

    uri = _store(tmp_path)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("charlm-tiny")
    run_id = client.create_run(exp).info.run_id
    other = client.create_run(exp).info.run_id
    pending = client.create_logged_model(exp, name="model", source_run_id=run_id)
    ready = client.create_logged_model(exp, name="model", source_run_id=run_id)
    client.finalize_logged_model(ready.model_id, "READY")
    elsewhere = client.create_logged_model(exp, name="model", source_run_id=other)
    tracking.fail_pending_models(uri, run_id)
    status = {m: str(client.get_logged_model(m).status) for m in (pending.model_id, ready.model_id, elsewhere.model_id)}
    assert status[pending.model_id].endswith("FAILED") and status[ready.model_id].endswith("READY")
    assert status[elsewhere.model_id].endswith("PENDING")  # another run's upload is not touched
    tracking.fail_pending_models(f"sqlite:///{tmp_path / 'none' / 'x.db'}", run_id)  # a store that fails: quiet
