"""An equation-form LSTM trained end to end with and without CUDA graphs (LSTM_GRAPH=1).

    python bench/graph_fit.py --device cuda                  # lstm-v, the gpu preset's 3x512, 100 steps each
    python bench/graph_fit.py --device cuda --cell lstm-fgr --steps 200
    python bench/graph_fit.py --quick                        # CPU, a tiny model: checks the script

bench/cell_speed.py times one layer's forward and backward; this runs the whole training
step (Lightning, AdamW, clipping, dropout) from the same seed for the same steps, once with
each path, and prints the step rate (validation left out) and the validation loss at the end
of both. The losses
should agree to bf16/TF32 rounding: the graph path is the eager one replayed. On a CPU there
are no graphs, so both runs take the same path. Writes bench/out/graph_fit_<device>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.out_json import save  # noqa: E402

from bench.train_step import StepTimer  # noqa: E402
from lightning_modules.precision import resolve_precision  # noqa: E402
from lightning_modules.train import fit  # noqa: E402
from pipeline.config import load_params, parse_sets  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cell", default="lstm-v")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--data", default=str(ROOT / "data/onehot/tinyshakespeare"))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.steps < 2:
        sys.exit(f"error: --steps {a.steps}: need at least 2 (the first is not timed)")
    if not (Path(a.data) / "meta.json").exists():
        sys.exit(f"error: {a.data}/meta.json not found; run `dvc repro onehot@tinyshakespeare` first")
    gpu = a.device == "cuda"
    sets = [f"preset={'gpu' if gpu else 'cpu'}", f"train.cell={a.cell}", f"train.accelerator={'gpu' if gpu else 'cpu'}"]
    if a.quick:
        sets += ["train.hidden=32", "train.layers=2", "train.batch_size=8", "train.seq_len=32"]
        a.steps = 10
    cfg = load_params(ROOT / "params.yaml", parse_sets(sets)).train.to_fit()
    cfg["precision"] = resolve_precision(cfg["precision"], cfg["accelerator"])
    warm = max(1, min(10, a.steps // 2))
    cfg.update(max_steps=a.steps, max_seconds=None, val_every=a.steps, progress_every=0, eval_batch=16 if a.quick else 64)
    res = {"device": a.device, "cell": a.cell, "steps": a.steps, "runs": {}}
    before = os.environ.get("LSTM_GRAPH")
    try:
        for graph in ("0", "1"):
            os.environ["LSTM_GRAPH"] = graph
            timer = StepTimer(warm, a.steps - warm, a.device)
            r = fit(cfg, a.data, None, callbacks=[timer])
            chars = (a.steps - warm) * cfg["batch_size"] * cfg["seq_len"] / (timer.t1 - timer.t0)
            res["runs"][graph] = {"chars_per_s": round(chars), "val_loss": round(float(r["best_val_loss"]), 5)}
    finally:
        if before is None:
            os.environ.pop("LSTM_GRAPH", None)
        else:
            os.environ["LSTM_GRAPH"] = before
    off, on = res["runs"]["0"], res["runs"]["1"]
    res["speedup"] = round(on["chars_per_s"] / off["chars_per_s"], 3)
    res["val_loss_difference"] = round(on["val_loss"] - off["val_loss"], 5)
    save(f"graph_fit_{a.device}.json", res)
    shape = f"{cfg['layers']}x{cfg['hidden']} B{cfg['batch_size']} T{cfg['seq_len']}, {cfg['precision']}"
    print(f"| {a.cell} {shape}, {a.steps} training steps, {a.device} | chars/s (steps {warm + 1}-{a.steps}) | val_loss at the end |")
    print("|---|---:|---:|")
    print(f"| eager (LSTM_GRAPH=0) | {off['chars_per_s']:,} | {off['val_loss']:.5f} |")
    print(f"| CUDA graphs (LSTM_GRAPH=1) | {on['chars_per_s']:,} ({res['speedup']:.2f}x) | {on['val_loss']:.5f} ({res['val_loss_difference']:+.5f}) |")


if __name__ == "__main__":
    main()
