"""Slide 2's "stock-index prediction" on a synthetic index whose best forecast is known.

No market data can be fetched here, and on real prices the best forecast is unknown, so the
series is simulated: the index's daily return r_t follows an AR(1) whose coefficient
switches with a hidden market regime s_t (a Markov chain, Hamilton 1989):

    s_t = s_{t-1} with probability `stay`, else one of the other regimes (uniformly)
    r_t = phi[s_t] r_{t-1} + sigma eps_t,   eps_t ~ N(0, 1)
    index_t = index_0 + r_1 + ... + r_t

With phi = (-0.5, 0.7) the market alternates between mean-reverting and trending spells.
The best forecast of r_{t+1} from r_1..r_t is the regime filter's (`oracle`):

    p_t(s)   = P(s_t = s | r_1..r_t)                         (forward algorithm)
    E[r_{t+1} | r_1..r_t] = sum_s' (sum_s p_t(s) A[s, s']) phi[s'] r_t

A forecast must infer the regime from the recent returns: a recurrent network can keep
that in its state; a linear AR(p) forecast cannot (it averages the regimes), and the naive
forecast (tomorrow's index = today's: r = 0) uses nothing.
"""
from __future__ import annotations

import numpy as np


def transition(n_regimes: int, stay: float) -> np.ndarray:
    """A[s, s']: stay on the diagonal, the rest spread evenly over the other regimes."""
    if n_regimes == 1:
        return np.ones((1, 1))
    a = np.full((n_regimes, n_regimes), (1 - stay) / (n_regimes - 1))
    np.fill_diagonal(a, stay)
    return a


def simulate(n: int, length: int, phis, stay: float, sigma: float, rng: np.random.Generator):
    """n series of `length` returns -> (returns (n, length) float64, regimes (n, length) int)."""
    phis = np.asarray(phis, float)
    k = len(phis)
    s = rng.integers(0, k, n)
    r = sigma * rng.standard_normal(n)
    rets, regs = np.empty((n, length)), np.empty((n, length), np.int64)
    switch, shift, eps = rng.random((n, length)) >= stay, rng.integers(1, max(k, 2), (n, length)), rng.standard_normal((n, length))
    for t in range(length):
        if k > 1:
            s = np.where(switch[:, t], (s + shift[:, t]) % k, s)
        r = phis[s] * r + sigma * eps[:, t]
        rets[:, t], regs[:, t] = r, s
    return rets, regs


def oracle(rets: np.ndarray, phis, stay: float, sigma: float):
    """The regime filter's forecasts: pred[:, t] = E[r_{t+1} | r_..t] for t < length - 1,
    and P(s_t = s | r_..t) as (n, length, k)."""
    phis = np.asarray(phis, float)
    k = len(phis)
    a = transition(k, stay)
    n, length = rets.shape
    post = np.full((n, k), 1.0 / k)  # p_0: the chain's stationary law (uniform)
    prev = np.zeros(n)  # r_0's forecast uses no past: the first return counts as observed after r_{-1} = 0
    preds, posts = np.empty((n, length - 1)), np.empty((n, length, k))
    for t in range(length):
        prior = post @ a  # P(s_t | r_..t-1)
        lik = np.exp(-0.5 * ((rets[:, t, None] - phis * prev[:, None]) / sigma) ** 2)
        post = prior * lik
        post /= post.sum(1, keepdims=True)
        posts[:, t] = post
        if t < length - 1:
            preds[:, t] = (post @ a) @ phis * rets[:, t]
        prev = rets[:, t]
    return preds, posts


def fit_ar(rets: np.ndarray, order: int) -> np.ndarray:
    """Least-squares AR(order) coefficients c (c[0] for r_t, c[1] for r_{t-1}, ...) predicting r_{t+1}."""
    if order < 1:
        raise ValueError(f"AR order must be >= 1, got {order}")
    n, length = rets.shape
    if length <= order:
        raise ValueError(f"series of {length} returns are too short for AR({order})")
    x = np.stack([rets[:, order - 1 - j: length - 1 - j] for j in range(order)], -1).reshape(-1, order)
    y = rets[:, order:].reshape(-1)
    return np.linalg.lstsq(x, y, rcond=None)[0]


def ar_predict(rets: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """pred[:, t] = sum_j coef[j] r_{t-j} for t < length - 1 (returns before the start count as 0)."""
    order = len(coef)
    padded = np.concatenate([np.zeros((rets.shape[0], order - 1)), rets], 1)
    length = rets.shape[1]
    return sum(coef[j] * padded[:, order - 1 - j: order - 1 - j + length - 1] for j in range(order))
