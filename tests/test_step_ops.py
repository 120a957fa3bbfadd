"""The project's training step against the plain loop, op by op (issue 6, target 2).

On a GPU every ATen compute op of a step is a kernel and every `.item()` a host-device sync,
so two loops that issue the same compute ops and syncs differ only by the host's Python,
which the GPU hides behind its queue. Here the CPU profiler counts the ATen calls of 10
training steps of each loop (the same model, optimizer, clipping and batch; fp32, and bf16
autocast as on a GPU): the project's (Lightning Trainer, DataModule, schedule, logging) may
add only ops that launch nothing.
"""
from __future__ import annotations

import collections
import json

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.profiler import ProfilerActivity, profile

from lightning_modules.data import load_split
from lightning_modules.lm import CharRNN
from lightning_modules.train import fit

# views, no-op casts and allocations: no kernel, no sync
NO_KERNEL = {
    "aten::detach", "aten::to", "aten::slice", "aten::as_strided", "aten::view", "aten::reshape", "aten::unsqueeze",
    "aten::select", "aten::t", "aten::transpose", "aten::expand", "aten::alias", "aten::_unsafe_view", "aten::lift_fresh",
    "aten::empty", "aten::empty_strided", "aten::resolve_conj", "aten::resolve_neg", "aten::unbind", "aten::squeeze",
}
CFG = dict(hidden=32, layers=2, batch_size=8, seq_len=16, dropout=0.0, lr=3e-3, weight_decay=0.01, clip=1.0, warmup_steps=0,
           max_steps=20, val_every=10**9, progress_every=0, log_every=50, accelerator="cpu")


def _count(prof) -> collections.Counter:
    return collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::"))


def _plain_ops(data, vocab: int, bf16: bool) -> collections.Counter:
    """The hand-written loop of bench/train_step.py, with the module's CPU optimizer settings
    (bf16: autocast over forward and loss, Lightning's bf16-mixed scope)."""
    torch.manual_seed(0)
    B, T = CFG["batch_size"], CFG["seq_len"]
    m = CharRNN(vocab, "lstm", CFG["hidden"], CFG["layers"], 0.0)
    opt = torch.optim.AdamW(m.parameters(), CFG["lr"], betas=(0.9, 0.99), weight_decay=CFG["weight_decay"], fused=True)
    ar = torch.arange(T + 1)

    def step():
        ix = torch.randint(len(data) - T - 1, (B,))
        w = data[ix[:, None] + ar].long()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits, _ = m(w[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab).float(), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), CFG["clip"])
        opt.step()

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(10):
            step()
    return _count(p)


class _Profile(Callback):
    """Profiles from the end of step 5 to the end of step 15: 10 batches and 10 steps."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 5:
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.__enter__()
        elif trainer.global_step == 15:
            self.prof.__exit__(None, None, None)
            self.ops = _count(self.prof)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_project_step_issues_the_plain_loops_compute_and_syncs(corpus, precision):
    vocab = json.loads((corpus / "meta.json").read_text())["vocab_size"]
    plain = _plain_ops(load_split(corpus, "train"), vocab, precision == "bf16-mixed")
    cb = _Profile()
    fit(dict(CFG, precision=precision), corpus, None, callbacks=[cb])
    project = cb.ops
    assert plain["aten::lstm"] == project["aten::lstm"] == 10  # the windows hold 10 steps each
    extra = {op: project[op] - plain[op] for op in project if project[op] > plain[op] and op not in NO_KERNEL}
    assert not extra, f"ops the project's step adds to the plain loop's (per 10 steps): {extra}"
    syncs = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")
    assert all(project[s] == plain[s] for s in syncs), {s: (project[s], plain[s]) for s in syncs}
