"""Quality per second: a time budget whose schedule ends with it, against the same run cut off.

    python bench/time_budget.py                 # the cpu preset, 60 s of training each
    python bench/time_budget.py --seconds 120 --device cuda --preset gpu

The runs train the same model from the same seed for the same seconds of training
(validation left out) and are scored by one last validation at the stop:
- cut: a cosine over the preset's max_steps (decay_frac 1), stopped when the time is up,
  which is what stopping a run by the clock gives you;
- budget: `train.max_seconds` (lightning_modules/budget.py): the steps that fit are
  estimated as it goes and the cosine ends at the stop;
- wsd: the same budget, warmup-stable-decay (`train.decay_frac`, default 0.2 here): lr held,
  then the cosine over the last 20% of the steps only.
Writes bench/out/time_budget_<device>.json and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.out_json import save  # noqa: E402

from lightning_modules.budget import TimeBudget  # noqa: E402
from lightning_modules.precision import resolve_precision  # noqa: E402
from lightning_modules.train import fit  # noqa: E402
from pipeline.config import load_params, parse_sets  # noqa: E402


class CutOff(TimeBudget):
    """The same clock as TimeBudget, but the schedule is left alone: stop when the time is up."""

    def _estimate(self, trainer, pl_module):
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.train_seconds() >= self.max_seconds:
            trainer.should_stop = True


def run(cfg: dict, data: str, callbacks=()) -> dict:
    r = fit(cfg, data, None, callbacks=list(callbacks))
    clock = next(c for c in r["trainer"].callbacks if isinstance(c, TimeBudget))
    m = r["trainer"].callback_metrics
    return {
        "steps": r["steps"],
        "train_s": round(clock.train_seconds(), 2),
        "final_val_loss": round(float(m["val_loss"]), 4),
        "last_lr": r["module"].lr_at(r["steps"] - 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--preset", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--data", default=str(ROOT / "data/onehot/tinyshakespeare"))
    ap.add_argument("--decay-frac", type=float, default=0.2, help="the wsd run's train.decay_frac")
    ap.add_argument("--quick", action="store_true", help="a tiny model for 5 s: checks the script")
    a = ap.parse_args()
    if not (Path(a.data) / "meta.json").exists():
        sys.exit(f"error: {a.data}/meta.json not found; run `dvc repro onehot@tinyshakespeare` first")
    sets = [f"preset={a.preset}", f"train.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}"]
    if a.quick:
        sets += ["train.hidden=32", "train.layers=1", "train.batch_size=8", "train.warmup_steps=5"]
        a.seconds = 5.0
    cfg = load_params(ROOT / "params.yaml", parse_sets(sets)).train.to_fit()
    cfg["precision"] = resolve_precision(cfg["precision"], cfg["accelerator"])  # auto: bf16 where the CPU has it
    # validation time is left out of both clocks; the budget re-estimates at each validation
    cfg.update(progress_every=0, val_every=5 if a.quick else 100)
    cut = run(dict(cfg, decay_frac=1.0), a.data, [CutOff(a.seconds)])
    budget = run(dict(cfg, max_steps=10**9, max_seconds=a.seconds, decay_frac=1.0), a.data)
    wsd = run(dict(cfg, max_steps=10**9, max_seconds=a.seconds, decay_frac=a.decay_frac), a.data)
    res = {"preset": a.preset, "device": a.device, "precision": cfg["precision"], "seconds": a.seconds, "max_steps of the cut run": cfg["max_steps"],
           "decay_frac of the wsd run": a.decay_frac, "cut": cut, "budget": budget, "wsd": wsd,
           "val_loss_gain": round(cut["final_val_loss"] - budget["final_val_loss"], 4),
           "val_loss_gain_wsd": round(cut["final_val_loss"] - wsd["final_val_loss"], 4)}
    save(f"time_budget_{a.device}.json", res)
    print(f"| {a.preset} preset, {a.seconds:.0f} s of training, {a.device}, {cfg['precision']} | steps | train s | lr at the stop | val_loss at the stop |")
    print("|---|---:|---:|---:|---:|")
    rows = (("cut off (cosine over max_steps)", cut), ("time budget (cosine ends at the stop)", budget),
            (f"time budget, warmup-stable-decay (decay_frac {a.decay_frac})", wsd))
    for name, r in rows:
        print(f"| {name} | {r['steps']} | {r['train_s']:.1f} | {r['last_lr']:.2e} | {r['final_val_loss']:.4f} |")


if __name__ == "__main__":
    main()
