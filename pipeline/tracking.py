"""MLflow tracking: one experiment per corpus or study, one run per training.

The run is created by the launching process before training (so its id is known to the
stages that follow: evaluate and sample log into the same run), and metrics reach it from
whichever process is global rank 0, through `MlflowCallback` (pipeline/callbacks.py) and
the client API. Only rank 0 logs under DDP. The tracking URI defaults to a sqlite database
in the project (`sqlite:///<absolute path>/mlflow.db`; MLflow 3 refuses a plain ./mlruns
store, and so does `tracking_uri`, in one line); MLFLOW_TRACKING_URI overrides it, e.g. an
`mlflow server` on 127.0.0.1 or a shared server. A server that does not answer is one line
before training starts (`start_run`); a store that fails later never stops a training: the
stage warns, keeps its outputs and marks the run FAILED if it can.

Models: the best checkpoint is logged with `mlflow.pytorch.log_model` in the `pt2`
format (torch.export: loading runs no pickled code) as a scorer, ids (B, seq_len) ->
logits (B, seq_len, V); the export fixes the window length, so the signature says so.
Sampling needs the recurrent state step by step, which a traced graph does not expose: the
weights-only checkpoint and vocab.json travel inside the same model as extra files, and
`pipeline.sample` / `flows.sample` load them from `models:/charlm-<corpus>/<version>`. A
model that torch.export cannot trace is logged as those two files alone, under checkpoint/
(not registered).
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

from lightning_modules.precision import cpu_bf16_kernels, cpu_model
from pipeline.config import Params
from pipeline.errors import TransientFailure, UserError, cli, redact


def tracking_uri(params: Params) -> str:
    """MLFLOW_TRACKING_URI, else params' tracking.uri, else sqlite:///<cwd>/mlflow.db."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    check_uri(uri)
    return uri


def check_uri(uri: str) -> None:
    """One line for what MLflow 3 cannot use or should not be given: a file store (./mlruns,
    file:...), a host:port without http://, a password inside the URI (it would be written
    into run.json, the logs and this project's messages)."""
    where = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") == uri else "tracking.uri"
    parsed = urlparse(uri)
    if re.fullmatch(r"[\w.-]+:\d+(/.*)?", uri):
        raise UserError(f"{where} is {uri!r}: a server's address needs its scheme, e.g. http://{hide_password(uri)}")
    if parsed.scheme == "file" or (parsed.scheme == "" and uri not in ("databricks", "databricks-uc")) or len(parsed.scheme) == 1:
        raise UserError(
            f"{where} is {uri!r}, a file store, which MLflow 3 no longer writes; use sqlite:///<folder>/mlflow.db "
            "(unset it for the project's mlflow.db) or an http:// server; `mlflow migrate-filestore` converts an old ./mlruns"
        )
    if parsed.scheme in ("http", "https") and parsed.password:
        raise UserError(
            f"{where} holds a password ({parsed.scheme}://{parsed.username}:***@{parsed.hostname}...), which would be written "
            "into models/<corpus>/run.json and the logs; give the URI without it and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )


def check_server(uri: str, timeout: float = 10.0, fix: str | None = None) -> None:
    """An http(s) tracking server that does not answer, or answers 5xx (a proxy without its
    backend), is one line now, not a traceback after MLflow's retries (about 4 minutes a
    request). Any answer below 500 counts as up (a proxy may want a login for /health). The
    probe uses MLflow's TLS settings (MLFLOW_TRACKING_INSECURE_TLS, _SERVER_CERT_PATH,
    _CLIENT_CERT_PATH), so a server MLflow can reach is not refused."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    import requests
    from mlflow.environment_variables import MLFLOW_TRACKING_INSECURE_TLS

    env = os.environ.get
    verify = False if MLFLOW_TRACKING_INSECURE_TLS.get() else (env("MLFLOW_TRACKING_SERVER_CERT_PATH") or True)
    fix = fix or "start it, point MLFLOW_TRACKING_URI (or tracking.uri) at a running one, or train without tracking: --set tracking.enabled=false"
    tls = "MLflow reads the same MLFLOW_TRACKING_SERVER_CERT_PATH / MLFLOW_TRACKING_INSECURE_TLS / MLFLOW_TRACKING_CLIENT_CERT_PATH"
    try:
        r = requests.get(uri.rstrip("/") + "/health", timeout=timeout, verify=verify, cert=env("MLFLOW_TRACKING_CLIENT_CERT_PATH"))
    except requests.exceptions.SSLError as e:
        raise UserError(f"the MLflow tracking server {hide_password(uri)}: TLS failed ({error_line(e, 160)}); {tls}") from None
    except requests.exceptions.TooManyRedirects:
        raise UserError(f"the MLflow tracking server {hide_password(uri)} redirects in a loop; check the URI") from None
    except requests.exceptions.RequestException as e:
        raise TransientFailure(f"the MLflow tracking server {hide_password(uri)} does not answer ({error_line(e, 160)}); {fix}") from None
    except OSError as e:  # a certificate file that is not there
        raise UserError(f"the MLflow tracking server {hide_password(uri)}: {error_line(e, 160)}; {tls}") from None
    if r.status_code >= 500:
        raise TransientFailure(f"the MLflow tracking server {hide_password(uri)} answers HTTP {r.status_code} (a proxy without its server?); {fix}")


def error_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one short line: its type and the first line of its message. A longer
    line keeps its start and its end, where a connection error says why (`... Connection refused')`)."""
    text = redact(str(e))
    line = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
    if len(line) <= limit:
        return line
    tail = (limit - 5) * 2 // 5
    return f"{line[:limit - 5 - tail]} ... {line[-tail:]}"


@contextlib.contextmanager
def few_retries(retries: int = 0, timeout: int = 15):
    """MLflow's HTTP requests in the block: `retries` retries 1, 2, 4 s apart, `timeout` s each.
    For the requests whose failure is handled here (metrics kept for later, a run marked
    FAILED on the way out), so that a dead store costs seconds, not MLflow's minutes of
    retries (7, up to 120 s apart, 120 s timeout), and Ctrl-C (which Lightning ignores while
    it cleans up) is not held. It sets environment variables, which MLflow reads per request:
    not for concurrent threads (the stages have one)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def source_tags(entry: str) -> dict[str, str]:
    """The tags MLflow's fluent API would set (source, user) and the git commit, which the
    client API leaves out: a run in the UI names the code that made it."""
    import getpass

    tags = {"mlflow.source.name": entry, "mlflow.source.type": "LOCAL"}
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    with contextlib.suppress(Exception):
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            tags["mlflow.source.git.commit"] = head.stdout.strip()
            # tracked files that differ from the commit: the code. Left out: params.yaml (the
            # run's params say what they were), the dvc.lock files and the pipeline's git-tracked
            # outputs (`dvc repro` rewrites them as it goes: the curves, scores, samples, reports)
            outputs = [f":(exclude,glob){p}" for p in ("**/dvc.lock", "plots/**", "metrics/**", "samples/**", "reports/**")]
            dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                    ":(exclude)params.yaml", *outputs], capture_output=True, text=True, timeout=10)
            if dirty.returncode == 0:
                tags["git.dirty"] = str(bool(dirty.stdout.strip())).lower()
    return tags


@contextlib.contextmanager
def fluent_uri(uri: str):
    """`mlflow.set_tracking_uri(uri)` for the fluent API inside the block only.

    MLflow 3 also writes the URI into os.environ["MLFLOW_TRACKING_URI"], which `tracking_uri`
    reads as the user's choice: in a long-lived process (a Prefect worker, a notebook, the
    tests) every later run would then log to the first store, whatever its params said. On
    leaving, both the variable and MLflow's own current URI are put back as they were.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as service

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    fluent_before = getattr(service, "_tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if hasattr(service, "_tracking_uri"):
            service._tracking_uri = fluent_before
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def db_folder(uri: str) -> Path:
    """The folder of a sqlite:/// store (the working directory for other local stores)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent
    return Path.cwd().resolve()


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def system_facts() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        lightning_version = version("lightning")  # the installed version, without importing it (3 s)
    except PackageNotFoundError:
        lightning_version = "none"
    facts = {
        "sys.torch": torch.__version__,
        "sys.lightning": lightning_version,
        "sys.python": platform.python_version(),
        "sys.platform": platform.platform(),
        "sys.cpu_count": str(os.cpu_count()),
        "sys.torch_threads": str(torch.get_num_threads()),
        "sys.cpu": cpu_model(),
        "sys.cpu_bf16_kernels": cpu_bf16_kernels(),  # CPU bf16 losses differ between amx and avx512_bf16
    }
    if torch.cuda.is_available():
        facts["sys.device"] = torch.cuda.get_device_name(0)
        facts["sys.cuda"] = str(torch.version.cuda)
    else:
        facts["sys.device"] = "cpu"
    return facts


DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "PyMySQL", "MySQLdb": "mysqlclient", "pyodbc": "pyodbc"}


def hide_password(uri: str) -> str:
    """The URI with its password as ***, as run.json keeps it: a database URI parsed the way
    SQLAlchemy parses it (any password), anything else by `redact`."""
    scheme = urlparse(uri).scheme
    if scheme and scheme not in ("http", "https", "sqlite", "file", "databricks", "databricks-uc"):
        try:
            from sqlalchemy.engine import make_url

            url = make_url(uri)
            if url.password is not None:
                return url.render_as_string(hide_password=True)
        except Exception:  # not a database URI SQLAlchemy reads: the plain pattern
            pass
    return redact(uri)


def portable_uri(uri: str) -> str:
    """run.json's form of a tracking URI: the password hidden (`hide_password`), and a sqlite
    file inside the project (the working folder of every stage) relative to it, so models/
    copied into another checkout (or pulled from a DVC remote) names that checkout's store,
    never this one's."""
    uri = hide_password(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        with contextlib.suppress(ValueError):
            if path.is_absolute():
                return "sqlite:///" + path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    return uri


def stored_uri(stored: str, current) -> str:
    """The tracking URI to log a later stage to: run.json's (`stored`), whose password, if it
    had one, is written there as *** (a database URI: an http one cannot hold one); then the
    URI the stage is given now (`current()`: MLFLOW_TRACKING_URI or tracking.uri), if it is the
    same store."""
    if hide_password(stored) != stored or ":***@" not in stored:
        return stored
    now = current() if current is not None else ""
    if hide_password(now) == stored:
        return now
    raise UserError(f"models/<corpus>/run.json names the MLflow store {stored}, its password left out; "
                    "give the full URI in MLFLOW_TRACKING_URI (or tracking.uri) to log to it, or set tracking.enabled: false")


def start_run(uri: str, experiment: str, run_name: str, params: dict, tags: dict, source: str = "python") -> str:
    """Create a run (not left active) and log params and tags; return its id. A tracking
    server that does not answer is one line (`check_server`)."""
    import mlflow
    from mlflow.entities import Param

    check_server(uri)
    run_id = None
    try:
        client = mlflow.MlflowClient(uri)  # a SQL store is opened (and checked) here
        exp = client.get_experiment_by_name(experiment)
        if exp:
            exp_id = exp.experiment_id
        else:
            # a local store keeps artifacts beside it in mlartifacts/ (a server decides for itself)
            local = uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri
            where = db_folder(uri) / "mlartifacts" if local else None
            exp_id = client.create_experiment(experiment, artifact_location=where.as_uri() if where else None)
        run_id = client.create_run(exp_id, run_name=run_name, tags={**source_tags(source), **tags}).info.run_id
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i : i + 100])
    except BaseException as e:
        if run_id:  # created, then refused or interrupted: not left RUNNING
            end_run_quietly(uri, run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        if isinstance(e, ModuleNotFoundError) and e.name in DRIVERS:  # a database URI whose driver is not installed
            raise UserError(f"MLflow at {hide_password(uri)} needs the Python package {e.name!r}, its database driver, which is not installed; "
                            f"pip install {DRIVERS[e.name]}, or use the project's sqlite store (unset the URI)") from None
        if is_store_error(e):
            raise UserError(f"MLflow at {hide_password(uri)} refused the new run of experiment {experiment} ({error_line(e)}); "
                            "check the store (python -m pipeline.tracking prints it) or --set tracking.enabled=false") from None
        raise
    return run_id


def is_store_error(e: BaseException) -> bool:
    """An error of the tracking store or of the way to it: MLflow's, HTTP's, the database's,
    an artifact store's (a local folder: OSError; S3, GCS, Azure: their clients')."""
    if isinstance(e, OSError):
        return True
    return type(e).__module__.split(".")[0] in ("mlflow", "requests", "urllib3", "sqlalchemy", "sqlite3", "botocore", "boto3",
                                                  "google", "azure")


def log_model(uri: str, run_id: str, ckpt: Path, vocab_json: Path, seq_len: int, registered_name: str | None,
              step: int = 0, tags: dict | None = None, description: str | None = None) -> str | None:
    """Log the checkpoint as an MLflow Model (pt2 scorer + weights-only checkpoint); register it.

    MLflow 3 gives the logged model the run's metrics at `step` (log them first: the training's
    last step shows its val_loss on the model) and `tags` to the model and its version;
    `description` goes to the version. An interrupt during the upload marks the logged model
    FAILED, not left PENDING (MLflow does so for an error only)."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from lightning_modules.checkpoint import load_checkpoint

    model, vocab, hp = load_checkpoint(ckpt)

    class Scorer(torch.nn.Module):
        """ids (B, seq_len) -> next-token logits (B, seq_len, V), from a zero state."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(ids)[0]

    V = hp["vocab_size"]
    example = np.zeros((2, seq_len), dtype=np.int64)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.int64), (-1, seq_len))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, seq_len, V))]),
    )
    scorer = Scorer(model).eval()
    try:
        with fluent_uri(uri), mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            # torch.export's note that nn.LSTM's flat weight list is an attribute, not a buffer: it
            # traces them as constants of the graph, which is what a scorer of fixed weights wants
            warnings.filterwarnings("ignore", message=r".*must be registered as buffers")
            info = mlflow.pytorch.log_model(
                scorer,
                name="model",
                input_example=example,
                signature=signature,
                serialization_format="pt2",
                extra_files=[str(ckpt), str(vocab_json)],
                registered_model_name=registered_name,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                step=step,
                tags=tags,
            )
    except (KeyboardInterrupt, SystemExit):
        fail_pending_models(uri, run_id)
        raise
    except Exception:
        why = export_error(scorer, example)  # torch.export's, or the store's (then raised)?
        if not why:
            raise
        # the files sampling needs, laid out as in a logged model: flows.sample --model runs:/<id>/checkpoint
        # ("model" may name the failed logged model now)
        client = mlflow.MlflowClient(uri)
        for f in (ckpt, vocab_json):
            client.log_artifact(run_id, str(f), "checkpoint/extra_files")
        print(f"warning: torch.export cannot trace this model ({why}); its checkpoint and vocab are logged as "
              f"runs:/{run_id}/checkpoint for flows.sample, and no model version is registered", file=sys.stderr)
        return None
    version = str(info.registered_model_version) if registered_name and info.registered_model_version else None
    if version and description:
        mlflow.MlflowClient(uri).update_model_version(registered_name, version, description=description)
    return version


def fail_pending_models(uri: str, run_id: str) -> None:
    """Mark the run's logged models still PENDING as FAILED: one try, quietly (on the way out
    of an interrupt)."""
    import mlflow

    try:
        with few_retries():
            client = mlflow.MlflowClient(uri)
            exp = client.get_run(run_id).info.experiment_id
            for m in client.search_logged_models([exp], filter_string=f"source_run_id = '{run_id}'"):
                if str(m.status).endswith("PENDING"):
                    client.finalize_logged_model(m.model_id, "FAILED")
    except Exception:
        pass


def export_error(module, example) -> str | None:
    """None if torch.export traces `module` on `example` (what log_model's pt2 format does,
    before it uploads anything), else the error in one line."""
    import torch

    try:
        torch.export.export(module, (torch.as_tensor(example),))
    except Exception as e:
        return error_line(e, 200)
    return None


def log_artifacts(uri: str, run_id: str, files: list[Path], metrics: dict | None = None, step: int | None = None,
                  tags: dict | None = None) -> None:
    import mlflow
    from mlflow.entities import Metric, RunTag

    client = mlflow.MlflowClient(uri)
    for f in files:
        if Path(f).is_file():
            client.log_artifact(run_id, str(f))
    now = int(time.time() * 1000)
    if metrics or tags:
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in (metrics or {}).items()],
                         tags=[RunTag(k, v[:5000]) for k, v in (tags or {}).items()])


def add_to_run(mlf: dict, files: list[Path], metrics: dict | None = None, step: int | None = None, tags: dict | None = None,
               params: Params | None = None) -> bool:
    """A later stage's files, metrics and tags to the training's run (`mlf`: run.json's
    "mlflow"). A run that is not in the store (mlflow.db deleted, models/ pulled from a DVC
    remote or made elsewhere) is one note and no logging: the stage's output is written. A
    store that cannot be reached is one error line (the stage fails, so a later `dvc repro`
    logs it). A metric the run already holds with the same value (a rerun) is not logged
    twice, nor a speed (`*_per_s`, never the same twice) measured beside the same scores. A
    database URI's password is not in run.json: `params` (with MLFLOW_TRACKING_URI)
    give the full URI of the same store."""
    uri, run_id = stored_uri(mlf["tracking_uri"], (lambda: tracking_uri(params)) if params is not None else None), mlf["run_id"]
    run, why = find_run(uri, run_id)
    if run is None:
        print(f"note: MLflow run {run_id} of this model is not in {hide_password(uri)} ({why}); nothing logged to MLflow "
              "(retrain, or set tracking.enabled: false)", file=sys.stderr)
        return False
    try:
        new = {k: v for k, v in (metrics or {}).items() if not same_value(run.data.metrics.get(k), v)}
        if all(k.endswith("_per_s") for k in new):  # a speed measured again beside the same scores: no new point
            new = {}
        log_artifacts(uri, run_id, files, new, step, tags)  # tags, not params: a rerun with other settings may overwrite them
    except Exception as e:
        raise refused(uri, e, "the logging") from None
    return True


def refused(uri: str, e: Exception, what: str) -> Exception:
    """What a later stage raises when the store fails it after its output is written: for a
    store's error (is_store_error), one line and exit 75 (a rerun logs it); any other error as
    it was."""
    if not is_store_error(e):
        return e
    return TransientFailure(f"MLflow at {hide_password(uri)} refused {what} ({error_line(e)}); the output is written, "
                            "rerun the stage when the store is back, or set tracking.enabled: false")


def same_value(logged, value) -> bool:
    """`value` is what the run holds already (NaN equal to NaN)."""
    if logged is None:
        return False
    return logged == float(value) or (math.isnan(logged) and math.isnan(float(value)))


def find_run(uri: str, run_id: str):
    """(run, None) if `run_id` is in the store at `uri`; (None, why) if the store says it is
    not there, or is a sqlite file that does not exist (not created here); a store that
    cannot be asked (down, refusing) is a TransientFailure (exit 75: the flows retry it),
    after MLflow's own retries. A run deleted in the UI counts as gone."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None, f"{uri.removeprefix('sqlite:///')} does not exist"
    check_server(uri)
    try:
        run = mlflow.MlflowClient(uri).get_run(run_id)
    except Exception as e:
        if isinstance(e, MlflowException) and e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None, error_line(e)
        if not is_store_error(e):
            raise
        raise TransientFailure(f"MLflow at {hide_password(uri)}: {error_line(e)}; rerun the stage when the store answers, "
                               "or set tracking.enabled: false") from None
    if run.info.lifecycle_stage == "deleted":
        return None, "the run was deleted"
    return run, None


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    mlflow.MlflowClient(uri).set_terminated(run_id, status)


def end_run_quietly(uri: str, run_id: str, status: str) -> None:
    """Mark a run FAILED or KILLED on the way out of an error: one try, no retries, and a
    store that fails too does not hide the error being raised."""
    try:
        with few_retries():
            end_run(uri, run_id, status)
    except Exception as e:
        print(f"warning: could not mark MLflow run {run_id} {status} ({type(e).__name__}); it shows RUNNING", file=sys.stderr)


def checkpoint_from_model_uri(model_uri: str, dst: Path | None = None) -> tuple[Path, Path]:
    """Download a logged model (e.g. models:/charlm-tinyshakespeare/latest); return (ckpt, vocab.json)."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst) if dst else None))
    extra = local / "extra_files"
    ckpts = sorted(extra.glob("*.ckpt")) if extra.is_dir() else []
    if not ckpts:
        raise FileNotFoundError(f"{model_uri} holds no checkpoint in extra_files/; it was not logged by pipeline.train")
    return ckpts[0], extra / "vocab.json"


@cli
def main(argv=None):
    """`python -m pipeline.tracking [--params F] [--full]`: print the tracking URI the stages log
    to, a database password as *** unless --full (for a tool that must open the store)."""
    import argparse

    from pipeline.config import load_params

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--full", action="store_true", help="print the password too (to pass the URI on, not to show it)")
    a = ap.parse_args(argv)
    uri = tracking_uri(load_params(a.params))
    print(uri if a.full else hide_password(uri))


if __name__ == "__main__":
    main()
