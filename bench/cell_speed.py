"""Benchmark: equation-form cells against the fused LSTM kernel, one layer, forward + backward.

    python bench/cell_speed.py                  # CPU: H256 B32 T128, fp32, vs torch.nn.LSTM (oneDNN)
    python bench/cell_speed.py --device cuda    # GPU: H512 B128 T128, fp32 (TF32) and bf16, vs cuDNN
    python bench/cell_speed.py --quick          # a couple of repetitions, to check the script

Rows: every LSTM variant of `lightning_modules/cells.py` run the way the project runs it
(whole sequence, hand-written BPTT: `lightning_modules/lstm_seq.py`; its gate arithmetic is
one kernel per step: on a GPU Triton, `lightning_modules/lstm_triton.py`, on the CPU compiled
C, `lightning_modules/lstm_cpu.py`, and rows with LSTM_TRITON=0 / LSTM_CPU_KERNEL=0 show the
torch-op loop each replaces; rows with LSTM_GRAPH=1 replay each call
as a CUDA graph, `lightning_modules/lstm_graph.py`; bf16 rows run under autocast against
cuDNN under autocast), the same LSTM as the autograd loop it replaced (`LSTMCell.loop`, one
step at a time), and the slide's GRU (hand-written BPTT, `lightning_modules/gru_seq.py`, torch
ops on every device, and the autograd loop it replaced). Throughput in characters (B x T
positions) per second and the ratio to the fused kernel of the same precision, measured in
the same run; measurements alternate and the best of `--rounds` counts. A path that fails
is reported (FAILED ...) and the others still measured. Each path is also checked against
the autograd loop on this device (max |diff| of outputs and gradients). FGR's 3H x 3H gate
matrix adds 9H^2 multiply-adds per step to the LSTM's 8H^2 (input and recurrent): about
2.1x the arithmetic, so its ratio is lower by construction.
Writes bench/out/cell_speed_<device>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.out_json import save  # noqa: E402

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
    state = (torch.zeros(B, H, device=device), torch.zeros(B, H, device=device))[: 2 if layer.has_cell else 1]
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


def throughput(cell: str, fused: bool, H: int, B: int, T: int, reps: int, device: str, loop: bool = False,
               bf16: bool = False) -> float:
    torch.manual_seed(0)
    stack = RecurrentStack(cell, H, H, 1, fused=fused).to(device)
    if loop:
        for layer in stack.layers:
            layer.forward = layer.loop
    x = torch.randn(B, T, H, device=device, requires_grad=True)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            y = stack(x)[0]
        y.float().sum().backward()

    for _ in range(2):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        step()
    sync(device)
    return B * T * reps / (time.perf_counter() - t)


TRITON_OFF, GRAPH_ON, CPU_OFF = {"LSTM_TRITON": "0"}, {"LSTM_GRAPH": "1"}, {"LSTM_CPU_KERNEL": "0"}


def rows_for(gpu: bool) -> list[tuple]:
    """(label, cell, fused kernel?, autograd loop?, environment, bf16 autocast?)"""
    rows = [("lstm (torch.nn.LSTM, fused)", "lstm", True, False, {}, False),
            ("lstm, autograd loop (before)", "lstm", False, True, {}, False)]
    if gpu:
        rows.append(("lstm, hand-written BPTT, torch ops (LSTM_TRITON=0)", "lstm", False, False, TRITON_OFF, False))
    else:
        rows += [(f"{c}, hand-written BPTT, torch ops (LSTM_CPU_KERNEL=0)", c, False, False, CPU_OFF, False)
                 for c in ("lstm", "lstm-v", "lstm-fgr")]
    rows += [(f"{c}, hand-written BPTT", c, False, False, {}, False) for c in LSTM_NAMES]
    if gpu:
        rows += [(f"{c}, + CUDA graph (LSTM_GRAPH=1)", c, False, False, GRAPH_ON, False) for c in ("lstm", "lstm-v", "lstm-fgr")]
        rows += [("lstm (torch.nn.LSTM, fused), bf16 autocast", "lstm", True, False, {}, True),
                 ("lstm-v, hand-written BPTT, bf16 autocast", "lstm-v", False, False, {}, True),
                 ("lstm-v, + CUDA graph, bf16 autocast", "lstm-v", False, False, GRAPH_ON, True)]
    rows += [("gru-lecture, hand-written BPTT", "gru-lecture", False, False, {}, False),
             ("gru-lecture, autograd loop (before)", "gru-lecture", False, True, {}, False)]
    return rows


def cpu_kernel_state() -> str:
    """Which path the CPU's hand-written-BPTT rows took: the compiled C kernels or the torch ops."""
    from lightning_modules import lstm_cpu
    from lightning_modules.cells import LSTMCell

    ok = lstm_cpu.usable(torch.zeros(1), LSTMCell(4, 4, "lstm").layout())
    return "compiled C (lightning_modules/lstm_cpu.py)" if ok else "torch ops (no C compiler, or LSTM_CPU_KERNEL=0)"


def with_env(env: dict, fn, *args):
    old = {k: os.environ.get(k) for k in ("LSTM_TRITON", "LSTM_GRAPH", "LSTM_CPU_KERNEL")}
    os.environ.update({"LSTM_TRITON": "1", "LSTM_GRAPH": "0", "LSTM_CPU_KERNEL": "1", **env})
    try:
        return fn(*args)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    gpu = a.device == "cuda"
    torch.set_float32_matmul_precision("high")  # as training sets it: TF32 matmuls on a GPU, as cuDNN's LSTM uses
    H, B, T = (512, 128, 128) if gpu else (256, 32, 128)
    reps = 2 if a.quick else (20 if gpu else 5)
    rows = rows_for(gpu)
    best: dict[str, float] = {}
    errors: dict[str, str] = {}
    for _ in range(1 if a.quick else a.rounds):
        for label, cell, fused, loop, env, bf16 in rows:
            if label in errors:
                continue
            n = max(1, reps // 2) if loop else reps
            try:
                r = with_env(env, throughput, cell, fused, H, B, T, n, a.device, loop, bf16)
            except Exception as e:  # one failing path must not hide the other figures
                errors[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                continue
            best[label] = max(best.get(label, 0.0), r)
    checks = [(c, {}) for c in (*LSTM_NAMES, "gru-lecture", "gru")] + ([(c, GRAPH_ON) for c in ("lstm", "lstm-v", "lstm-fgr")] if gpu else [])
    diffs = {}
    for c, env in checks:
        key = c + (" (graph)" if env else "")
        try:
            diffs[key] = with_env(env, max_diff_to_loop, c, a.device)
        except Exception as e:
            errors[f"check {key}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    base = {False: best.get(rows[0][0], float("nan")), True: best.get("lstm (torch.nn.LSTM, fused), bf16 autocast", float("nan"))}
    res = {
        "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "shape": f"1 layer H{H} B{B} T{T}, forward+backward, fp32" + (" (GPU: TF32) and bf16 autocast" if gpu else ""),
        "fused_chars_per_s": round(base[False]),
        "cpu_gate_kernel": cpu_kernel_state(),
        "max_abs_diff_to_loop": {c: float(f"{d:.3g}") for c, d in diffs.items()},
        "rows": {label: {"chars_per_s": round(best[label]), "ratio_to_fused": round(best[label] / base[bf16], 3)}
                 for label, _, _, _, _, bf16 in rows if label in best},
        "errors": errors,
    }
    save(f"cell_speed_{a.device}.json", res)
    print(f"equation cells vs the fused LSTM (same precision), {res['shape']}, {res['device']}")
    if not gpu:
        print(f"CPU gate arithmetic: {res['cpu_gate_kernel']}")
    print("| cell | chars/s | / fused |\n|---|---:|---:|")
    for label, r in res["rows"].items():
        print(f"| {label} | {r['chars_per_s']:,} | {r['ratio_to_fused']:.3f}x |")
    print("same function as the autograd loop (max |diff|, outputs and gradients, H64 B4 T16): "
          + ", ".join(f"{c} {d:.1e}" for c, d in diffs.items()))
    for label, e in errors.items():
        print(f"FAILED {label}: {e}")


if __name__ == "__main__":
    main()
