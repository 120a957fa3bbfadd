"""Benchmark: equation-form cells against the fused LSTM kernel, one layer, forward + backward.

    python bench/cell_speed.py                  # CPU: H256 B32 T128, fp32, vs torch.nn.LSTM (oneDNN)
    python bench/cell_speed.py --device cuda    # GPU: H512 B128 T128, fp32/tf32, vs cuDNN
    python bench/cell_speed.py --quick          # a couple of repetitions, to check the script

Rows: every LSTM variant of `lightning_modules/cells.py` run the way the project runs it
(whole sequence, hand-written BPTT: `lightning_modules/lstm_seq.py`; on a GPU its gate
arithmetic is one Triton kernel per step, `lightning_modules/lstm_triton.py`, and a row with
LSTM_TRITON=0 shows the torch-op loop it replaces), the same LSTM as the
autograd loop it replaced (`LSTMCell.loop`, one step at a time), and the slide's GRU
(autograd loop). Throughput in characters (B x T positions) per second and the ratio to the
fused kernel measured in the same run; measurements alternate and the best of `--rounds`
counts. FGR has 2.25x the LSTM's recurrent multiply-adds (its 3H x 3H gate matrix), so its
ratio is lower by construction. Writes bench/out/cell_speed_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lightning_modules.names import LSTM_NAMES  # noqa: E402
from lightning_modules.recurrent import RecurrentStack  # noqa: E402


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def max_diff_to_loop(cell: str, device: str, H: int = 64, B: int = 4, T: int = 16) -> float:
    """Largest |difference| between the whole-sequence path and the autograd loop (outputs and
    every parameter's gradient), on this device."""
    torch.manual_seed(0)
    layer = RecurrentStack(cell, H, H, 1, fused=False).to(device).layers[0]
    x = torch.randn(B, T, H, device=device)
    state = (torch.zeros(B, H, device=device), torch.zeros(B, H, device=device))
    worst = 0.0
    grads = []
    for run in (layer.forward, layer.loop):
        layer.zero_grad()
        y, _ = run(x, state)
        (y * torch.linspace(-1, 1, H, device=device)).sum().backward()
        grads.append([y.detach()] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        worst = max(worst, (a - b).abs().max().item())
    return worst


def throughput(cell: str, fused: bool, H: int, B: int, T: int, reps: int, device: str, loop: bool = False) -> float:
    torch.manual_seed(0)
    stack = RecurrentStack(cell, H, H, 1, fused=fused).to(device)
    if loop:
        for layer in stack.layers:
            layer.forward = layer.loop
    x = torch.randn(B, T, H, device=device, requires_grad=True)
    for _ in range(2):
        stack(x)[0].sum().backward()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        stack(x)[0].sum().backward()
    sync(device)
    return B * T * reps / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    gpu = a.device == "cuda"
    H, B, T = (512, 128, 128) if gpu else (256, 32, 128)
    reps = 2 if a.quick else (20 if gpu else 5)
    rows = [("lstm (torch.nn.LSTM, fused)", "lstm", True, False), ("lstm, autograd loop (before)", "lstm", False, True)]
    rows += [(f"{c}, hand-written BPTT", c, False, False) for c in LSTM_NAMES]
    if gpu:
        rows.insert(2, ("lstm, hand-written BPTT, torch ops (LSTM_TRITON=0)", "lstm", False, False))
    rows += [("gru-lecture, autograd loop", "gru-lecture", False, False)]
    best: dict[str, float] = {}
    for _ in range(1 if a.quick else a.rounds):
        for label, cell, fused, loop in rows:
            os.environ["LSTM_TRITON"] = "0" if "LSTM_TRITON=0" in label else "1"
            r = throughput(cell, fused, H, B, T, max(1, reps // 2) if loop or cell == "gru-lecture" else reps, a.device, loop)
            best[label] = max(best.get(label, 0.0), r)
    os.environ["LSTM_TRITON"] = "1"
    diffs = {c: max_diff_to_loop(c, a.device) for c in LSTM_NAMES}
    base = best[rows[0][0]]
    res = {
        "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "shape": f"1 layer H{H} B{B} T{T}, forward+backward, fp32",
        "fused_chars_per_s": round(base),
        "max_abs_diff_to_loop": {c: float(f"{d:.3g}") for c, d in diffs.items()},
        "rows": {label: {"chars_per_s": round(v), "ratio_to_fused": round(v / base, 3)} for label, v in best.items()},
    }
    out = ROOT / "bench/out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cell_speed_{a.device}.json").write_text(json.dumps(res, indent=1))
    print(f"equation cells vs the fused LSTM, {res['shape']}, {res['device']}")
    print("| cell | chars/s | / fused |\n|---|---:|---:|")
    for label, r in res["rows"].items():
        print(f"| {label} | {r['chars_per_s']:,} | {r['ratio_to_fused']:.3f}x |")
    print("same function as the autograd loop (max |diff|, outputs and gradients, H64 B4 T16): "
          + ", ".join(f"{c} {d:.1e}" for c, d in diffs.items()))


if __name__ == "__main__":
    main()
