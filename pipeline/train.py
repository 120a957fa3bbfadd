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
import math
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
    params.corpus(corpus)  # a name params.yaml does not declare: one line listing those it does
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
    for split in ("val", "test"):  # evaluation reads eval_batch streams of at least one token each
        n = meta["splits"].get(split, 0)
        if (split == "val" or n > 0) and n < tp.eval_batch + 1:
            raise UserError(
                f"corpus {corpus}: the {split} split has {n:,} tokens, too few for train.eval_batch={tp.eval_batch} "
                f"evaluation streams (needs {tp.eval_batch + 1:,}); lower train.eval_batch or "
                + ("raise onehot.val_frac" if split == "val" else "leave more to the test split (onehot.train_frac + val_frac)")
            )
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

    from pipeline.callbacks import KeepInterrupt, MlflowCallback
    from pipeline.curves import CurveRecorder

    curve_dir = plots_root / corpus
    keep = KeepInterrupt()
    callbacks = [CurveRecorder(curve_dir, tp.log_every), keep]
    run_id = uri = None
    if params.tracking.enabled:
        from pipeline import tracking

        uri = tracking.tracking_uri(params)
        run_id = tracking.start_run(uri, f"charlm-{corpus}", f"{tp.cell}-{tp.layers}x{tp.hidden}", run_params(corpus, params, cfg, meta),
                                    {"corpus": corpus, "cell": tp.cell, **tracking.system_facts()}, source="pipeline.train")
        metrics_cb = MlflowCallback(uri, run_id, tp.log_every)
        callbacks.append(metrics_cb)
    try:
        with atomic_dir(models_root / corpus) as out:
            r = fit(cfg, data_dir, out, callbacks=callbacks)
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
                "mlflow": {"tracking_uri": tracking.portable_uri(uri), "run_id": run_id} if run_id else None,  # a password left out
            }
            write_json(out / "run.json", summary)
        png = loss_png(curve_dir, f"{corpus}: {tp.cell} {tp.layers}x{tp.hidden}")
        if run_id:
            log_training(params, uri, corpus, models_root, curve_dir, png, r, summary, metrics_cb)
    except BaseException as e:
        interrupt = keep.interrupt or (e if isinstance(e, KeyboardInterrupt) else None)
        if run_id:
            tracking.end_run_quietly(uri, run_id, "KILLED" if interrupt else "FAILED")
        if isinstance(e, SystemExit) and keep.interrupt is not None:
            raise keep.interrupt.with_traceback(None) from None  # Lightning's exit(1) after Ctrl-C: the stage's own line
        raise
    return summary


def run_params(corpus: str, params: Params, cfg: dict, meta: dict) -> dict[str, str]:
    """The run's params, flattened: the training's (as trained: precision resolved), and what
    decides the data it saw: the token level and vocabulary, the split, the corpus's hash."""
    from pipeline import tracking

    flat = tracking.flatten({"train": cfg, "preset": params.preset, "corpus": corpus})
    flat.update(tracking.flatten({"tokenize": vars(params.tokenize), "onehot": vars(params.onehot)}))
    flat.update({"data.level": str(meta.get("level", "char")), "data.sha256": meta["corpus_sha256"],
                 "data.vocab_size": str(meta["vocab_size"]), "data.train_tokens": str(meta["splits"]["train"])})
    return flat


def loss_png(curve_dir: Path, title: str) -> Path | None:
    from pipeline.curves import plot_curves

    try:
        return plot_curves(curve_dir, curve_dir / "loss_curve.png", title)
    except ModuleNotFoundError as e:  # a bare GPU box: torch and Lightning only
        if e.name != "matplotlib":
            raise
        print("note: matplotlib is not installed, so no loss_curve.png; the curves are in the CSV files", file=sys.stderr)
        return None


def describe(summary: dict) -> str:
    """The run's description in the MLflow UI (and its model version's): what trained, how
    long, how well."""
    t = summary["train"]
    bptt = "full BPTT" if t["bptt"] == "full" else f"TBPTT({t['k1']}, {t['k2']})"
    loss = summary["best_val_loss"]
    score = f"best val_loss {loss:.4f} nats/token ({loss / math.log(2):.3f} bits)" if isinstance(loss, float) else "no validation"
    return (f"{t['cell']} {t['layers']}x{t['hidden']} on {summary['corpus']}, {summary['preset']} preset: {score} "
            f"after {summary['steps']} steps in {summary['train_seconds']:.0f} s (batch {t['batch_size']}, seq_len {t['seq_len']}, "
            f"{bptt}, {t['precision']})")


def model_tags(summary: dict) -> dict[str, str]:
    """Tags of the logged model and its registered version: the versions told apart in the UI."""
    t = summary["train"]
    return {"corpus": summary["corpus"], "cell": t["cell"], "size": f"{t['layers']}x{t['hidden']}",
            "steps": str(summary["steps"]), "best_val_loss": f"{summary['best_val_loss']:.4f}" if isinstance(summary["best_val_loss"], float) else "none",
            "preset": str(summary["preset"])}


UPLOAD_TIMEOUT_S = 300  # one upload request (a large model over a slow link) may take minutes


def log_training(params: Params, uri: str, corpus: str, models_root: Path, curve_dir: Path, png: Path | None, r: dict, summary: dict, metrics_cb) -> None:
    """The model, the curves and the summary metrics to the run, which is then FINISHED
    (evaluate and sample still add to it). A store that fails now, or refused the training's
    metrics to the end (`metrics_cb`, the MlflowCallback), does not fail the stage, whose
    outputs are written: a warning, the run marked FAILED, and run.json says why."""
    from pipeline import tracking

    mlf = summary["mlflow"]
    run_id = mlf["run_id"]
    d = models_root / corpus
    name = f"charlm-{corpus}" if params.tracking.register else None
    why = None
    if metrics_cb.unsent:  # the store refused the metrics to the end: no model logged without them
        why = f"{metrics_cb.unsent} metric points not logged: {metrics_cb.failed}"
        print(f"warning: training finished and {d} is written, but MLflow at {tracking.hide_password(uri)} refused the metrics; "
              "the run is marked FAILED and the model not logged", file=sys.stderr)
    else:
        try:  # a store gone since the last flush costs seconds, not MLflow's minutes of retries per request
            with tracking.few_retries(2, timeout=UPLOAD_TIMEOUT_S):
                files = [d / "vocab.json", png, curve_dir / "train_loss.csv", curve_dir / "val_loss.csv"]
                # the summary first: the logged model takes the run's metrics of the last step
                tracking.log_artifacts(uri, run_id, [f for f in files if f],
                                       {"best_val_loss": r["best_val_loss"], "train_tokens_per_s": r["train_tokens_per_s"], "train_seconds": r["train_seconds"]},
                                       r["steps"], tags={"mlflow.note.content": describe(summary)})
                version = tracking.log_model(uri, run_id, d / "best.ckpt", d / "vocab.json", params.train.seq_len, name,
                                             step=r["steps"], tags=model_tags(summary), description=describe(summary))
                tracking.end_run(uri, run_id)
        except Exception as e:
            if not tracking.is_store_error(e):
                raise
            why = tracking.error_line(e)
            print(f"warning: training finished and {d} is written, but logging to MLflow at {tracking.hide_password(uri)} failed ({why}); "
                  "the run is marked FAILED", file=sys.stderr)
    if why:
        tracking.end_run_quietly(uri, run_id, "FAILED")
        mlf["error"], mlf["registered"] = why, None
    else:
        mlf["registered"] = f"{name} version {version}" if name and version else None
    write_json(d / "run.json", summary)


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
