"""Benchmark: sampling speed, characters per second, batch 1 and 256 streams.

    python bench/sample_speed.py                  # CPU, 2x256 LSTM (the cpu preset's size)
    python bench/sample_speed.py --device cuda    # GPU, 3x512 LSTM (the lecture's)

Baseline in the same run: every step through the model's own forward (one call of
torch.nn.LSTM per token). On a CPU a second baseline runs that loop with oneDNN off
(`torch.backends.mkldnn.flags(enabled=False)`): torch.nn.LSTM's oneDNN path sets up its
primitive on every call, which at batch 1 costs most of a token's time, so the plain loop
at its fastest is the one without it. Project: `sample_ids`'s default path. CPU: `FastStep` up to 32
streams (cell equations on the fused weights, the first layer's input projection
precomputed per token). GPU: `FastStep` in chunks of 32 tokens, each chunk one CUDA graph
replay (`lightning_modules/sampling_graph.py`). A model keeps its captured graph for later
calls with the same settings: the warm-up call captures it, the timed call replays it; a
GPU row gives a first call, its capture timed in, and a last row the batch-1 rate beyond
each call's fixed costs (the prime, on a first call the capture).
Speed does not depend on the weights,
so a freshly initialised model of the right size is used. Writes bench/out/sample_<device>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.out_json import save  # noqa: E402

import torch  # noqa: E402

from lightning_modules.lm import CharRNN  # noqa: E402
from lightning_modules.sampling import FAST_MAX_STREAMS, sample_ids  # noqa: E402
from lightning_modules.sampling_graph import clear_cache  # noqa: E402


def seconds(model, n, length, fast, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    sample_ids(model, [1, 2, 3], length, n=n, seed=0, fast=fast)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def rate(model, n, length, fast, device, onednn=True):
    with warnings.catch_warnings(), torch.backends.mkldnn.flags(enabled=onednn):
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # the flags' own note, for Intel GPUs
        sample_ids(model, [1, 2, 3], 5, n=n, seed=0, fast=fast)  # warm-up
        return n * length / seconds(model, n, length, fast, device)


def marginal_rate(model, length, device):
    """Batch 1, the project's path: tokens per second beyond a call's fixed costs (prime,
    set-up, on a GPU the graph capture), from calls of `length` and 3 x `length` tokens."""
    short = min(seconds(model, 1, length, True, device) for _ in range(3))
    long = min(seconds(model, 1, 3 * length, True, device) for _ in range(3))
    return 2 * length / (long - short) if long > short else None  # None: lost in the noise


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--length", type=int, default=0, help="tokens per stream at batch 1 (default: 400 CPU, 2000 GPU)")
    a = ap.parse_args()
    H, L = (512, 3) if a.device == "cuda" else (256, 2)
    a.length = a.length or (2000 if a.device == "cuda" else 400)
    torch.manual_seed(0)
    model = CharRNN(65, "lstm", H, L).to(a.device).eval()
    res = {"device": torch.cuda.get_device_name(0) if a.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)", "model": f"{L}x{H} LSTM"}
    for n in (1, 256):
        length = a.length if n == 1 else max(50, a.length // 4)
        base = fast = plain = 0.0
        for _ in range(2):  # alternate, best of each: warm caches for all
            base = max(base, rate(model, n, length, False, a.device))
            fast = max(fast, rate(model, n, length, True, a.device))
            if a.device == "cpu":
                plain = max(plain, rate(model, n, length, False, a.device, onednn=False))
        res[f"batch{n}"] = {"eager_chars_per_s": round(base), "fast_chars_per_s": round(fast), "ratio": round(fast / base, 2),
                            "same_path": n > FAST_MAX_STREAMS and a.device == "cpu"}
        if plain:
            res[f"batch{n}"].update(eager_no_onednn_chars_per_s=round(plain), ratio_no_onednn=round(fast / plain, 2))
    if a.device == "cuda":  # a first call: the graph captured inside the timed call
        first = []
        for _ in range(3):
            clear_cache()
            first.append(a.length / seconds(model, 1, a.length, True, a.device))
        res["batch1"]["first_call_chars_per_s"] = round(max(first))
    m = marginal_rate(model, a.length, a.device)
    res["batch1"]["marginal_chars_per_s"] = round(m) if m else None
    save(f"sample_{a.device}.json", res)
    print("| sampling, " + res["model"] + ", " + res["device"] + " | eager (model forward per token) | project (FastStep; GPU: + CUDA graph per 32 tokens) | ratio |\n|---|---|---|---|")
    for n in (1, 256):
        r = res[f"batch{n}"]
        note = f" (above {FAST_MAX_STREAMS} streams both use the fused kernel)" if r["same_path"] else ""
        print(f"| {n} stream{'s' if n > 1 else ''} | {r['eager_chars_per_s']:,} chars/s | {r['fast_chars_per_s']:,} chars/s | {r['ratio']}x{note} |")
        if "eager_no_onednn_chars_per_s" in r:
            print(f"| {n} stream{'s' if n > 1 else ''}, the eager loop with oneDNN off | {r['eager_no_onednn_chars_per_s']:,} chars/s | "
                  f"{r['fast_chars_per_s']:,} chars/s | {r['ratio_no_onednn']}x |")
    if "first_call_chars_per_s" in res["batch1"]:
        print(f"| 1 stream, a first call (the graph's capture timed in) | | {res['batch1']['first_call_chars_per_s']:,} chars/s | |")
    print(f"| 1 stream, beyond a call's fixed costs (from {a.length} and {3 * a.length} tokens) | | "
          f"{(format(m, ',.0f') + ' chars/s') if m else 'not measurable (noise)'} | |")


if __name__ == "__main__":
    main()
