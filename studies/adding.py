"""The adding problem (Hochreiter & Schmidhuber 1997, experiment 4) and a regressor for it.

Each sequence has a random length L in [T, T + T/10]. Step t carries two numbers: a value
X_t ~ U(-1, 1) and a marker. Exactly two steps in the first half are marked (1.0); the
target, read at the last step, is 0.5 + (X_a + X_b) / 4. The sequence is "solved" when the
absolute error is below 0.04. A network must carry two numbers over up to T steps while
ignoring everything else: a direct test of long-term memory and of vanishing gradients.

Chance level. The best constant answer is 0.5 (the target's mean and median). Its error is
|S| / 4 with S = X_a + X_b, whose density on [-2, 2] is the triangle f(s) = (2 - |s|) / 4.
So its MSE is Var(S) / 16 = (2/3) / 16 = 1/24 = 0.0417, and it solves a sequence when
|S| < a = 4 * 0.04 = 0.16, with probability 2 * int_0^a (2 - s) / 4 ds = a - a^2 / 4 = 0.1536
(CHANCE_ACCURACY): a model at about 15% has learned nothing about the marked numbers.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lightning_modules.cells import FUSED
from lightning_modules.recurrent import RecurrentStack

SOLVED = 0.04
# Random streams. torch's CPU generator keeps only the low 32 bits of a seed (2**32 + s draws what
# s draws), and seeds s and s + 1 used for two purposes (weights, batches) share numbers. So each
# use of a run's seed gets a 32-bit seed of its own from numpy's SeedSequence, a hash of
# (seed, use): a training's initial weights, its batches, the test set and the gradient probe
# draw numbers no other seed or use draws (but by a 1-in-2**32 chance).
WEIGHTS, BATCHES, TEST, PROBE = range(4)


def stream(seed: int, use: int) -> int:
    """The 32-bit seed for one use (WEIGHTS, BATCHES, TEST, PROBE) of a run's seed (>= 0)."""
    if seed < 0:
        raise ValueError(f"adding: seed must be >= 0, got {seed}")
    return int(np.random.SeedSequence([seed, use]).generate_state(1)[0])


TEST_SEED = stream(0, TEST)
PROBE_SEED = stream(0, PROBE)
_A = 4 * SOLVED  # |X_a + X_b| below which the constant 0.5 is within SOLVED of the target
CHANCE_ACCURACY = _A - _A**2 / 4  # P(|X_a + X_b| < a) for X ~ U(-1, 1): 0.1536
CHANCE_MSE = 1 / 24  # Var(X_a + X_b) / 16


def adding_batch(batch: int, T: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (batch, L, 2), y (batch,), with one length L in [T, T + T/10] for the whole batch."""
    L = T + int(torch.randint(0, T // 10 + 1, (1,), generator=generator))
    values = torch.rand(batch, L, generator=generator) * 2 - 1
    marks = torch.zeros(batch, L)
    half = max(2, L // 2)
    a = torch.randint(0, half, (batch,), generator=generator)
    b = (a + 1 + torch.randint(0, half - 1, (batch,), generator=generator)) % half  # b != a
    rows = torch.arange(batch)
    marks[rows, a] = 1.0
    marks[rows, b] = 1.0
    y = 0.5 + (values[rows, a] + values[rows, b]) / 4
    return torch.stack([values, marks], -1), y


class Regressor(nn.Module):
    """Recurrent layer(s) -> linear read-out of the last step.

    forget_bias: the LSTM forget gate's bias starts here (1.0, as Gers et al. 2000 and
    Jozefowicz et al. 2015 advise) so that the cell remembers by default; without it the
    LSTM sat on the constant-guess plateau for thousands of steps in our runs.
    """

    def __init__(self, cell: str, hidden: int, layers: int = 1, forget_bias: float = 1.0):
        super().__init__()
        self.rnn = RecurrentStack(cell, 2, hidden, layers, fused=cell in FUSED)
        self.out = nn.Linear(hidden, 1)
        if cell == "lstm" and self.rnn.fused:
            with torch.no_grad():
                for k in range(layers):
                    getattr(self.rnn.rnn, f"bias_ih_l{k}")[hidden : 2 * hidden].fill_(forget_bias)
                    getattr(self.rnn.rnn, f"bias_hh_l{k}")[hidden : 2 * hidden].zero_()

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.out(y[:, -1]).squeeze(-1)


def n_params(cell: str, hidden: int) -> int:
    return sum(p.numel() for p in Regressor(cell, hidden).parameters())


HIDDEN_RANGE = range(2, 1024)


def hidden_for(cell: str, budget: int) -> int:
    """The hidden size in HIDDEN_RANGE whose parameter count comes closest to `budget`
    (same-size comparison; on a tie the smaller).

    The count grows strictly with the hidden size (it is a quadratic in H with positive
    coefficients), so a bisection finds the first size whose count reaches the budget, and
    the answer is it or the size before: about 10 models built, not 1,000.
    """
    lo, hi = HIDDEN_RANGE.start, HIDDEN_RANGE.stop - 1
    if n_params(cell, hi) < budget:
        return hi
    while lo < hi:  # the first h with n_params(cell, h) >= budget
        mid = (lo + hi) // 2
        if n_params(cell, mid) >= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo > HIDDEN_RANGE.start and budget - n_params(cell, lo - 1) <= n_params(cell, lo) - budget:
        return lo - 1
    return lo


def initial_model(cell: str, hidden: int, seed: int) -> Regressor:
    """The weights a training from `seed` starts from (the gradient-at-init curves use them too)."""
    torch.manual_seed(stream(seed, WEIGHTS))
    return Regressor(cell, hidden)


def train_adding(cell: str, hidden: int, T: int, steps: int, batch: int, lr: float, seed: int, clip: float = 1.0):
    """Adam with a cosine schedule down to 0.1 lr and gradient clipping; weights and batches
    from streams of their own (`stream`)."""
    model = initial_model(cell, hidden, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))) * 0.9 + 0.1)
    g = torch.Generator().manual_seed(stream(seed, BATCHES))
    for _ in range(steps):
        x, y = adding_batch(batch, T, g)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
    return model


@torch.no_grad()
def test_adding(model: Regressor, T: int, n: int = 2000, seed: int = TEST_SEED, batch: int = 500) -> dict:
    """Test MSE and the share solved over exactly `n` fresh sequences, drawn in batches of
    `batch` (the last one smaller when `n` is not a multiple)."""
    if n < 1:
        raise ValueError(f"test_adding: n must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    errs = []
    for start in range(0, n, batch):
        x, y = adding_batch(min(batch, n - start), T, g)
        errs.append(model(x) - y)
    e = torch.cat(errs)
    return {"test_mse": float((e**2).mean()), "accuracy": float((e.abs() < SOLVED).float().mean())}


def gradient_by_lag(model: Regressor, T: int, batches: int = 4, batch: int = 64, seed: int = PROBE_SEED) -> torch.Tensor:
    """Mean over sequences of ||dL_T / dx_t|| for t = 0..T-1, L_T the squared error at the last step."""
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(T)
    for _ in range(batches):
        x, _ = adding_batch(batch, T, g)  # length in [T, 1.1 T], both marks in the first half ...
        x = x[:, :T].clone().requires_grad_(True)  # ... cut to exactly T steps
        y = 0.5 + (x[:, :, 0] * x[:, :, 1]).sum(1).detach() / 4
        loss = ((model(x) - y) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, x)
        total += grad.norm(dim=-1).mean(0)
    return total / batches
