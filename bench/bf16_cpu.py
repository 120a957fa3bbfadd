"""Benchmark: is bf16 faster than fp32 on this CPU, and what does `precision: auto` take here?

    python bench/bf16_cpu.py            # a few seconds

`precision: auto` is a rule of the hardware (lightning_modules/precision.py: bf16 with AMX,
or with AVX512-BF16 on AMD), so that a run is deterministic on its CPU. This script times
what the rule stands for, in one run: a matmul of the 2x256 LSTM's sizes (4096x256 by
256x1024, one layer's input projection for B32 T128) and torch.nn.LSTM forward+backward
(2x256, B32 T128), each in fp32 and in bf16 (the matmul on bf16 tensors, the LSTM under
bf16 autocast as bf16-mixed runs it), best of `--repeats`. A bf16/fp32 time ratio below 1
means bf16 is faster here. Writes bench/out/bf16_cpu.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.out_json import save  # noqa: E402

import torch  # noqa: E402

from lightning_modules.precision import cpu_bf16_kernels, cpu_model, cpu_vendor, resolve_precision  # noqa: E402


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN prepares its kernels on the first call
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    x, w = torch.randn(4096, 256), torch.randn(1024, 256)
    xb, wb = x.bfloat16(), w.bfloat16()
    lstm, seq = torch.nn.LSTM(256, 256, 2, batch_first=True), torch.randn(32, 128, 256)

    def lstm_step(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y, _ = lstm(seq)
        y.float().sum().backward()

    rows = {
        "matmul 4096x256 @ 256x1024": (best_ms(lambda: torch.nn.functional.linear(x, w), a.repeats),
                                       best_ms(lambda: torch.nn.functional.linear(xb, wb), a.repeats)),
        "nn.LSTM 2x256 B32 T128 fwd+bwd": (best_ms(lambda: lstm_step(False), max(3, a.repeats // 3)),
                                           best_ms(lambda: lstm_step(True), max(3, a.repeats // 3))),
    }
    res = {"cpu": cpu_model(), "vendor": cpu_vendor(), "bf16_kernels": cpu_bf16_kernels(), "threads": torch.get_num_threads(),
           "auto_takes": resolve_precision("auto", "cpu"),
           "rows": {k: {"fp32_ms": round(f, 3), "bf16_ms": round(b, 3), "bf16_over_fp32": round(b / f, 3)} for k, (f, b) in rows.items()}}
    save("bf16_cpu.json", res)
    print(f"{res['cpu']} ({res['vendor']}), oneDNN bf16 kernels: {res['bf16_kernels']}, {res['threads']} threads")
    print("| what | fp32 ms | bf16 ms | bf16 / fp32 |")
    print("|---|---:|---:|---:|")
    for k, r in res["rows"].items():
        print(f"| {k} | {r['fp32_ms']:.2f} | {r['bf16_ms']:.2f} | {r['bf16_over_fp32']:.3f} |")
    print(f"`precision: auto` takes {res['auto_takes']} here")


if __name__ == "__main__":
    main()
