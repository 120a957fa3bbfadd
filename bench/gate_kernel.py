"""Benchmark: the compiled C gate kernel of the equation LSTMs (lightning_modules/lstm_cpu.py)
alone, one time step forward and backward, on one thread against its rows split over
torch's threads, in the same run (the matmuls around it are left out: bench/cell_speed.py
times whole layers).

    python bench/gate_kernel.py            # lecture LSTM and Greff's V, a few (B, H)
    python bench/gate_kernel.py --quick    # fewer repetitions, to check the script

Prints a table of microseconds per step; writes bench/out/gate_kernel.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lightning_modules import lstm_cpu  # noqa: E402
from lightning_modules.cells import LSTMCell  # noqa: E402

SHAPES = [(8, 64), (32, 256), (128, 256), (128, 512)]  # (B, H)


def per_step_us(lib, lay, B: int, H: int, T: int, nt: int, reps: int) -> tuple[float, float]:
    """Mean microseconds of one fwd_step and one bwd_step call over T steps x reps (best of 3)."""
    G = len(lay.gate_names)
    torch.manual_seed(0)
    A, C = torch.randn(B, T, G * H), torch.randn(B, T + 1, H)
    Y, HC, dA = torch.empty(B, T, H), torch.empty(B, T, H), torch.empty(B, T, G * H)
    dh, dc = torch.randn(B, H), torch.randn(B, H)
    peep = torch.zeros(H)  # Greff's V reads its peepholes; the lecture LSTM ignores them
    p = [x.data_ptr() for x in (A, C, Y, HC, dA, dh, dc, peep)]
    A_, C_, Y_, HC_, dA_, dh_, dc_, pp = p
    best_f = best_b = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            for t in range(T):
                lib.fwd_step(A_, C_, Y_, HC_, None, None, pp, pp, pp, t, T, H, B, nt)
        t1 = time.perf_counter()
        for _ in range(reps):
            for t in range(T - 1, -1, -1):
                lib.bwd_step(A_, C_, HC_, dA_, None, dh_, dc_, None, pp, pp, pp, t, T, H, B, nt)
        t2 = time.perf_counter()
        best_f, best_b = min(best_f, (t1 - t0) / (reps * T)), min(best_b, (t2 - t1) / (reps * T))
    return best_f * 1e6, best_b * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    reps, T = (1, 8) if a.quick else (5, 64)
    rows = []
    for cell in ("lstm", "lstm-v"):
        lay = LSTMCell(4, 4, cell).layout()
        lib = lstm_cpu.library(lay)
        if lib is None:
            sys.exit("error: the C kernel could not be built (no C compiler?); see the warning above")
        for B, H in SHAPES:
            lay_h = LSTMCell(4, H, cell).layout()
            nt = lstm_cpu.threads(B, H)
            one = per_step_us(lib, lay_h, B, H, T, 1, reps)
            split = per_step_us(lib, lay_h, B, H, T, nt, reps) if nt > 1 else one
            rows.append({"cell": cell, "B": B, "H": H, "threads": nt, "fwd_us_1": round(one[0], 1),
                         "bwd_us_1": round(one[1], 1), "fwd_us": round(split[0], 1), "bwd_us": round(split[1], 1),
                         "speedup": round((one[0] + one[1]) / (split[0] + split[1]), 2)})
    res = {"cpu": f"{torch.get_num_threads()} torch threads", "openmp": lstm_cpu.multithreaded(lay), "rows": rows}
    out = ROOT / "bench/out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate_kernel.json").write_text(json.dumps(res, indent=1))
    print(f"C gate kernel per time step, {res['cpu']}, OpenMP {'on' if res['openmp'] else 'off (one thread)'}")
    print("| cell | B | H | threads | fwd us (1 thread) | bwd us (1 thread) | fwd us | bwd us | fwd+bwd speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cell']} | {r['B']} | {r['H']} | {r['threads']} | {r['fwd_us_1']} | {r['bwd_us_1']} | "
              f"{r['fwd_us']} | {r['bwd_us']} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
