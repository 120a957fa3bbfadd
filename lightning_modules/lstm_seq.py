"""The LSTM and Greff's variants over a whole sequence, with back-propagation through time
written by hand (one `torch.autograd.Function` per layer call).

Why: the equation loop in `cells.LSTMCell.loop` records about a dozen autograd nodes per
time step, and on the CPU that bookkeeping, not the arithmetic, is most of its time. Here
the forward pass runs without autograd into preallocated buffers (batch first, the gate
activations written in place over the pre-activations) and the backward pass is the
lecture's BPTT, unrolled by hand, with every weight gradient taken after the loop as one
matmul over all time steps. The two are numerically the same function (tests/test_cells.py
compares them, values and gradients).

Forward, step t (rows of a_t in LSTMCell's order (i, f, C~, o), absent gates left out):

    a_t   = xw_t + W_h h_{t-1} [+ R [i, f, o]_{t-1}]     xw_t = W_x x_t + b, hoisted (FGR: R)
    i_t   = sigma(a_i + p_i * C_{t-1})   f_t = sigma(a_f + p_f * C_{t-1})   C~_t = g(a_C)
    C_t   = f_t * C_{t-1} + i_t * C~_t                    (CIFG: f_t = 1 - i_t)
    o_t   = sigma(a_o + p_o * C_t)       h_t = o_t * h(C_t)

Backward, t = T .. 1 (d = dL/d, sigma' = s (1 - s), tanh' = 1 - tanh^2):

    dh_t   = dL/dy_t + W_h^T da_{t+1}                    (+ dL/dh_T at t = T)
    da_o   = dh_t * h(C_t) * sigma'(o_t)
    dC_t  += dh_t * o_t * h'(C_t) + p_o * da_o
    da_i   = dC_t * C~_t * sigma'(i_t)                    (CIFG: dC_t * (C~_t - C_{t-1}))
    da_f   = dC_t * C_{t-1} * sigma'(f_t)
    da_C   = dC_t * i_t * g'(a_C)
    dC_{t-1} = dC_t * f_t + p_i * da_i + p_f * da_f
    FGR: the sigmoid gates of step t also feed step t+1: d[i, f, o]_t += R^T da_{t+1}[i, f, o]

FGR's gates are state: [i, f, o]_0 (s_0, zero by default) comes in with h_0 and C_0, and
[i, f, o]_T goes out with h_T and C_T, so a sequence run in several calls (TBPTT windows,
evaluation chunks, sampling token by token) is the same network as one call over all of it;
d[i, f, o]_T (from a later call) enters step T's gates, and ds_0 = R^T da_1[i, f, o].

    dW_h = sum_t da_t h_{t-1}^T    dp_i = sum_t da_i * C_{t-1}    dp_o = sum_t da_o * C_t
    dR   = sum_t da_{t+1}[i, f, o] [i, f, o]_t^T          dxw_t = da_t

The recurrence and its BPTT run in the promoted dtype of xw and W_h (under autocast:
float32; autocast is switched off inside, also around a backward called in its region). On a
GPU with Triton the per-step gate arithmetic runs as one fused kernel (`lstm_triton`, the
same equations and buffers), and with LSTM_GRAPH=1 each whole call is replayed as a CUDA
graph (`lstm_graph`); on the CPU in float32 it is one call of a compiled C loop per step
(`lstm_cpu`, LSTM_CPU_KERNEL=0 turns it off); elsewhere it runs as the torch operations below.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lightning_modules import lstm_cpu, lstm_graph, lstm_triton


@dataclass(frozen=True)
class Layout:
    """Where each gate's rows are (column blocks of width H in a_t), from LSTMCell."""

    H: int
    gate_names: tuple[str, ...]
    sig_names: tuple[str, ...]
    input_act: bool
    output_act: bool
    coupled: bool
    peepholes: bool
    full_recurrence: bool

    def cols(self, name: str) -> slice:
        k = self.gate_names.index(name)
        return slice(k * self.H, (k + 1) * self.H)

    def has(self, name: str) -> bool:
        return name in self.gate_names

    @property
    def front(self) -> int:
        """Number of sigmoid gates stored before C~ (i and f): one sigmoid call covers them."""
        return self.gate_names.index("g")


def _gate(buf: Tensor, lay: Layout, name: str) -> Tensor | None:
    return buf[..., lay.cols(name)] if lay.has(name) else None


def _sig_index(lay: Layout, device) -> Tensor:
    """Column indices of the sigmoid gates (i, f, o) in a_t, in R's order."""
    return torch.cat([torch.arange(lay.cols(n).start, lay.cols(n).stop, device=device) for n in lay.sig_names])


def lstm_forward(lay: Layout, xw: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, peep: dict, w_gg: Tensor | None,
                 s0: Tensor | None = None):
    """Run the sequence; returns (Y, C, HC, SG, A): outputs, cell states (C_0..C_T),
    h(C_t), the FGR gate history and the gate activations, all (B, T[+1], .).
    s0: FGR's [i, f, o]_0 (B, K*H), None for zeros."""
    B, T, _ = xw.shape
    H = lay.H
    A = xw.clone(memory_format=torch.contiguous_format)
    C = xw.new_empty(B, T + 1, H)
    C[:, 0] = c0
    Y = xw.new_empty(B, T, H)
    HC = xw.new_empty(B, T, H) if lay.output_act else None
    k = len(lay.sig_names)
    SG = xw.new_empty(B, T, k * H) if lay.full_recurrence else None
    tmp = xw.new_empty(B, H) if lay.coupled else None
    w_t = w_hh.t()
    w_gg_t = w_gg.t() if w_gg is not None else None
    sig_idx = _sig_index(lay, xw.device) if w_gg is not None else None
    r = xw.new_empty(B, k * H) if w_gg is not None else None
    nf = lay.front * H
    p_i, p_f, p_o = peep.get("i"), peep.get("f"), peep.get("o")
    h = h0
    for t in range(T):
        a = A[:, t]
        a.addmm_(h, w_t)
        if SG is not None and (t > 0 or s0 is not None):  # R [i, f, o]_{t-1}: i, f are a_t's first columns, o its last
            torch.mm(SG[:, t - 1] if t > 0 else s0, w_gg_t, out=r)
            if nf:
                a[:, :nf].add_(r[:, :nf])
            if lay.has("o"):
                a[:, lay.cols("o")].add_(r[:, nf:])
        c = C[:, t]
        ai, af, ag, ao = (_gate(a, lay, n) for n in ("i", "f", "g", "o"))
        if p_i is not None and ai is not None:
            ai.addcmul_(p_i, c)
        if p_f is not None and af is not None:
            af.addcmul_(p_f, c)
        if lay.front:
            a[:, : lay.front * H].sigmoid_()
        if lay.input_act:
            ag.tanh_()
        cn = C[:, t + 1]
        if lay.coupled:  # C_t = (1 - i) C_{t-1} + i C~ = C_{t-1} + i (C~ - C_{t-1})
            torch.addcmul(c, ai, torch.sub(ag, c, out=tmp), out=cn)
        elif af is None:  # NFG
            torch.addcmul(c, ai, ag, out=cn)
        elif ai is None:  # NIG
            torch.mul(af, c, out=cn).add_(ag)
        else:
            torch.mul(af, c, out=cn).addcmul_(ai, ag)
        if ao is not None:
            if p_o is not None:
                ao.addcmul_(p_o, cn)
            ao.sigmoid_()
        hc = torch.tanh(cn, out=HC[:, t]) if HC is not None else cn
        if ao is not None:
            torch.mul(ao, hc, out=Y[:, t])
        else:
            Y[:, t].copy_(hc)
        if SG is not None:
            torch.index_select(a, 1, sig_idx, out=SG[:, t])
        h = Y[:, t]
    return Y, C, HC, SG, A


def lstm_backward(lay: Layout, saved: tuple, peep: dict, w_hh: Tensor, w_gg: Tensor | None, h0: Tensor,
                  dY: Tensor, dhT: Tensor | None, dcT: Tensor | None, s0: Tensor | None = None, dsT: Tensor | None = None):
    """BPTT through the stored sequence; returns (dxw, dW_h, dh0, dc0, dp dict, dR, ds0).
    FGR: s0 as given to the forward, dsT = dL/d[i, f, o]_T (None: zero); ds0 None without s0."""
    Y, C, HC, SG, A = saved
    B, T, _ = A.shape
    H = lay.H
    dA = torch.empty_like(A)
    dh = A.new_empty(B, H)
    dc = dcT.clone(memory_format=torch.contiguous_format) if dcT is not None else A.new_zeros(B, H)
    D = A.new_empty(B, A.shape[2])  # sigma' (and g') of every gate at step t
    ones = A.new_ones(B, H)
    tmp = A.new_empty(B, H)
    p_i, p_f, p_o = peep.get("i"), peep.get("f"), peep.get("o")
    ex = dsT if w_gg is not None else None  # dL/d[i, f, o]_T from a later call
    sig_idx = _sig_index(lay, A.device) if w_gg is not None else None
    for t in range(T - 1, -1, -1):
        output_grad(t, dY, dhT, dA, w_hh, dh)
        if w_gg is not None and t < T - 1:
            ex = torch.index_select(dA[:, t + 1], 1, sig_idx) @ w_gg
        a, d = A[:, t], dA[:, t]
        torch.addcmul(a, a, a, value=-1, out=D)  # s - s^2
        if lay.input_act:
            torch.addcmul(ones, a[:, lay.cols("g")], a[:, lay.cols("g")], value=-1, out=D[:, lay.cols("g")])
        ai, af, ag, ao = (_gate(a, lay, n) for n in ("i", "f", "g", "o"))
        exg = {n: ex[:, j * H : (j + 1) * H] for j, n in enumerate(lay.sig_names)} if ex is not None else {}
        c_prev, c_now = C[:, t], C[:, t + 1]
        hc = HC[:, t] if HC is not None else c_now
        # output gate and the path h_t -> C_t
        if ao is not None:
            do = d[:, lay.cols("o")]
            torch.mul(dh, hc, out=do)
            if "o" in exg:
                do.add_(exg["o"])
            do.mul_(D[:, lay.cols("o")])
            if HC is not None:
                torch.addcmul(ones, hc, hc, value=-1, out=tmp).mul_(ao)
                dc.addcmul_(dh, tmp)
            else:
                dc.addcmul_(dh, ao)
            if p_o is not None:
                dc.addcmul_(do, p_o)
        elif HC is not None:
            dc.addcmul_(dh, torch.addcmul(ones, hc, hc, value=-1, out=tmp))
        else:
            dc.add_(dh)
        # input gate, forget gate, candidate
        if ai is not None:
            di = d[:, lay.cols("i")]
            if lay.coupled:
                torch.mul(dc, torch.sub(ag, c_prev, out=di), out=di)
            else:
                torch.mul(dc, ag, out=di)
            if "i" in exg:
                di.add_(exg["i"])
            di.mul_(D[:, lay.cols("i")])
        if af is not None:
            df = d[:, lay.cols("f")]
            torch.mul(dc, c_prev, out=df)
            if "f" in exg:
                df.add_(exg["f"])
            df.mul_(D[:, lay.cols("f")])
        dg = d[:, lay.cols("g")]
        if ai is not None:
            torch.mul(dc, ai, out=dg)
        else:
            dg.copy_(dc)
        if lay.input_act:
            dg.mul_(D[:, lay.cols("g")])
        # dC_{t-1}
        if lay.coupled:
            dc.addcmul_(dc, ai, value=-1)
        elif af is not None:
            dc.mul_(af)
        if p_i is not None and ai is not None:
            dc.addcmul_(di, p_i)
        if p_f is not None and af is not None:
            dc.addcmul_(df, p_f)
    dW, dh0, dp, dR, ds0 = weight_grads(lay, dA, None, Y, C, SG, h0, w_hh, peep, w_gg, s0)
    return dA, dW, dh0, dc, dp, dR, ds0


def output_grad(t: int, dY: Tensor, dhT: Tensor | None, dA: Tensor, w_hh: Tensor, out: Tensor) -> None:
    """dh_t = dL/dy_t + W_h^T da_{t+1}, written into `out` (at t = T: + dL/dh_T instead)."""
    if t == dY.shape[1] - 1:
        torch.add(dY[:, t], dhT, out=out) if dhT is not None else out.copy_(dY[:, t])
    else:
        torch.addmm(dY[:, t], dA[:, t + 1], w_hh, out=out)


def weight_grads(lay: Layout, dA: Tensor, dSG: Tensor | None, Y: Tensor, C: Tensor, SG: Tensor | None,
                 h0: Tensor, w_hh: Tensor, peep: dict, w_gg: Tensor | None, s0: Tensor | None = None):
    """After the time loop, each weight gradient as one product over all steps:
    (dW_h, dh_0, dp dict, dR, ds_0). dSG: da's sigmoid-gate columns in R's order (None: taken
    from dA). FGR with s0: dR also takes step 1's term da_1 s_0^T, and ds_0 = R^T da_1."""
    B, T, _ = dA.shape
    H = lay.H
    h_prev = torch.cat([h0.unsqueeze(1), Y[:, :-1]], 1)
    dW = dA.reshape(B * T, -1).t() @ h_prev.reshape(B * T, H)
    dh0 = dA[:, 0] @ w_hh
    dp = {}
    for n, p in peep.items():
        cs = C[:, 1:] if n == "o" else C[:, :-1]
        dp[n] = (dA[..., lay.cols(n)] * cs).sum((0, 1))
    dR = ds0 = None
    if w_gg is not None:
        dsig = dSG if dSG is not None else dA.index_select(2, _sig_index(lay, dA.device))  # (B, T, K*H)
        prev = SG[:, :-1] if s0 is None else torch.cat([s0.unsqueeze(1), SG[:, :-1]], 1)  # [i, f, o]_{t-1}
        dsig = dsig[:, 1:] if s0 is None else dsig
        if dsig.shape[1]:
            dR = dsig.reshape(-1, dsig.shape[2]).t() @ prev.reshape(-1, prev.shape[2])
        else:
            dR = torch.zeros_like(w_gg)
        if s0 is not None:
            ds0 = dsig[:, 0] @ w_gg
    return dW, dh0, dp, dR, ds0


def no_autocast(x: Tensor):
    """Autocast off on x's device: the recurrence and its BPTT run in the promoted dtype even
    when called inside an autocast region (Lightning's manual_backward is inside one).
    A device without autocast (meta: shape inference) has nothing to switch off."""
    if not torch.amp.is_autocast_available(x.device.type):
        return nullcontext()
    return torch.autocast(x.device.type, enabled=False)


def _impl(x: Tensor, lay: Layout, name: str):
    """`name` (lstm_forward or lstm_backward) in its torch-op version (this module), the fused
    Triton one (CUDA), that one replayed as a CUDA graph, or the compiled C one (CPU, float32)."""
    fused = getattr(lstm_triton, name)
    if lstm_graph.enabled(x):
        return partial(lstm_graph.run, fused)
    if lstm_triton.usable(x):
        return fused
    return getattr(lstm_cpu, name) if lstm_cpu.usable(x, lay) else globals()[name]


class LSTMSequence(torch.autograd.Function):
    """y, h_T, C_T = LSTMSequence.apply(layout, xw, W_h, h_0, C_0, p_i, p_f, p_o, R[, s_0]);
    FGR (R given) returns [i, f, o]_T too: y, h_T, C_T, s_T (s_0: None for zeros)."""

    @staticmethod
    def forward(ctx, lay: Layout, xw, w_hh, h0, c0, p_i, p_f, p_o, w_gg, s0=None):
        dt = torch.promote_types(xw.dtype, w_hh.dtype)
        cast = lambda z: z.to(dt) if z is not None else None  # noqa: E731
        xw_, w_hh_, h0_, c0_, w_gg_ = cast(xw), cast(w_hh), cast(h0), cast(c0), cast(w_gg)
        s0_ = cast(s0) if w_gg is not None else None
        peep = {n: cast(p) for n, p in (("i", p_i), ("f", p_f), ("o", p_o)) if p is not None}
        with no_autocast(xw):
            Y, C, HC, SG, A = _impl(xw_, lay, "lstm_forward")(lay, xw_, w_hh_, h0_, c0_, peep, w_gg_, s0_)
        ctx.lay, ctx.dtypes = lay, (xw.dtype, w_hh.dtype, h0.dtype, c0.dtype, s0.dtype if s0_ is not None else None)
        ctx.peep_names = tuple(peep)
        ctx.save_for_backward(Y, C, HC, SG, A, w_hh_, h0_, w_gg_, s0_, *peep.values())
        if SG is not None:
            return Y, Y[:, -1].clone(), C[:, -1].clone(), SG[:, -1].clone()
        return Y, Y[:, -1].clone(), C[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dhT, dcT, dsT=None):
        Y, C, HC, SG, A, w_hh, h0, w_gg, s0, *pv = ctx.saved_tensors
        peep = dict(zip(ctx.peep_names, pv))
        dt = A.dtype
        dY = dY.to(dt) if dY is not None else torch.zeros_like(Y)
        cast = lambda z: z.to(dt) if z is not None else None  # noqa: E731
        with no_autocast(A):
            dA, dW, dh0, dc0, dp, dR, ds0 = _impl(A, ctx.lay, "lstm_backward")(
                ctx.lay, (Y, C, HC, SG, A), peep, w_hh, w_gg, h0, dY, cast(dhT), cast(dcT), s0, cast(dsT))
        x_dt, w_dt, h_dt, c_dt, s_dt = ctx.dtypes
        g = lambda n: dp[n].to(w_dt) if n in dp else None  # noqa: E731
        return (None, dA.to(x_dt), dW.to(w_dt), dh0.to(h_dt), dc0.to(c_dt), g("i"), g("f"), g("o"),
                dR.to(w_dt) if dR is not None else None, ds0.to(s_dt) if ds0 is not None else None)
