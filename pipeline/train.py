"""Stage `train@<corpus>`: train the language model on data/onehot/<corpus>/ with params.yaml.

    python -m pipeline.train tinyshakespeare          # -> models/<corpus>/{best,last}.ckpt
    python -m pipeline.train tinyshakespeare --set train.cell=gru --set train.max_steps=200

The same routine (`lightning_modules.train.fit`) serves DVC, the Prefect flow and the
benchmarks; this module adds the params, MLflow and the files DVC tracks:
- models/<corpus>/best.ckpt, last.ckpt, run.json (summary + MLflow run id), written into a
  temporary folder that replaces the old one only when training succeeded;
- plots/<corpus>/train_loss.csv, val_loss.csv (for `dvc plots show`), loss_curve.png.
With `tracking.enabled: false` MLflow is not even imported (a bare GPU box needs only
torch and Lightning).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from pipeline.atomic import atomic_dir, write_json
from pipeline.config import Params, load_params, parse_sets
from pipeline.errors import UserError, cli

ONEHOT = Path("data/onehot")
MODELS = Path("models")
PLOTS = Path("plots")


def global_rank() -> int:
    """This process's rank under torchrun, SLURM or Lightning's own DDP launcher (0 alone)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def check_data(corpus: str, params: Params, onehot_root: Path = ONEHOT) -> tuple[Path, dict]:
    data_dir = onehot_root / corpus
    meta_file = data_dir / "meta.json"
    if not meta_file.is_file():
        raise UserError(f"{meta_file}: not found; run the data stages first (dvc repro onehot@{corpus})")
    meta = json.loads(meta_file.read_text())
    if meta.get("kind") != "text":
        raise UserError(f"corpus {corpus} is {meta.get('kind')} data, not text; the language model trains on text corpora")
    tp = params.train
    window = tp.seq_len if tp.bptt == "full" else tp.k1 * tp.batch_size
    if meta["splits"]["train"] < window + 2:
        raise UserError(
            f"corpus {corpus}: the train split has {meta['splits']['train']:,} tokens, fewer than one training window "
            f"({window + 1:,}); lower train.seq_len (or k1 x batch_size) or use a longer corpus"
        )
    if meta["splits"]["val"] < 2:
        raise UserError(f"corpus {corpus}: the val split is empty; raise onehot.val_frac")
    return data_dir, meta


def check_device(accelerator: str) -> None:
    """A GPU preset on a machine without a visible GPU: one line, before any work."""
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                "train.accelerator is gpu (preset gpu?) but no CUDA device is visible; use preset: cpu or --set train.accelerator=cpu"
            )


def train(corpus: str, params: Params, models_root: Path = MODELS, plots_root: Path = PLOTS, onehot_root: Path = ONEHOT) -> dict:
    """Train on one corpus; return the summary written to models/<corpus>/run.json."""
    from lightning_modules.precision import cpu_bf16_kernels, cpu_model, resolve_precision
    from lightning_modules.train import fit

    data_dir, meta = check_data(corpus, params, onehot_root)
    tp = params.train
    check_device(tp.accelerator)
    cfg = tp.to_fit()
    cfg["precision"] = resolve_precision(tp.precision, tp.accelerator)  # recorded as trained, not "auto"
    rank = global_rank()
    if rank != 0:  # a DDP worker launched by torchrun/SLURM/Lightning: train, write nothing
        fit(cfg, data_dir, models_root / f".{corpus}.rank{rank}")
        return {}

    from pipeline.curves import CurveRecorder, plot_curves

    curve_dir = plots_root / corpus
    callbacks = [CurveRecorder(curve_dir, tp.log_every)]
    run_id = uri = None
    if params.tracking.enabled:
        from pipeline import tracking

        uri = tracking.tracking_uri(params)
        flat = tracking.flatten({"train": cfg, "preset": params.preset, "corpus": corpus})
        flat.update({"data.sha256": meta["corpus_sha256"], "data.vocab_size": str(meta["vocab_size"]), "data.train_tokens": str(meta["splits"]["train"])})
        run_id = tracking.start_run(uri, f"charlm-{corpus}", f"{tp.cell}-{tp.layers}x{tp.hidden}", flat, {"corpus": corpus, "cell": tp.cell, **tracking.system_facts()})
        callbacks.append(tracking.MlflowCallback(uri, run_id, tp.log_every))
    with atomic_dir(models_root / corpus) as out:
        try:
            r = fit(cfg, data_dir, out, callbacks=callbacks)
        except BaseException:
            if run_id:
                tracking.end_run(uri, run_id, "FAILED")
            raise
        shutil.copyfile(data_dir / "vocab.json", out / "vocab.json")
        summary = {
            "corpus": corpus,
            "best_val_loss": r["best_val_loss"],
            "steps": r["steps"],
            "train_seconds": round(r["train_seconds"], 2),
            "train_tokens_per_s": round(r["train_tokens_per_s"], 1),
            "preset": params.preset,
            "precision_setting": tp.precision,
            "cpu": {"model": cpu_model(), "bf16_kernels": cpu_bf16_kernels()},  # CPU bf16 losses depend on the kernels
            "train": cfg,
            "mlflow": {"tracking_uri": uri, "run_id": run_id} if run_id else None,
        }
        write_json(out / "run.json", summary)
    try:
        png = plot_curves(curve_dir, curve_dir / "loss_curve.png", f"{corpus}: {tp.cell} {tp.layers}x{tp.hidden}")
    except ModuleNotFoundError as e:  # a bare GPU box: torch and Lightning only
        if e.name != "matplotlib":
            raise
        png = None
        print("note: matplotlib is not installed, so no loss_curve.png; the curves are in the CSV files", file=sys.stderr)
    if run_id:
        best = models_root / corpus / "best.ckpt"
        name = f"charlm-{corpus}" if params.tracking.register else None
        version = tracking.log_model(uri, run_id, best, models_root / corpus / "vocab.json", tp.seq_len, name)
        tracking.log_artifacts(
            uri, run_id, [f for f in (models_root / corpus / "vocab.json", png, curve_dir / "train_loss.csv", curve_dir / "val_loss.csv") if f],
            {"best_val_loss": r["best_val_loss"], "train_tokens_per_s": r["train_tokens_per_s"], "train_seconds": r["train_seconds"]},
            r["steps"],
        )
        tracking.end_run(uri, run_id)  # evaluate and sample still add to it
        summary["mlflow"]["registered"] = f"{name} version {version}" if name else None
        write_json(models_root / corpus / "run.json", summary)
    return summary


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a param (repeatable)")
    a = ap.parse_args(argv)
    params = load_params(a.params, parse_sets(a.set))
    s = train(a.corpus, params)
    if s:
        print(f"{a.corpus}: best val_loss {s['best_val_loss']:.4f} nats/token after {s['steps']} steps, "
              f"{s['train_seconds']:.0f} s ({s['train_tokens_per_s']:,.0f} tokens/s) -> {MODELS / a.corpus}")


if __name__ == "__main__":
    main()
