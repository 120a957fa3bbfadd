"""The time loop around ONE fused gate kernel per step, shared by the GPU (Triton) and CPU (C)
kernels of the equation LSTMs: each step is one matmul (W_h h_{t-1}; FGR: + R [i, f, o]_{t-1})
and one kernel call for all the gate arithmetic of `lstm_seq` (same equations, same buffers:
A holds the gate activations written over the pre-activations). A backend supplies
`make_fwd(bufs) -> step(t)` and `make_bwd(bufs) -> step(t)`; `bufs` names every buffer.

Forward, step t:   A_t += h_{t-1} W_h^T;  FGR: Rb = SG_{t-1} R^T (at t = 0: s_0 R^T, zero without s_0);  kernel(t)
Backward, t = T..1: dh_t = dL/dy_t + da_{t+1} W_h;  FGR: EX = dSG_{t+1} R (at t = T: dL/ds_T, or zero);  kernel(t)
then every weight gradient as one product over all steps (`lstm_seq.weight_grads`).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor


def gate_constants(lay) -> dict:
    """A layout as the kernels' compile-time constants: each gate's column block in a_t (-1:
    absent), its index in R's (i, f, o) order, and the variant's switches."""
    col = {n: (lay.gate_names.index(n) if n in lay.gate_names else -1) for n in "ifgo"}
    sig = {n: (lay.sig_names.index(n) if n in lay.sig_names else -1) for n in "ifo"}
    return dict(KI=col["i"], KF=col["f"], KG=col["g"], KO=col["o"], RI=sig["i"], RF=sig["f"], RO=sig["o"],
                INPUT_ACT=lay.input_act, OUTPUT_ACT=lay.output_act, COUPLED=lay.coupled,
                PEEP=lay.peepholes, FGR=lay.full_recurrence)


def _check_r(lay, w_gg: Tensor | None) -> None:
    """The kernels take FGR from the layout: R must be given exactly when the layout has it."""
    if (w_gg is not None) != lay.full_recurrence:
        raise ValueError(f"the gate matrix R (w_gg) is {'missing' if w_gg is None else 'given'} but the layout "
                         f"has full_recurrence={lay.full_recurrence}; pass R exactly for FGR")


def forward(lay, xw: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, peep: dict, w_gg: Tensor | None, make_fwd,
            s0: Tensor | None = None):
    """`lstm_seq.lstm_forward` with the gate arithmetic in one kernel per step; same returns."""
    _check_r(lay, w_gg)
    peep = {n: p.contiguous() for n, p in peep.items()}  # the kernels index raw pointers
    B, T, GH = xw.shape
    H = lay.H
    k = len(lay.sig_names)
    A = xw.clone(memory_format=torch.contiguous_format)
    C = xw.new_empty(B, T + 1, H)
    C[:, 0] = c0
    Y = xw.new_empty(B, T, H)
    HC = xw.new_empty(B, T, H) if lay.output_act else None
    SG = xw.new_empty(B, T, k * H) if lay.full_recurrence else None
    r = xw.new_zeros(B, k * H) if lay.full_recurrence else None
    bufs = SimpleNamespace(lay=lay, A=A, C=C, Y=Y, HC=HC, SG=SG, Rb=r, peep=peep, B=B, T=T, H=H, G=GH // H, K=k)
    step = make_fwd(bufs)
    w_t = w_hh.t()
    w_gg_t = w_gg.t() if w_gg is not None else None
    h = h0
    for t in range(T):
        A[:, t].addmm_(h, w_t)
        if SG is not None and (t > 0 or s0 is not None):
            torch.mm(SG[:, t - 1] if t > 0 else s0, w_gg_t, out=r)
        step(t)
        h = Y[:, t]
    return Y, C, HC, SG, A


def backward(lay, saved: tuple, peep: dict, w_hh: Tensor, w_gg: Tensor | None, h0: Tensor,
             dY: Tensor, dhT: Tensor | None, dcT: Tensor | None, make_bwd, s0: Tensor | None = None, dsT: Tensor | None = None):
    """`lstm_seq.lstm_backward` with the gate arithmetic in one kernel per step; same returns.
    The kernels index raw pointers, so saved buffers and peepholes are made contiguous here (a
    saved-tensors hook may hand back another layout; a no-op for the usual ones)."""
    from lightning_modules.lstm_seq import output_grad, weight_grads  # lstm_seq imports the backends

    _check_r(lay, w_gg)
    peep = {n: p.contiguous() for n, p in peep.items()}
    saved = tuple(b.contiguous() if b is not None else None for b in saved)
    Y, C, HC, SG, A = saved
    B, T, GH = A.shape
    H = lay.H
    k = len(lay.sig_names)
    dA = A.new_empty(A.shape)
    dSG = A.new_empty(B, T, k * H) if w_gg is not None else None
    dh = A.new_empty(B, H)
    dc = dcT.clone(memory_format=torch.contiguous_format) if dcT is not None else A.new_zeros(B, H)
    ex = A.new_zeros(B, k * H) if w_gg is not None else None
    if ex is not None and dsT is not None:
        ex.copy_(dsT)  # dL/d[i, f, o]_T from a later call
    bufs = SimpleNamespace(lay=lay, A=A, C=C, HC=HC, dA=dA, dSG=dSG, dh=dh, dc=dc, EX=ex, peep=peep,
                           B=B, T=T, H=H, G=GH // H, K=k)
    step = make_bwd(bufs)
    for t in range(T - 1, -1, -1):
        output_grad(t, dY, dhT, dA, w_hh, dh)
        if w_gg is not None and t < T - 1:
            torch.mm(dSG[:, t + 1], w_gg, out=ex)
        step(t)
    dW, dh0, dp, dR, ds0 = weight_grads(lay, dA, dSG, Y, C, SG, h0, w_hh, peep, w_gg, s0)
    return dA, dW, dh0, dc, dp, dR, ds0

