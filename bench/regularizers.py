"""Overfitting and its cures: the same model trained with more and more of the regularisers.

    python bench/regularizers.py                          # CPU: the cpu preset (2x256) on 50k train chars
    python bench/regularizers.py --device cuda --preset gpu --train-chars 0 --steps 2400
    python bench/regularizers.py --quick                  # a tiny model for a few steps: checks the script
    python bench/regularizers.py --only between --steps 300 --decay-frac 0.2   # the decay ending at step 300

The gpu preset's first H100 run saw 80 passes over Tiny Shakespeare's 1M training characters in
120 s and overfit (best val 1.436 at 47 s, 1.537 at the end) with dropout between layers only.
This benchmark puts the CPU model in the same regime (tens of passes over a cut of the training
split; the whole validation split) and trains, from the same seed for the same steps:
- none: no dropout at all;
- between: `dropout` between the recurrent layers (what the preset had);
- + io: also `io_dropout` on the embedding's output and the top layer's output (Zaremba et al.);
- + weight_drop: also DropConnect on W_hh (Merity et al.).
Scores: best val_loss (and its step) and val_loss at the end. Writes
bench/out/regularizers_<device>.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.out_json import save  # noqa: E402

import numpy as np  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from lightning_modules.precision import resolve_precision  # noqa: E402
from lightning_modules.train import fit  # noqa: E402
from pipeline.config import load_params, parse_sets  # noqa: E402


class ValCurve(Callback):
    """(step, val_loss) after every validation."""

    def __init__(self):
        self.points = []

    def on_validation_end(self, trainer, pl_module):
        if "val_loss" in trainer.callback_metrics and not trainer.sanity_checking:
            self.points.append((trainer.global_step, float(trainer.callback_metrics["val_loss"])))


def cut_train_split(src: Path, dst: Path, chars: int) -> Path:
    """A data folder with the first `chars` tokens of src's train split and all of its val split."""
    dst.mkdir(parents=True, exist_ok=True)
    meta = json.loads((src / "meta.json").read_text())
    train = np.load(src / "train.npy")
    if chars:
        if chars > len(train):
            sys.exit(f"error: --train-chars {chars} is more than the {len(train)} tokens of {src}/train.npy; use 0 for all")
        train = train[:chars]
    np.save(dst / "train.npy", train)
    shutil.copy(src / "val.npy", dst / "val.npy")
    if (src / "vocab.json").exists():
        shutil.copy(src / "vocab.json", dst / "vocab.json")
    meta["splits"] = {"train": len(train), "val": meta["splits"]["val"], "test": 0}
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--data", default=str(ROOT / "data/onehot/tinyshakespeare"))
    ap.add_argument("--train-chars", type=int, default=50_000, help="first N tokens of the train split (0: all)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--p", type=float, default=0.5, help="dropout, io_dropout (and weight_drop at --wd-p)")
    ap.add_argument("--wd-p", type=float, default=0.3, help="weight_drop of the last run")
    ap.add_argument("--only", nargs="+", choices=["none", "between", "+ io", "+ weight_drop"], help="these runs only")
    ap.add_argument("--decay-frac", type=float, help="train.decay_frac (default: the preset's)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    src = Path(a.data)
    if not (src / "meta.json").exists():
        sys.exit(f"error: {src}/meta.json not found; run `dvc repro onehot@tinyshakespeare` first")
    sets = [f"preset={a.preset}", f"train.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}"]
    if a.quick:
        sets += ["train.hidden=32", "train.layers=2", "train.batch_size=8", "train.warmup_steps=2"]
        a.steps, a.train_chars = 20, 5_000
    base = load_params(ROOT / "params.yaml", parse_sets(sets)).train.to_fit()
    base["precision"] = resolve_precision(base["precision"], base["accelerator"])  # auto: bf16 where the CPU has it
    base.update(max_steps=a.steps, max_seconds=None, progress_every=0, val_every=max(5, a.steps // 12))
    if a.decay_frac is not None:
        base["decay_frac"] = a.decay_frac
    runs = {
        "none": dict(dropout=0.0, io_dropout=0.0, weight_drop=0.0),
        "between": dict(dropout=a.p, io_dropout=0.0, weight_drop=0.0),
        "+ io": dict(dropout=a.p, io_dropout=a.p, weight_drop=0.0),
        "+ weight_drop": dict(dropout=a.p, io_dropout=a.p, weight_drop=a.wd_p),
    }
    runs = {k: v for k, v in runs.items() if not a.only or k in a.only}
    res = {"preset": a.preset, "device": a.device, "precision": base["precision"], "train_chars": a.train_chars, "steps": a.steps, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = cut_train_split(src, Path(tmp) / "data", a.train_chars)
        n_train = json.loads((data / "meta.json").read_text())["splits"]["train"]
        res["passes_over_train"] = round(a.steps * base["batch_size"] * base["seq_len"] / n_train, 1)
        for name, reg in runs.items():
            curve = ValCurve()
            r = fit(dict(base, **reg), data, None, callbacks=[curve])
            best_step, best = min(curve.points, key=lambda p: p[1])
            res["runs"][name] = {**reg, "best_val_loss": round(best, 4), "best_step": best_step,
                                 "final_val_loss": round(curve.points[-1][1], 4), "train_s": round(r["train_seconds"], 1),
                                 "curve": [(s, round(v, 4)) for s, v in curve.points]}
    save(f"regularizers_{a.device}.json", res)
    print(f"| {a.preset} preset, {n_train:,} train chars, {a.steps} steps ({res['passes_over_train']} passes), "
          f"decay_frac {base['decay_frac']}, {a.device}, {base['precision']} "
          "| dropout | io_dropout | weight_drop | best val_loss (step) | val_loss at the end |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in res["runs"].items():
        print(f"| {name} | {r['dropout']} | {r['io_dropout']} | {r['weight_drop']} | {r['best_val_loss']:.4f} ({r['best_step']}) "
              f"| {r['final_val_loss']:.4f} |")


if __name__ == "__main__":
    main()
