"""Sample text from a trained model: a checkpoint path or a registered MLflow model.

    python -m flows.sample --model models/tinyshakespeare/best.ckpt --prime "ROMEO:" --length 500
    python -m flows.sample --model models:/charlm-tinyshakespeare/latest --temperature 0.8 --prime "ROMEO:" --length 500
    python -m flows.sample --model models:/charlm-tinyshakespeare@champion     # the best version (pipeline/champion.py)

A models:/ URI is resolved with MLflow in the store the pipeline logs to: MLFLOW_TRACKING_URI,
else `tracking.uri` of --params (params.yaml), else the project's sqlite:///mlflow.db; the
weights-only checkpoint logged inside the model is used.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.config import SampleParams
from pipeline.errors import UserError, cli
from pipeline.evaluate import check_torch_device
from pipeline.sample import format_samples, sample_text


def store_uri(params_path: str) -> str:
    """The store `pipeline.train` logs to with these params (see the module docstring)."""
    from pipeline.config import PARAMS, load_params
    from pipeline.tracking import check_uri, tracking_uri

    if Path(params_path).is_file():
        return tracking_uri(load_params(params_path))
    if params_path != PARAMS:
        raise UserError(f"--params {params_path}: not found; give the params file whose tracking.uri names the store")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    check_uri(uri)  # a file store: one line
    return uri


def check_store(uri: str, model: str) -> None:
    """A sqlite store that does not exist: say so, rather than let MLflow create an empty one."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            raise UserError(
                f"{model}: no MLflow store at {db}; train first (dvc repro, or the flow), or point "
                "MLFLOW_TRACKING_URI or tracking.uri of --params at the store the model is in"
            )


def resolve(model: str, tmp: Path, params_path: str = "params.yaml") -> Path:
    if model.startswith(("models:/", "runs:/")):
        from pipeline.tracking import check_server, checkpoint_from_model_uri, fluent_uri, hide_password

        uri = store_uri(params_path)
        check_store(uri, model)
        # a server that does not answer: one line now, not MLflow's minutes of retries
        check_server(uri, fix="start it, point MLFLOW_TRACKING_URI (or tracking.uri of --params) at a running one, or sample a checkpoint file")
        try:
            with fluent_uri(uri):
                ckpt, _ = checkpoint_from_model_uri(model, tmp)
        except Exception as e:  # MlflowException for an unknown name/version, and the like
            raise UserError(
                f"{model}: cannot load it from MLflow at {hide_password(uri)} ({str(e).splitlines()[0]}); check the name/version with the MLflow UI"
            ) from None
        return ckpt
    path = Path(model)
    if not path.is_file():
        raise UserError(f"{model}: no such checkpoint; give a .ckpt path or models:/<name>/<version>")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else would fail in unpickling
        raise UserError(f"{model}: not a PyTorch checkpoint; give a best.ckpt or last.ckpt of a training run, or models:/<name>/<version>")
    return path


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="checkpoint path, or models:/charlm-<corpus>/<version|latest>, or models:/charlm-<corpus>@<alias>")
    ap.add_argument("--prime", default="")
    ap.add_argument("--length", type=int, default=500)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--argmax", action="store_true", help="greedy decoding")
    ap.add_argument("--n", type=int, default=1, help="samples, run as a batch")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--params", default="params.yaml", help="its tracking.uri names the MLflow store of models:/ URIs")
    a = ap.parse_args(argv)
    if a.length < 0 or a.n < 1 or a.top_k < 0:
        raise UserError(f"--length and --top-k must be >= 0 and --n >= 1, got {a.length}, {a.top_k} and {a.n}")
    check_torch_device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = resolve(a.model, Path(tmp), a.params)
        sp = SampleParams(length=a.length, temperature=a.temperature, top_k=a.top_k, prime=a.prime, seed=a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little"), n=a.n)
        texts = sample_text(ckpt, sp, argmax=a.argmax, device=a.device)
    sys.stdout.write(format_samples(texts))


if __name__ == "__main__":
    main()
