"""Polyphonic music prediction on JSB Chorales: next frame of an 88-key piano roll.

    p(key k sounds at t+1 | frames <= t) = sigma(W_out h_t + b)_k      (88 independent sigmoids)
    NLL per time step = - sum_k [v log p + (1 - v) log(1 - p)], averaged over predicted frames

The metric of Boulanger-Lewandowski et al. 2012 and Chung et al. 2014 (test NLL: tanh RNN
9.10, GRU 8.54, LSTM 8.67 with about 20k parameters). Each chorale is a sequence; batches
are chorales of similar length, padded and masked. Training: Adam, gradient-norm clipping,
early stopping on the validation NLL (the best weights are kept).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.cells import FUSED
from lightning_modules.recurrent import RecurrentStack

KEYS = 88


def load_chorales(data_dir: str | Path) -> dict[str, list[torch.Tensor]]:
    """{"train","val","test"} -> list of (frames, 88) float tensors, one per chorale."""
    data_dir = Path(data_dir)
    meta = json.loads((data_dir / "meta.json").read_text())
    out = {}
    for split, info in meta["splits"].items():
        roll = torch.from_numpy(np.load(data_dir / f"{split}.npy").astype(np.float32))
        out[split] = list(torch.split(roll, info["lengths"]))
    return out


def batches(chorales: list[torch.Tensor], batch: int, shuffle: torch.Generator | None = None):
    """(x, y, mask) batches of chorales sorted by length; x, y (B, T, 88), mask (B, T)."""
    order = sorted(range(len(chorales)), key=lambda i: len(chorales[i]))
    groups = [order[i : i + batch] for i in range(0, len(order), batch)]
    if shuffle is not None:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=shuffle).tolist()]
    for g in groups:
        T = max(len(chorales[i]) for i in g) - 1
        x = torch.zeros(len(g), T, KEYS)
        y = torch.zeros(len(g), T, KEYS)
        mask = torch.zeros(len(g), T)
        for j, i in enumerate(g):
            c = chorales[i]
            x[j, : len(c) - 1], y[j, : len(c) - 1], mask[j, : len(c) - 1] = c[:-1], c[1:], 1
        yield x, y, mask


class PianoRollRNN(nn.Module):
    def __init__(self, cell: str, hidden: int, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.rnn = RecurrentStack(cell, KEYS, hidden, layers, dropout, fused=cell in FUSED)
        self.out = nn.Linear(hidden, KEYS)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


def nll_sum(model: nn.Module, x, y, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over frames of the per-frame NLL, number of frames)."""
    bce = F.binary_cross_entropy_with_logits(model(x), y, reduction="none").sum(-1)
    return (bce * mask).sum(), mask.sum()


@torch.no_grad()
def evaluate(model: nn.Module, chorales: list[torch.Tensor], batch: int = 64) -> float:
    model.eval()
    tot, n = 0.0, 0.0
    for x, y, m in batches(chorales, batch):
        s, k = nll_sum(model, x, y, m)
        tot, n = tot + float(s), n + float(k)
    model.train()
    return tot / n


def n_params(cell: str, hidden: int) -> int:
    return sum(p.numel() for p in PianoRollRNN(cell, hidden).parameters())


def train_music(data, cell: str, hidden: int, lr: float, seed: int, max_epochs: int = 100, patience: int = 10,
                batch: int = 16, clip: float = 1.0) -> dict:
    """Train with early stopping on val NLL; return val/test NLL of the best epoch and the curve."""
    torch.manual_seed(seed)
    model = PianoRollRNN(cell, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    best, best_state, since, curve = math.inf, None, 0, []
    for epoch in range(max_epochs):
        for x, y, m in batches(data["train"], batch, shuffle=g):
            s, k = nll_sum(model, x, y, m)
            opt.zero_grad(set_to_none=True)
            (s / k).backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        v = evaluate(model, data["val"])
        curve.append(v)
        if not math.isfinite(v):
            break
        if v < best - 1e-4:
            best, since = v, 0
            best_state = {k: t.clone() for k, t in model.state_dict().items()}
        else:
            since += 1
            if since >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"val_nll": best, "test_nll": evaluate(model, data["test"]) if best_state is not None else math.inf,
            "epochs": len(curve), "params": sum(p.numel() for p in model.parameters()), "curve": curve}
