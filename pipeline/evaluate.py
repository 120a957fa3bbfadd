"""Stage `evaluate@<corpus>`: score the best checkpoint on whole splits -> metrics/<corpus>/eval.json.

    python -m pipeline.evaluate tinyshakespeare

Every token of val (and test, when the split is not empty) is scored once, by streams with
the state carried (see lightning_modules/train.py). Metrics: loss in nats per token, bits
per token (bits per character at char level), perplexity, evaluation tokens per second,
and the training throughput from models/<corpus>/run.json. Logged to the training run in
MLflow as eval_* metrics when tracking is on.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.config import PARAMS, Params, load_params, parse_sets
from pipeline.errors import UserError, cli
from pipeline.train import MODELS, ONEHOT, check_data

METRICS = Path("metrics")


def model_dir(corpus: str, models_root: Path = MODELS, params: Params | None = None) -> tuple[Path, dict]:
    d = models_root / corpus
    if params is not None:
        params.corpus(corpus)  # a name params.yaml does not declare: one line listing those it does
    if not (d / "best.ckpt").is_file():
        if params is not None and corpus not in params.lm_corpora:  # no train@<corpus> stage to run
            raise UserError(f"{d}/best.ckpt: not found; train first: python -m pipeline.train {corpus} "
                            f"(or add {corpus} to lm_corpora in {PARAMS} for dvc repro train@{corpus})")
        raise UserError(f"{d}/best.ckpt: not found; train first (dvc repro train@{corpus})")
    run = json.loads((d / "run.json").read_text()) if (d / "run.json").is_file() else {}
    return d, run


def check_torch_device(device: str) -> None:
    """cpu, cuda or cuda:N, and a CUDA device only where one is visible: one line, before any work."""
    import re

    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UserError(f"--device {device}: not a device; use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is visible here; use --device cpu")


def load_model(ckpt: Path, device: str = "cpu"):
    """(model, vocab, hyper-parameters) of a checkpoint; a file that is not one is one line."""
    from lightning_modules.checkpoint import load_checkpoint

    try:
        return load_checkpoint(ckpt, map_location=device)
    except (OSError, RuntimeError, ValueError, KeyError, EOFError) as e:
        raise UserError(f"{ckpt}: cannot load the checkpoint ({str(e).splitlines()[0]}); train again or give another path") from None


def evaluate(corpus: str, params: Params, models_root: Path = MODELS, metrics_root: Path = METRICS, onehot_root: Path = ONEHOT) -> dict:
    from lightning_modules.train import default_device, evaluate_model

    data_dir, meta = check_data(corpus, params, onehot_root)
    d, run = model_dir(corpus, models_root, params)
    tp = params.train
    device = default_device("cuda" if tp.accelerator in ("gpu", "cuda") else ("cpu" if tp.accelerator == "cpu" else None))
    model, _, hp = load_model(d / "best.ckpt", device)  # a damaged checkpoint: one line, not a traceback
    m = evaluate_model(model, hp, data_dir, ("val", "test"), device, tp.eval_batch, tp.eval_len)
    out = {k: round(v, 5) if isinstance(v, float) else v for k, v in m.items()}
    out["train_tokens_per_s"] = run.get("train_tokens_per_s")
    out["train_steps"] = run.get("steps")
    out["level"] = meta.get("level", "char")
    write_json(metrics_root / corpus / "eval.json", out)
    mlf = run.get("mlflow")
    if params.tracking.enabled and mlf:
        from pipeline import tracking

        # the scores (the train_* entries are the training run's own metrics already)
        numeric = {f"eval_{k}": v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("train_")}
        if tracking.add_to_run(mlf, [metrics_root / corpus / "eval.json"], numeric, run.get("steps"), params=params):
            crown(mlf, params, out["val_loss"], meta)
    return out


def crown(mlf: dict, params: Params, val_loss: float, meta: dict) -> None:
    """The registered version of this model (if it is one) gets its score, and the alias
    `champion` goes to the best version scored on the same data (pipeline/champion.py). A
    version deleted in the UI is one note; a store that fails now is one line, exit 75, as for
    the scores."""
    import sys

    from mlflow.exceptions import MlflowException

    from pipeline import champion, tracking

    reg = champion.registered_version(mlf)
    if reg is None:
        return
    uri = tracking.stored_uri(mlf["tracking_uri"], lambda: tracking.tracking_uri(params))
    try:
        print(champion.promote(uri, *reg, val_loss, champion.score_key(meta, params.train.eval_batch, params.train.eval_len)), file=sys.stderr)
    except Exception as e:
        if isinstance(e, MlflowException) and e.error_code == "RESOURCE_DOES_NOT_EXIST":
            print(f"note: {reg[0]} version {reg[1]} is not in the registry any more; no alias set", file=sys.stderr)
            return
        raise tracking.refused(uri, e, "the model version's tags") from None


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a param (repeatable)")
    a = ap.parse_args(argv)
    m = evaluate(a.corpus, load_params(a.params, parse_sets(a.set)))
    print(f"{a.corpus}: val_loss {m['val_loss']:.4f} nats/token, {m['val_bpc']:.4f} bits/token, perplexity {m['val_ppl']:.2f}"
          + (f"; test_loss {m['test_loss']:.4f}" if "test_loss" in m else "") + f" -> {METRICS / a.corpus / 'eval.json'}")


if __name__ == "__main__":
    main()
