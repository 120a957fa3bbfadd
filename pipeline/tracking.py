"""MLflow tracking: one experiment per corpus or study, one run per training.

The run is created by the launching process before training (so its id is known to the
stages that follow: evaluate and sample log into the same run), and metrics reach it from
whichever process is global rank 0, through `MlflowCallback` and the client API. Only
rank 0 logs under DDP. The tracking URI defaults to a sqlite database in the project
(`sqlite:///<absolute path>/mlflow.db`; current MLflow refuses a plain ./mlruns store);
MLFLOW_TRACKING_URI overrides it, e.g. an `mlflow server` on 127.0.0.1 or a shared server.

Models: the best checkpoint is logged with `mlflow.pytorch.log_model` in the `pt2`
format (torch.export: loading runs no pickled code) as a scorer, ids (B, seq_len) ->
logits (B, seq_len, V); the export fixes the window length, so the signature says so.
Sampling needs the recurrent state step by step, which a traced graph does not expose: the
weights-only checkpoint and vocab.json travel inside the same model as extra files, and
`pipeline.sample` / `flows.sample` load them from `models:/charlm-<corpus>/<version>`.
"""
from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from lightning_modules.precision import cpu_bf16_kernels, cpu_model
from pipeline.config import Params


def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


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
    import lightning
    import torch

    facts = {
        "sys.torch": torch.__version__,
        "sys.lightning": lightning.__version__,
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


def start_run(uri: str, experiment: str, run_name: str, params: dict, tags: dict) -> str:
    """Create a run (not left active) and log params and tags; return its id."""
    import mlflow
    from mlflow.entities import Param, RunTag

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp:
        exp_id = exp.experiment_id
    else:
        # a local store keeps artifacts beside it in mlartifacts/ (a server decides for itself)
        local = uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri
        where = db_folder(uri) / "mlartifacts" if local else None
        exp_id = client.create_experiment(experiment, artifact_location=where.as_uri() if where else None)
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


class MlflowCallback(Callback):
    """Metrics to an existing MLflow run, from global rank 0 only, in batches."""

    def __init__(self, uri: str, run_id: str, log_every: int, flush_every: int = 50):
        self.uri, self.run_id, self.log_every, self.flush_every = uri, run_id, log_every, flush_every
        self._client = None
        self._pending = []  # (step, device tensor)
        self._metrics = []

    def _c(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(self.uri)
        return self._client

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        if trainer.is_global_zero and step % self.log_every == 0:
            self._pending.append((step, outputs))
            if len(self._pending) >= self.flush_every:
                self.flush()

    def on_validation_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        m = trainer.callback_metrics
        for k in ("val_loss", "val_bpc", "val_ppl"):
            if k in m:
                self._metrics.append(Metric(k, float(m[k]), now, trainer.global_step))
        self.flush()

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.flush()

    def flush(self):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for step, t in self._pending:
            self._metrics.append(Metric("train_loss", float(t["loss"] if isinstance(t, dict) else t), now, step))
        self._pending = []
        for i in range(0, len(self._metrics), 900):
            self._c().log_batch(self.run_id, metrics=self._metrics[i : i + 900])
        self._metrics = []


def log_model(uri: str, run_id: str, ckpt: Path, vocab_json: Path, seq_len: int, registered_name: str | None) -> str | None:
    """Log the checkpoint as an MLflow Model (pt2 scorer + weights-only checkpoint); register it."""
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
    with fluent_uri(uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            Scorer(model).eval(),
            name="model",
            input_example=example,
            signature=signature,
            serialization_format="pt2",
            extra_files=[str(ckpt), str(vocab_json)],
            registered_model_name=registered_name,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    return str(info.registered_model_version) if registered_name else None


def log_artifacts(uri: str, run_id: str, files: list[Path], metrics: dict | None = None, step: int | None = None) -> None:
    import mlflow

    client = mlflow.MlflowClient(uri)
    for f in files:
        if Path(f).is_file():
            client.log_artifact(run_id, str(f))
    if metrics:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    mlflow.MlflowClient(uri).set_terminated(run_id, status)


def checkpoint_from_model_uri(model_uri: str, dst: Path | None = None) -> tuple[Path, Path]:
    """Download a logged model (e.g. models:/charlm-tinyshakespeare/latest); return (ckpt, vocab.json)."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst) if dst else None))
    extra = local / "extra_files"
    ckpts = sorted(extra.glob("*.ckpt")) if extra.is_dir() else []
    if not ckpts:
        raise FileNotFoundError(f"{model_uri} holds no checkpoint in extra_files/; it was not logged by pipeline.train")
    return ckpts[0], extra / "vocab.json"
