"""Benchmark: the project's training step (CharLM in the Lightning Trainer, batches from the
DataModule) against a plain PyTorch loop on the same model and batch, in the same run.

    python bench/train_step.py                      # CPU: 2x256 LSTM, B32 T128, fp32
    python bench/train_step.py --device cuda        # GPU: 3x512 LSTM, B128 T128, bf16 autocast
    python bench/train_step.py --quick              # a few steps, to check the script
    python bench/train_step.py --precision auto     # CPU in `auto`'s precision (bf16 where the CPU
                                                    # computes it fast), + the fp32 plain loop for scale
    python bench/train_step.py --precision bf16-mixed  # CPU in bf16 whatever `auto` takes: is it faster here?

Prints a table; writes bench/out/train_step_<device>.json. The two loops alternate
`--rounds` times; the table gives the best of each and the ratio of every round, so the
run's own noise is in view. On a GPU, a last short run of the project's loop counts the
host-device synchronisations of its steps (torch.cuda.set_sync_debug_mode): a sync stalls
the CPU until the GPU has drained its queue, so it is the overhead a GPU does not hide.
A last pair of runs on a tiny model (1x16, B2 T8), where a step is mostly the host's Python,
gives the project's host time per step beyond the plain loop's (Lightning's hooks, the
schedule, the step-addressed batches). tests/test_step_ops.py checks that beyond it the two
loops issue the same ATen compute ops and syncs. The equation cells have their
own benchmark: bench/cell_speed.py.
Data: data/onehot/tinyshakespeare (run `dvc repro onehot@tinyshakespeare`).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.out_json import save  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from lightning_modules.data import load_split  # noqa: E402
from lightning_modules.lm import CharRNN  # noqa: E402
from lightning_modules.precision import resolve_precision  # noqa: E402
from lightning_modules.train import fit  # noqa: E402


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(data, V, H, L, B, T, steps, warm, device, bf16):
    """The anchor's loop: embedding + nn.LSTM + linear, AdamW, clip 1.0, random windows."""
    torch.manual_seed(0)
    m = CharRNN(V, "lstm", H, L, 0.0).to(device)
    opt = torch.optim.AdamW(m.parameters(), 3e-3, weight_decay=0.01, fused=True)  # as the module's
    data = data.to(device)
    ar = torch.arange(T + 1, device=device)

    def step():
        ix = torch.randint(len(data) - T - 1, (B,), device=device)
        w = data[ix[:, None] + ar].long()
        with torch.autocast(device, torch.bfloat16, enabled=bf16):
            logits, _ = m(w[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, V), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    for _ in range(warm):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return B * T * steps / (time.perf_counter() - t)


class StepTimer(Callback):
    """Times the training steps warm+1 .. warm+steps (the final validation stays outside)."""

    def __init__(self, warm, steps, device):
        self.warm, self.steps, self.device, self.t0, self.t1 = warm, steps, device, None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in (self.warm, self.warm + self.steps):
            sync(self.device)
            if trainer.global_step == self.warm:
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()


PROJECT = ROOT / "lightning_modules"  # the training step's own code


class SyncCounter(Callback):
    """Counts the synchronising CUDA calls of training steps warm+1 .. warm+steps, each at the
    innermost line of the project that led to it (torch.cuda.set_sync_debug_mode("warn")
    turns every one into a warning; a sync inside torch or Lightning is put on the project
    line that called into them, with the library line after it)."""

    def __init__(self, warm, steps, cuda):
        self.warm, self.steps, self.cuda, self.where, self._rec = warm, steps, cuda, collections.Counter(), None

    def _show(self, message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        ours = [f for f in traceback.extract_stack()[:-1] if Path(f.filename).resolve().is_relative_to(PROJECT)]
        lib = f"{Path(filename).name}:{lineno}"
        if ours:
            f = ours[-1]
            at = f"{Path(f.filename).resolve().relative_to(ROOT)}:{f.lineno}"
            self.where[at if at.endswith(lib) else f"{at} ({lib})"] += 1
        else:
            self.where[lib] += 1

    def _start(self):
        self._rec = warnings.catch_warnings()  # restores the filters and showwarning on exit
        self._rec.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._show
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn")

    def _stop(self):
        if self._rec is not None:
            if self.cuda:
                torch.cuda.set_sync_debug_mode("default")
            self._rec.__exit__(None, None, None)
            self._rec = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.warm:
            self._start()
        elif trainer.global_step == self.warm + self.steps:
            self._stop()

    def teardown(self, trainer, pl_module, stage):
        self._stop()  # a run that ended inside the window (an error) leaves no mode behind


def optimizer_ms(V, H, L, device, n=100) -> dict:
    """ms per AdamW step over the model's parameters: torch's default (a loop over tensors on a
    CPU, foreach on CUDA) against fused, the module's choice."""
    m = CharRNN(V, "lstm", H, L, 0.0).to(device)
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    out = {}
    for name, kw in (("default", {}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(m.parameters(), 3e-3, weight_decay=0.01, **kw)
        for _ in range(5):
            opt.step()
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            opt.step()
        sync(device)
        out[name] = round(1e3 * (time.perf_counter() - t) / n, 3)
    return out


def project_cfg(H, L, B, T, steps, warm, device, bf16):
    return dict(
        hidden=H, layers=L, dropout=0.0, batch_size=B, seq_len=T, max_steps=warm + steps, val_every=10**9,
        progress_every=0, accelerator="gpu" if device == "cuda" else "cpu", precision="bf16-mixed" if bf16 else "32-true",
        warmup_steps=0, log_every=50,
    )


def project_loop(data_dir, H, L, B, T, steps, warm, device, bf16):
    timer = StepTimer(warm, steps, device)
    fit(project_cfg(H, L, B, T, steps, warm, device, bf16), data_dir, None, callbacks=[timer])
    return B * T * steps / (timer.t1 - timer.t0)


def project_syncs(data_dir, H, L, B, T, steps, warm, device, bf16):
    """{python line: synchronising calls} over `steps` steps of the project's loop (on a CPU,
    where nothing is asynchronous, this only runs the counting path: --quick checks it)."""
    counter = SyncCounter(warm, steps, device == "cuda")
    fit(project_cfg(H, L, B, T, steps, warm, device, bf16), data_dir, None, callbacks=[counter])
    return dict(counter.where)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", default=str(ROOT / "data/onehot/tinyshakespeare"))
    ap.add_argument("--rounds", type=int, default=3, help="alternate plain/project this many times; best of each")
    ap.add_argument("--precision", choices=["32-true", "bf16-mixed", "auto"], default=None,
                    help="both loops' precision (default: bf16-mixed on cuda, 32-true on cpu; auto as in params.yaml)")
    a = ap.parse_args()
    gpu = a.device == "cuda"
    bf16 = gpu if a.precision is None else resolve_precision(a.precision, "gpu" if gpu else "cpu") == "bf16-mixed"
    fp32_too = bf16 and not gpu  # bf16 on a CPU: the fp32 plain loop alternates too, for the speed-up
    H, L, B, T = (512, 3, 128, 128) if gpu else (256, 2, 32, 128)
    steps, warm = (5, 2) if a.quick else ((200, 20) if gpu else (40, 5))
    if not (Path(a.data) / "meta.json").exists():
        sys.exit(f"error: {a.data}/meta.json not found; run `dvc repro onehot@tinyshakespeare` first")
    meta = json.loads((Path(a.data) / "meta.json").read_text())
    data = load_split(a.data, "train")
    plain, project, plain32 = [], [], []
    for _ in range(1 if a.quick else a.rounds):
        if fp32_too:
            plain32.append(plain_loop(data, meta["vocab_size"], H, L, B, T, steps, warm, a.device, False))
        plain.append(plain_loop(data, meta["vocab_size"], H, L, B, T, steps, warm, a.device, bf16))
        project.append(project_loop(a.data, H, L, B, T, steps, warm, a.device, bf16))
    # 100 steps: two of them log (log_every 50), so the logging steps' syncs show too
    syncs = project_syncs(a.data, H, L, B, T, 100 if gpu else 5, warm, a.device, bf16) if gpu or a.quick else None
    # the host's time per step: a tiny model, where a step is mostly Python and launches
    n_tiny = 50 if a.quick else 400
    chars = 2 * 8  # per step; the loops return chars/s
    tiny = [(chars / plain_loop(data, meta["vocab_size"], 16, 1, 2, 8, n_tiny, 20, a.device, bf16),
             chars / project_loop(a.data, 16, 1, 2, 8, n_tiny, 20, a.device, bf16)) for _ in range(1 if a.quick else 3)]
    ms_plain, ms_project = (1e3 * min(t[i] for t in tiny) for i in (0, 1))
    opt_ms = optimizer_ms(meta["vocab_size"], H, L, a.device, 10 if a.quick else 100)
    res = {
        "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "model": f"{L}x{H} LSTM, B{B} T{T}" + (", bf16" if bf16 else ", fp32"),
        "plain_chars_per_s": round(max(plain)),
        "project_chars_per_s": round(max(project)),
        "ratio_project_to_plain": round(max(project) / max(plain), 3),
        "ratio_per_round": [round(p / q, 3) for p, q in zip(project, plain)],
        "host_syncs": syncs,
        "tiny_model_ms_per_step": {"plain": round(ms_plain, 3), "project": round(ms_project, 3)},
        "adamw_ms_per_step": opt_ms,
    }
    if plain32:
        res["plain_fp32_chars_per_s"] = round(max(plain32))
        res["ratio_project_to_plain_fp32"] = round(max(project) / max(plain32), 3)
    save(f"train_step_{a.device}{'_bf16' if bf16 and not gpu else ''}.json", res)
    print("| measure | value |\n|---|---|")
    print(f"| device | {res['device']} |")
    print(f"| plain PyTorch loop, {res['model']} | {res['plain_chars_per_s']:,} chars/s |")
    print(f"| project (CharLM in Lightning Trainer + DataModule) | {res['project_chars_per_s']:,} chars/s ({res['ratio_project_to_plain']:.3f}x the plain loop) |")
    print(f"| ratio in each round (project / plain) | {', '.join(f'{r:.3f}x' for r in res['ratio_per_round'])} |")
    print(f"| host time per step beyond the plain loop's (1x16 LSTM, B2 T8: a step is mostly Python) | "
          f"{ms_project - ms_plain:+.3f} ms ({ms_project:.3f} against {ms_plain:.3f} ms per step, best of {len(tiny)}) |")
    print(f"| AdamW step over the model's parameters: fused (both loops) against torch's default | "
          f"{opt_ms['fused']:.3f} against {opt_ms['default']:.3f} ms |")
    if plain32:
        print(f"| the plain loop in fp32, same rounds | {res['plain_fp32_chars_per_s']:,} chars/s: the project in bf16 runs "
              f"{res['ratio_project_to_plain_fp32']:.3f}x it |")
    if syncs is not None:
        where = ", ".join(f"{k} x{v}" for k, v in sorted(syncs.items(), key=lambda kv: -kv[1])) or "none"
        print(f"| host-device syncs in {100 if gpu else 5} project steps (log_every 50) | {sum(syncs.values())}: {where} |")


if __name__ == "__main__":
    main()
