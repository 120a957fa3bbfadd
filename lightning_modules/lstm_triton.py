"""The equation LSTMs' gate arithmetic as two Triton kernels (GPU), for `lstm_seq`.

Why: on a GPU the eager loop of `lstm_seq.lstm_forward` launches about a dozen element-wise
kernels per time step (two dozen in the backward pass), each a few microseconds of launch
for a few hundred kilobytes of work: the loop is launch-bound. Here each time step is one
cuBLAS matmul (W_h h_{t-1}; FGR: + R [i, f, o]_{t-1}) and ONE fused kernel for everything
else, forward and backward (the time loop around them: `lstm_steps`, shared with the CPU's
C kernels of `lstm_cpu`); the weight gradients stay one matmul over all time steps
(`lstm_seq.weight_grads`). The equations are the ones in `lstm_seq` (same buffers, same
layout: A holds the gate activations written over the pre-activations), so the two paths
are interchangeable and tested against each other (tests/test_lstm_triton.py, which runs
these kernels in Triton's interpreter on the CPU).

Per element (b, j) of step t, forward (absent gates: i = 1, f = 1, o = 1; CIFG: f = 1 - i):

    i = sigma(a_i [+ r_i] + p_i C_{t-1})   f = sigma(a_f [+ r_f] + p_f C_{t-1})   C~ = g(a_C)
    C_t = f C_{t-1} + i C~                 o = sigma(a_o [+ r_o] + p_o C_t)       h_t = o h(C_t)

backward, given dh_t (= dL/dy_t + W_h^T da_{t+1}, a matmul outside) and the carried dC:

    da_o = (dh h(C_t) [+ e_o]) o (1 - o)     dC += dh o h'(C_t) + p_o da_o
    da_i = (dC C~ [+ e_i]) i (1 - i)         (CIFG: dC (C~ - C_{t-1}))
    da_f = (dC C_{t-1} [+ e_f]) f (1 - f)    da_C = dC i g'(a_C)
    dC_{t-1} = dC f + p_i da_i + p_f da_f    (CIFG: dC (1 - i) + ...)

with e = R^T da_{t+1}[i, f, o] (FGR only; also a matmul outside). tanh is written as
2 sigma(2x) - 1 (Triton's core language has no tanh on every backend).
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

from lightning_modules import lstm_steps

try:  # Triton ships with CUDA builds of torch; CPU builds (and this module's users) may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK = 512


def available() -> bool:
    return triton is not None


def usable(x: Tensor) -> bool:
    """Take the fused path for this tensor? CUDA with Triton, unless LSTM_TRITON=0; never while
    torch.export or torch.compile traces (the launch reads raw pointers; the torch ops compute
    the same function)."""
    return x.is_cuda and triton is not None and os.environ.get("LSTM_TRITON", "1") != "0" and not torch.compiler.is_compiling()


if triton is not None:

    @triton.jit
    def _tanh(x):
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0

    @triton.jit
    def _sigmoid_gate(a_ptr, r_ptr, p_ptr, c, m, FGR: tl.constexpr, PEEP: tl.constexpr):
        """sigma(a [+ r] [+ p * c]), written back over a (r: FGR's R [i, f, o]_{t-1} term)."""
        a = tl.load(a_ptr, mask=m).to(tl.float32)
        if FGR:
            a += tl.load(r_ptr, mask=m).to(tl.float32)
        if PEEP:
            a += tl.load(p_ptr, mask=m).to(tl.float32) * c
        s = tl.sigmoid(a)
        tl.store(a_ptr, s.to(a_ptr.dtype.element_ty), mask=m)
        return s

    @triton.jit
    def _gate_grad(d, s, e_ptr, d_ptr, dsg_ptr, m, FGR: tl.constexpr):
        """da = (d [+ e]) s (1 - s) for a sigmoid gate s, stored in dA (FGR: also in dSG)."""
        if FGR:
            d += tl.load(e_ptr, mask=m).to(tl.float32)
        da = d * s * (1.0 - s)
        tl.store(d_ptr, da.to(d_ptr.dtype.element_ty), mask=m)
        if FGR:
            tl.store(dsg_ptr, da.to(dsg_ptr.dtype.element_ty), mask=m)
        return da

    @triton.jit(do_not_specialize=["t"])  # one compiled kernel for every step
    def _fwd_step(A, C, Y, HC, SG, Rb, PI, PF, PO, t, T, H, N,
                  KI: tl.constexpr, KF: tl.constexpr, KG: tl.constexpr, KO: tl.constexpr,
                  RI: tl.constexpr, RF: tl.constexpr, RO: tl.constexpr, INPUT_ACT: tl.constexpr,
                  OUTPUT_ACT: tl.constexpr, COUPLED: tl.constexpr, PEEP: tl.constexpr, FGR: tl.constexpr,
                  G: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr):
        """A (B, T, G*H) pre-activations in, activations out; C (B, T+1, H); Y, HC (B, T, H);
        SG (B, T, K*H) the sigmoid gates for FGR; Rb (B, K*H) = R [i, f, o]_{t-1}."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        b = offs // H
        j = offs % H
        a_row = A + (b * T + t) * (G * H) + j
        c_prev = tl.load(C + (b * (T + 1) + t) * H + j, mask=m).to(tl.float32)
        i = 1.0
        f = 1.0
        o = 1.0
        r_row = Rb + b * (K * H) + j
        if KI >= 0:
            i = _sigmoid_gate(a_row + KI * H, r_row + RI * H, PI + j, c_prev, m, FGR, PEEP)
        if KF >= 0:
            f = _sigmoid_gate(a_row + KF * H, r_row + RF * H, PF + j, c_prev, m, FGR, PEEP)
        g = tl.load(a_row + KG * H, mask=m).to(tl.float32)
        if INPUT_ACT:
            g = _tanh(g)
            tl.store(a_row + KG * H, g.to(A.dtype.element_ty), mask=m)
        if COUPLED:
            c = c_prev + i * (g - c_prev)
        else:
            c = f * c_prev + i * g
        tl.store(C + (b * (T + 1) + t + 1) * H + j, c.to(C.dtype.element_ty), mask=m)
        if KO >= 0:
            o = _sigmoid_gate(a_row + KO * H, r_row + RO * H, PO + j, c, m, FGR, PEEP)
        hc = c
        if OUTPUT_ACT:
            hc = _tanh(c)
            tl.store(HC + (b * T + t) * H + j, hc.to(HC.dtype.element_ty), mask=m)
        tl.store(Y + (b * T + t) * H + j, (o * hc).to(Y.dtype.element_ty), mask=m)
        if FGR:
            sg_row = SG + (b * T + t) * (K * H) + j
            if RI >= 0:
                tl.store(sg_row + RI * H, i.to(SG.dtype.element_ty), mask=m)
            if RF >= 0:
                tl.store(sg_row + RF * H, f.to(SG.dtype.element_ty), mask=m)
            if RO >= 0:
                tl.store(sg_row + RO * H, o.to(SG.dtype.element_ty), mask=m)

    @triton.jit(do_not_specialize=["t"])  # one compiled kernel for every step
    def _bwd_step(A, C, HC, DA, DSG, DH, DC, EX, PI, PF, PO, t, T, H, N,
                  KI: tl.constexpr, KF: tl.constexpr, KG: tl.constexpr, KO: tl.constexpr,
                  RI: tl.constexpr, RF: tl.constexpr, RO: tl.constexpr, INPUT_ACT: tl.constexpr,
                  OUTPUT_ACT: tl.constexpr, COUPLED: tl.constexpr, PEEP: tl.constexpr, FGR: tl.constexpr,
                  G: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr):
        """DA (B, T, G*H) gets da_t; DSG (B, T, K*H) its sigmoid-gate columns (FGR);
        DH (B, H) dh_t in; DC (B, H) dC_t in, dC_{t-1} out; EX (B, K*H) = R^T da_{t+1}."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        b = offs // H
        j = offs % H
        a_row = A + (b * T + t) * (G * H) + j
        d_row = DA + (b * T + t) * (G * H) + j
        dh = tl.load(DH + offs, mask=m).to(tl.float32)
        dc = tl.load(DC + offs, mask=m).to(tl.float32)
        c_prev = tl.load(C + (b * (T + 1) + t) * H + j, mask=m).to(tl.float32)
        hc = tl.load(C + (b * (T + 1) + t + 1) * H + j, mask=m).to(tl.float32)
        if OUTPUT_ACT:
            hc = tl.load(HC + (b * T + t) * H + j, mask=m).to(tl.float32)
        dhc = dh  # dL/dh(C_t)
        e_row = EX + b * (K * H) + j
        dsg_row = DSG + (b * T + t) * (K * H) + j
        if KO >= 0:
            o = tl.load(a_row + KO * H, mask=m).to(tl.float32)
            do = _gate_grad(dh * hc, o, e_row + RO * H, d_row + KO * H, dsg_row + RO * H, m, FGR)
            dhc = dh * o
        if OUTPUT_ACT:
            dc += dhc * (1.0 - hc * hc)
        else:
            dc += dhc
        if KO >= 0:
            if PEEP:
                dc += do * tl.load(PO + j, mask=m).to(tl.float32)
        g = tl.load(a_row + KG * H, mask=m).to(tl.float32)
        i = 1.0
        f = 1.0
        if KI >= 0:
            i = tl.load(a_row + KI * H, mask=m).to(tl.float32)
        if KF >= 0:
            f = tl.load(a_row + KF * H, mask=m).to(tl.float32)
        if COUPLED:
            dc_prev = dc * (1.0 - i)
        else:
            dc_prev = dc * f
        if KI >= 0:
            if COUPLED:
                di = _gate_grad(dc * (g - c_prev), i, e_row + RI * H, d_row + KI * H, dsg_row + RI * H, m, FGR)
            else:
                di = _gate_grad(dc * g, i, e_row + RI * H, d_row + KI * H, dsg_row + RI * H, m, FGR)
            if PEEP:
                dc_prev += di * tl.load(PI + j, mask=m).to(tl.float32)
        if KF >= 0:
            df = _gate_grad(dc * c_prev, f, e_row + RF * H, d_row + KF * H, dsg_row + RF * H, m, FGR)
            if PEEP:
                dc_prev += df * tl.load(PF + j, mask=m).to(tl.float32)
        dg = dc * i
        if INPUT_ACT:
            dg = dg * (1.0 - g * g)
        tl.store(d_row + KG * H, dg.to(DA.dtype.element_ty), mask=m)
        tl.store(DC + offs, dc_prev.to(DC.dtype.element_ty), mask=m)


def _check_size(x: Tensor) -> None:
    if x.numel() >= 2**31:  # the kernels index with 32-bit offsets
        raise ValueError(f"a {tuple(x.shape)} gate buffer is too large for the fused kernels (2^31 elements); "
                         "use a smaller batch or sequence, or LSTM_TRITON=0")


def device_of(x: Tensor):
    """Make x's GPU the current one (Triton, streams and graphs use the current device)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def lstm_forward(lay, xw: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, peep: dict, w_gg: Tensor | None, s0: Tensor | None = None):
    """`lstm_seq.lstm_forward` with the gate arithmetic in one kernel per step; same returns."""
    with device_of(xw):
        return _lstm_forward(lay, xw, w_hh, h0, c0, peep, w_gg, s0)


def _lstm_forward(lay, xw, w_hh, h0, c0, peep, w_gg, s0=None):
    _check_size(xw)
    return lstm_steps.forward(lay, xw, w_hh, h0, c0, peep, w_gg, _fwd_launcher, s0)


def _fwd_launcher(z):
    """step(t): `_fwd_step` over the B*H elements of step t (absent buffers: a dummy pointer)."""
    p = [z.peep.get(n, z.A) for n in ("i", "f", "o")]
    opt = [b if b is not None else z.A for b in (z.HC, z.SG, z.Rb)]
    N = z.B * z.H
    grid, fl = (triton.cdiv(N, BLOCK),), lstm_steps.gate_constants(z.lay)
    return lambda t: _fwd_step[grid](z.A, z.C, z.Y, *opt, *p, t, z.T, z.H, N, G=z.G, K=z.K, BLOCK=BLOCK, **fl)


def lstm_backward(lay, saved: tuple, peep: dict, w_hh: Tensor, w_gg: Tensor | None, h0: Tensor,
                  dY: Tensor, dhT: Tensor | None, dcT: Tensor | None, s0: Tensor | None = None, dsT: Tensor | None = None):
    """`lstm_seq.lstm_backward` with the gate arithmetic in one kernel per step; same returns."""
    with device_of(h0):
        return lstm_steps.backward(lay, saved, peep, w_hh, w_gg, h0, dY, dhT, dcT, _bwd_launcher, s0, dsT)


def _bwd_launcher(z):
    """step(t): `_bwd_step` over the B*H elements of step t (absent buffers: a dummy pointer)."""
    p = [z.peep.get(n, z.A) for n in ("i", "f", "o")]
    hc, dsg, ex = (b if b is not None else z.A for b in (z.HC, z.dSG, z.EX))
    N = z.B * z.H
    grid, fl = (triton.cdiv(N, BLOCK),), lstm_steps.gate_constants(z.lay)
    return lambda t: _bwd_step[grid](z.A, z.C, hc, z.dA, dsg, z.dh, z.dc, ex, *p, t, z.T, z.H, N,
                                     G=z.G, K=z.K, BLOCK=BLOCK, **fl)


if triton is not None:

    @triton.jit
    def _cell_point(Gt, C, Hn, Cn, N, H, BLOCK: tl.constexpr):
        """One LSTM step's gate arithmetic for sampling: Gt (n, 4H) pre-activations in
        torch.nn.LSTM's order (i, f, C~, o); C (n, H) -> Hn, Cn (n, H)."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        b = offs // H
        j = offs % H
        row = Gt + b * (4 * H) + j
        i = tl.sigmoid(tl.load(row, mask=m).to(tl.float32))
        f = tl.sigmoid(tl.load(row + H, mask=m).to(tl.float32))
        g = _tanh(tl.load(row + 2 * H, mask=m).to(tl.float32))
        o = tl.sigmoid(tl.load(row + 3 * H, mask=m).to(tl.float32))
        c = f * tl.load(C + offs, mask=m).to(tl.float32) + i * g
        tl.store(Cn + offs, c.to(Cn.dtype.element_ty), mask=m)
        tl.store(Hn + offs, (o * _tanh(c)).to(Hn.dtype.element_ty), mask=m)


def lstm_cell_point(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """(h_t, C_t) from the pre-activations (n, 4H) and C_{t-1} (n, H), one kernel:
    C_t = sigma(f) C_{t-1} + sigma(i) tanh(C~), h_t = sigma(o) tanh(C_t)."""
    n, H = c.shape
    gates, c = gates.contiguous(), c.contiguous()
    _check_size(gates)
    h_new, c_new = torch.empty_like(c), torch.empty_like(c)
    with device_of(c):
        _cell_point[(triton.cdiv(n * H, BLOCK),)](gates, c, h_new, c_new, n * H, H, BLOCK=BLOCK)
    return h_new, c_new
