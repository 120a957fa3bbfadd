"""The equation cells, the C gate kernel and truncated BPTT against references written from
the papers' equations alone (plain torch, float64, autograd), not against `LSTMCell.loop`:
an equation error that the hand-written BPTT shared with the project's own loop shows here.

LSTM (Greff et al. 2017, "LSTM: A Search Space Odyssey", section 2), one weight block per
gate: W_* (input), R_* (recurrent), b_*, peepholes p_* (vectors), per step t:

    z_t = g(W_z x_t + R_z h_{t-1} + b_z)                         block input (the lecture's C~)
    i_t = sigma(W_i x_t + R_i h_{t-1} + p_i * C_{t-1} + b_i)     input gate
    f_t = sigma(W_f x_t + R_f h_{t-1} + p_f * C_{t-1} + b_f)     forget gate
    C_t = z_t * i_t + C_{t-1} * f_t                              cell state
    o_t = sigma(W_o x_t + R_o h_{t-1} + p_o * C_t + b_o)         output gate (peeps at C_t)
    h_t = h(C_t) * o_t                                           block output;  g = h = tanh

V is the above; NIG: i_t = 1; NFG: f_t = 1; NOG: o_t = 1; NIAF: g = identity; NOAF:
h = identity; NP: no p_*; CIFG: f_t = 1 - i_t; FGR: gate a in {i, f, o} adds
sum_{s in i,f,o} R_as s_{t-1} to its pre-activation (nine H x H blocks; not the block input).
The lecture's LSTM (NOTES.md, slides 6-11) has no peepholes. The blocks are sliced from the
cell's stacked parameters: rows (i, f, z, o) with absent gates left out, `peep.<gate>`, and
FGR's `weight_gg` with row block a, column block s = R_as; FGR's state is (h, C, [i, f, o]).

GRU, the lecture's slide 12 (no biases; r scales h_{t-1} before the matmul):
    z_t = sigma(W_z x_t + U_z h_{t-1})   r_t = sigma(W_r x_t + U_r h_{t-1})
    n_t = tanh(W_n x_t + U_n (r_t * h_{t-1}))   h_t = (1 - z_t) * h_{t-1} + z_t * n_t
and torch.nn.GRU's form with the lecture's z (z = 1 - torch's z; rows (r, z, n) both):
    n_t = tanh(W_n x_t + b_in + r_t * (U_n h_{t-1} + b_hn)), r and z with b_i* + b_h*.
RNN (Elman): h_t = tanh(W x_t + U h_{t-1} + b).

Truncated BPTT(K1, K2) (Sutskever 2013; module.py): batch n of a stream brings tokens
[n K1, (n+1) K1); its loss is the mean cross-entropy of those K1 outputs, back-propagated
through the K2 steps ending at (n+1) K1, which start from the state the network reached,
without gradient, over the stream before them.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules import lstm_cpu
from lightning_modules.cells import make_cell
from lightning_modules.names import CELLS, LSTM_NAMES

B, T, I, H = 2, 5, 3, 4
sig, tanh = torch.sigmoid, torch.tanh
ident = lambda a: a  # noqa: E731

# Greff's variants from the paper, written here (not read from cells.LSTMVariant):
# drop: gates without weights (fixed to 1, or CIFG's f = 1 - i); peep: peepholes on the
# sigmoid gates that remain; g, h: the input and output activations; fgr: gate recurrence.
V = dict(drop="", peep=True, g=tanh, h=tanh, cifg=False, fgr=False)
SPEC = {
    "lstm": dict(V, peep=False),  # the lecture's LSTM
    "lstm-v": V,
    "lstm-nig": dict(V, drop="i"),
    "lstm-nfg": dict(V, drop="f"),
    "lstm-nog": dict(V, drop="o"),
    "lstm-niaf": dict(V, g=ident),
    "lstm-noaf": dict(V, h=ident),
    "lstm-np": dict(V, peep=False),
    "lstm-cifg": dict(V, drop="f", cifg=True),
    "lstm-fgr": dict(V, fgr=True),
}


def lstm_reference(name: str, P: dict, x, h, c, s=None):
    """Greff's equations (module docstring) step by step; P: the cell's parameters by name."""
    sp = SPEC[name]
    rows = [n for n in "ifzo" if n not in sp["drop"]]  # the cell's row blocks, in order
    gates = [n for n in "ifo" if n in rows]  # sigmoid gates with weights
    blk = lambda w, k: w[k * H : (k + 1) * H]  # noqa: E731
    W = {n: blk(P["weight_ih"], k) for k, n in enumerate(rows)}
    R = {n: blk(P["weight_hh"], k) for k, n in enumerate(rows)}
    b = {n: blk(P["bias"], k) for k, n in enumerate(rows)}
    p = {n: P[f"peep.{n}"] for n in gates} if sp["peep"] else {}
    if sp["fgr"]:  # R_as: row block a (receiving gate), column block s (gate of step t-1)
        R_gg = P["weight_gg"]
        Rg = {(a, s_): R_gg[ka * H : (ka + 1) * H, ks * H : (ks + 1) * H] for ka, a in enumerate(gates) for ks, s_ in enumerate(gates)}
        prev = dict(zip(gates, s.split(H, 1)))  # [i, f, o]_0
    ys = []
    for t in range(x.shape[1]):
        pre = {n: x[:, t] @ W[n].T + h @ R[n].T + b[n] for n in rows}
        if sp["fgr"]:
            for a in gates:
                pre[a] = pre[a] + sum(prev[s_] @ Rg[a, s_].T for s_ in gates)
        peep = lambda n, cell: pre[n] + p[n] * cell if n in p else pre[n]  # noqa: E731
        i = sig(peep("i", c)) if "i" in rows else 1.0
        f = 1.0 - i if sp["cifg"] else sig(peep("f", c)) if "f" in rows else 1.0
        z = sp["g"](pre["z"])
        c = z * i + c * f
        o = sig(peep("o", c)) if "o" in rows else 1.0  # C_t, the new state
        h = sp["h"](c) * o
        if sp["fgr"]:
            prev = {"i": i, "f": f, "o": o}
        ys.append(h)
    st = (h, c, torch.cat([prev[n] for n in gates], 1)) if sp["fgr"] else (h, c)
    return torch.stack(ys, 1), st


def gru_reference(lecture: bool, P: dict, x, h):
    W_r, W_z, W_n = P["weight_ih"].split(H)
    U_r, U_z, U_n = P["weight_hh"].split(H)
    if not lecture:
        bi_r, bi_z, bi_n = P["bias_ih"].split(H)
        bh_r, bh_z, bh_n = P["bias_hh"].split(H)
    ys = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        if lecture:  # the slide
            z = sig(xt @ W_z.T + h @ U_z.T)
            r = sig(xt @ W_r.T + h @ U_r.T)
            n = tanh(xt @ W_n.T + (r * h) @ U_n.T)
        else:  # torch.nn.GRU's, z the lecture's
            r = sig(xt @ W_r.T + bi_r + h @ U_r.T + bh_r)
            z = sig(xt @ W_z.T + bi_z + h @ U_z.T + bh_z)
            n = tanh(xt @ W_n.T + bi_n + r * (h @ U_n.T + bh_n))
        h = (1 - z) * h + z * n
        ys.append(h)
    return torch.stack(ys, 1), (h,)


def rnn_reference(P: dict, x, h):
    ys = []
    for t in range(x.shape[1]):
        h = tanh(x[:, t] @ P["weight_ih"].T + h @ P["weight_hh"].T + P["bias"])
        ys.append(h)
    return torch.stack(ys, 1), (h,)


def reference(name: str, P: dict, x, state):
    if name == "rnn":
        return rnn_reference(P, x, *state)
    if name in ("gru", "gru-lecture"):
        return gru_reference(name == "gru-lecture", P, x, *state)
    return lstm_reference(name, P, x, *state)


def expected_params(name: str) -> dict:
    """Every parameter the references read, with its shape: the cell must have exactly these."""
    if name == "rnn":
        return {"weight_ih": (H, I), "weight_hh": (H, H), "bias": (H,)}
    if name in ("gru", "gru-lecture"):
        bias = {} if name == "gru-lecture" else {"bias_ih": (3 * H,), "bias_hh": (3 * H,)}
        return {"weight_ih": (3 * H, I), "weight_hh": (3 * H, H), **bias}
    sp = SPEC[name]
    G = 4 - len(sp["drop"])
    gates = [n for n in "ifo" if n not in sp["drop"]]
    out = {"weight_ih": (G * H, I), "weight_hh": (G * H, H), "bias": (G * H,)}
    out.update({f"peep.{n}": (H,) for n in gates if sp["peep"]})
    if sp["fgr"]:
        out["weight_gg"] = (3 * H, 3 * H)
    return out


def state_widths(name: str) -> tuple:
    if name in SPEC:
        return (H, H, 3 * H) if SPEC[name]["fgr"] else (H, H)
    return (H,)


def _setup(name: str, seed: int, dtype):
    torch.manual_seed(seed)
    cell = make_cell(name, I, H).to(dtype)
    with torch.no_grad():  # large weights: every peephole, gate-to-gate and bias path counts
        for p in cell.parameters():
            p.uniform_(-0.9, 0.9)
    x = torch.randn(B, T, I, dtype=dtype)
    # states: h, C ~ N(0, 1); FGR's gates [i, f, o] are sigmoids, in (0, 1)
    state = tuple((torch.rand if k == 2 else torch.randn)(B, w, dtype=dtype) for k, w in enumerate(state_widths(name)))
    w = [torch.randn(B, T, H, dtype=torch.float64)] + [torch.randn(B, w_, dtype=torch.float64) for w_ in state_widths(name)]
    return cell, x, state, w


def _values_and_grads(fn, params: list, x, state, w):
    """y, the final state, and the gradients of sum(w * [y, state_T]) w.r.t. x, the initial
    state and the parameters."""
    x = x.detach().requires_grad_()
    state = tuple(s.detach().requires_grad_() for s in state)
    y, st = fn(x, state)
    assert len(st) == len(state)
    loss = sum((a.double() * b).sum() for a, b in zip((y, *st), w))
    return [y, *st, *torch.autograd.grad(loss, [x, *state, *params])]


def _names(name: str, cell) -> list[str]:
    return ["y", *(f"state{k}_T" for k in range(len(state_widths(name)))), "dx",
            *(f"dstate{k}_0" for k in range(len(state_widths(name)))), *(f"d{n}" for n, _ in cell.named_parameters())]


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_the_reference_knows_every_cell():
    assert set(SPEC) == set(LSTM_NAMES) and set(CELLS) == {"rnn", "gru", "gru-lecture", *LSTM_NAMES}


@pytest.mark.parametrize("name", CELLS)
def test_cells_equal_the_papers_equations_in_float64(name):
    """forward (hand-written BPTT for LSTM and GRU) = the reference: outputs, final state, and
    the gradients of x, the initial state (FGR's gates too) and every parameter, to 1e-12."""
    cell, x, state, w = _setup(name, sum(map(ord, name)), torch.float64)
    params = dict(cell.named_parameters())
    assert {n: tuple(p.shape) for n, p in params.items()} == expected_params(name)
    if name in SPEC:
        assert tuple(cell.state_widths) == state_widths(name)
    got = _values_and_grads(cell, list(params.values()), x, state, w)
    want = _values_and_grads(lambda x, s: reference(name, params, x, s), list(params.values()), x, state, w)
    for what, a, b in zip(_names(name, cell), got, want, strict=True):
        assert b.norm() > 0, what  # every path is exercised
        assert rel(a, b) <= 1e-12, (name, what, rel(a, b))


needs_cc = pytest.mark.skipif(lstm_cpu.compiler() is None, reason="no C compiler on this machine")


@needs_cc
@pytest.mark.parametrize("name", LSTM_NAMES)
def test_c_kernel_in_float32_equals_the_papers_equations(name, monkeypatch):
    """The compiled C gate kernel (LSTMCell.forward on the CPU in float32) against the same
    float64 reference, evaluated at the float32 weights: outputs 1e-5, gradients 1e-4."""
    cell, x, state, w = _setup(name, 7 + sum(map(ord, name)), torch.float32)
    if not lstm_cpu.usable(x, cell.layout()):
        pytest.skip("the LSTM C kernel is off (LSTM_CPU_KERNEL=0) or could not be built")
    calls = []
    for fn in ("lstm_forward", "lstm_backward"):  # count the C path's calls: it must be the one taken
        real = getattr(lstm_cpu, fn)
        monkeypatch.setattr(lstm_cpu, fn, lambda *a, _f=real, _n=fn, **k: (calls.append(_n), _f(*a, **k))[1])
    got = _values_and_grads(cell, list(cell.parameters()), x, state, w)
    assert calls == ["lstm_forward", "lstm_backward"]
    assert all(g.dtype == torch.float32 for g in got)
    P = {n: p.detach().double().requires_grad_() for n, p in cell.named_parameters()}
    want = _values_and_grads(lambda x, s: reference(name, P, x, s), list(P.values()), x.double(), tuple(s.double() for s in state), w)
    n_out = 1 + len(state)
    for k, (what, a, b) in enumerate(zip(_names(name, cell), got, want, strict=True)):
        assert rel(a, b) <= (1e-5 if k < n_out else 1e-4), (name, what, rel(a, b))


@pytest.mark.parametrize("k1,k2", [(3, 3), (3, 5), (2, 7)])
@pytest.mark.parametrize("cell", ["lstm", "lstm-fgr", "gru-lecture"])
def test_truncated_bptt_is_sutskevers(cell, k1, k2):
    """CharLM._tbptt_loss over the batches of `Streams` (a pass, then the next one's start,
    which comes with reset) = the reference of the module docstring run on the stream prefix:
    loss and every parameter's gradient, weights held fixed. 2 layers ('lstm': torch.nn.LSTM;
    the others: equation cells), float64; the loss itself in float32, as `_loss` takes it."""
    from lightning_modules.data import Streams
    from lightning_modules.module import CharLM

    torch.manual_seed(k1 * 10 + k2)
    Vs, length = 7, 13  # vocabulary, tokens per stream
    data = torch.randint(0, Vs, (B * length + 1,))
    lm = CharLM(Vs, cell, hidden=5, layers=2, dropout=0.0, weight_drop=0.0, bptt="tbptt", k1=k1, k2=k2).double()
    params = list(lm.parameters())
    # char-rnn's streams: stream b is tokens [b L, (b+1) L) of the split, targets one token on
    xs = torch.stack([data[b * length : (b + 1) * length] for b in range(B)])
    ys = torch.stack([data[b * length + 1 : (b + 1) * length + 1] for b in range(B)])
    per_pass = length // k1
    batches = list(Streams(data, B, k1, steps=per_pass + 2))  # a pass, and the next one's start
    assert len(batches) == per_pass + 2
    for step, (x, y, reset) in enumerate(batches):
        n = step % per_pass  # batch n of its pass
        end = (n + 1) * k1
        start = max(0, end - k2)  # the window: the K2 tokens that end with the K1 new ones
        assert reset == (n == 0) and torch.equal(x, xs[:, end - k1 : end]) and torch.equal(y, ys[:, end - k1 : end])
        loss = lm._tbptt_loss(x, y, reset)
        got = torch.autograd.grad(loss, params)
        with torch.no_grad():  # the state at the window's start: the stream before it, from zeros
            s0 = lm.model(xs[:, :start])[1] if start > 0 else None
        logits, _ = lm.model(xs[:, start:end], s0)
        ref = F.cross_entropy(logits[:, -k1:].reshape(-1, Vs).float(), ys[:, end - k1 : end].reshape(-1))
        want = torch.autograd.grad(ref, params)
        assert loss.dtype == torch.float32 and abs(loss.item() - ref.item()) <= 1e-6 * ref.item(), (step, loss.item(), ref.item())
        for (pn, _), a, b in zip(lm.named_parameters(), got, want, strict=True):
            assert rel(a, b) <= 1e-6, (step, pn, rel(a, b))
