"""The GRU over a whole sequence, with back-propagation through time written by hand (one
`torch.autograd.Function` per layer call), in both forms of `cells.GRUCell`.

Why: as for the LSTM (`lstm_seq`), the per-step autograd loop (`GRUCell.loop`) spends most
of its CPU time recording nodes. Here the forward pass runs without autograd into
preallocated buffers (the gate activations written in place over the pre-activations) and
the backward pass is BPTT unrolled by hand, with the weight gradients taken after the loop
as one matmul over all steps. Rows of a_t: (r, z, n); xw_t = W_x x_t (+ b_x) is hoisted.

Forward, step t, form "lecture" (the slide; no biases, the reset gate before the matmul):

    r_t = sigma(a_r + W_hr h_{t-1})    z_t = sigma(a_z + W_hz h_{t-1})
    q_t = r_t * h_{t-1}                n_t = tanh(a_n + W_hn q_t)
    h_t = (1 - z_t) * h_{t-1} + z_t * n_t = h_{t-1} + z_t * (n_t - h_{t-1})

form "torch" (torch.nn.GRU's, with the lecture's z; the reset gate after the matmul):

    g_t = W_h h_{t-1} + b_h            r_t = sigma(a_r + g_r)    z_t = sigma(a_z + g_z)
    n_t = tanh(a_n + r_t * g_n)        h_t = h_{t-1} + z_t * (n_t - h_{t-1})

Backward, t = T .. 1 (d = dL/d; dh_t = dL/dy_t + the carry from step t+1):

    da_z = dh_t * (n_t - h_{t-1}) * z_t (1 - z_t)     da_n = dh_t * z_t * (1 - n_t^2)
    lecture: dq = W_hn^T da_n    da_r = dq * h_{t-1} * r_t (1 - r_t)
             dh_{t-1} = dh_t (1 - z_t) + dq * r_t + W_hr^T da_r + W_hz^T da_z
             dW_h[r,z] = sum_t da_[r,z] h_{t-1}^T    dW_hn = sum_t da_n q_t^T
    torch:   dg_n = da_n * r_t   da_r = da_n * g_n * r_t (1 - r_t)   dg_[r,z] = da_[r,z]
             dh_{t-1} = dh_t (1 - z_t) + W_h^T dg_t
             dW_h = sum_t dg_t h_{t-1}^T    db_h = sum_t dg_t
    dxw_t = da_t

The recurrence and its BPTT run in the promoted dtype of xw and W_h (under autocast:
float32, also when backward is called inside the autocast region).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lightning_modules.lstm_seq import no_autocast


def gru_forward(lecture: bool, xw: Tensor, w_hh: Tensor, b_hh: Tensor | None, h0: Tensor):
    """Run the sequence; returns (Y, A, GN): outputs h_1..h_T, the gate activations
    (r, z, n) and, for the torch form, g_n = W_hn h_{t-1} + b_hn (else None), all (B, T, .)."""
    B, T, _ = xw.shape
    H = h0.shape[1]
    A = xw.clone(memory_format=torch.contiguous_format)
    Y = xw.new_empty(B, T, H)
    tmp = xw.new_empty(B, H)
    w_t = w_hh.t()
    GN = None if lecture else xw.new_empty(B, T, H)
    g = None if lecture else xw.new_empty(B, 3 * H)
    h = h0
    for t in range(T):
        a = A[:, t]
        rz, n = a[:, : 2 * H], a[:, 2 * H :]
        r, z = a[:, :H], a[:, H : 2 * H]
        if lecture:
            rz.addmm_(h, w_t[:, : 2 * H]).sigmoid_()
            n.addmm_(torch.mul(r, h, out=tmp), w_t[:, 2 * H :])
        else:
            torch.addmm(b_hh, h, w_t, out=g)
            rz.add_(g[:, : 2 * H]).sigmoid_()
            GN[:, t] = g[:, 2 * H :]
            n.addcmul_(r, g[:, 2 * H :])
        n.tanh_()
        y = Y[:, t]
        torch.addcmul(h, z, torch.sub(n, h, out=tmp), out=y)
        h = y
    return Y, A, GN


def gru_backward(lecture: bool, saved: tuple, w_hh: Tensor, h0: Tensor, dY: Tensor, dhT: Tensor | None):
    """BPTT through the stored sequence; returns (dxw, dW_h, db_h or None, dh0)."""
    Y, A, GN = saved
    B, T, _ = A.shape
    H = h0.shape[1]
    h_prev = torch.cat([h0.unsqueeze(1), Y[:, :-1]], 1)
    dA = torch.empty_like(A)
    DG = None if lecture else torch.empty_like(A)  # dg_t = (da_r, da_z, da_n * r_t)
    dh = dY[:, -1] + dhT if dhT is not None else dY[:, -1].clone()
    tmp = A.new_empty(B, H)
    ones = A.new_ones(B, H)
    dq = A.new_empty(B, H)
    w_n = w_hh[2 * H :]
    for t in range(T - 1, -1, -1):
        a, d, hp = A[:, t], dA[:, t], h_prev[:, t]
        r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
        dr, dz, dn = d[:, :H], d[:, H : 2 * H], d[:, 2 * H :]
        torch.mul(dh, z, out=dn).mul_(torch.addcmul(ones, n, n, value=-1, out=tmp))
        torch.mul(dh, torch.sub(n, hp, out=dz), out=dz).mul_(torch.addcmul(z, z, z, value=-1, out=tmp))
        sig_r = torch.addcmul(r, r, r, value=-1, out=tmp)  # r (1 - r)
        if lecture:
            torch.mm(dn, w_n, out=dq)
            torch.mul(dq, hp, out=dr).mul_(sig_r)
            nxt = torch.addmm(dq.mul_(r), d[:, : 2 * H], w_hh[: 2 * H])  # dq r + W_h[r,z]^T da_[r,z]
        else:
            torch.mul(dn, GN[:, t], out=dr).mul_(sig_r)
            dg = DG[:, t]
            dg[:, : 2 * H] = d[:, : 2 * H]
            torch.mul(dn, r, out=dg[:, 2 * H :])
            nxt = dg @ w_hh
        nxt.addcmul_(dh, torch.sub(ones, z, out=tmp))
        if t > 0:
            nxt.add_(dY[:, t - 1])
        dh = nxt
    hp2 = h_prev.reshape(B * T, H)
    if lecture:
        dW = torch.cat([dA[..., : 2 * H].reshape(B * T, -1).t() @ hp2,
                        dA[..., 2 * H :].reshape(B * T, H).t() @ (A[..., :H] * h_prev).reshape(B * T, H)], 0)
        db = None
    else:
        dW = DG.reshape(B * T, -1).t() @ hp2
        db = DG.sum((0, 1))
    return dA, dW, db, dh


class GRUSequence(torch.autograd.Function):
    """y, h_T = GRUSequence.apply(lecture, xw, W_h, b_h or None, h_0)."""

    @staticmethod
    def forward(ctx, lecture: bool, xw, w_hh, b_hh, h0):
        if xw.dim() != 3 or xw.shape[1] == 0 or xw.shape[2] != w_hh.shape[0]:
            raise ValueError(f"GRUSequence: xw must be (B, T >= 1, 3H) with 3H = {w_hh.shape[0]}, got {tuple(xw.shape)}")
        if (b_hh is None) != lecture:
            raise ValueError("GRUSequence: b_hh must be None for the lecture form and given for the torch form")
        dt = torch.promote_types(xw.dtype, w_hh.dtype)
        xw_, w_hh_, h0_ = xw.to(dt), w_hh.to(dt), h0.to(dt)
        b_hh_ = b_hh.to(dt) if b_hh is not None else None
        with no_autocast(xw):
            Y, A, GN = gru_forward(lecture, xw_, w_hh_, b_hh_, h0_)
        ctx.lecture, ctx.dtypes = lecture, (xw.dtype, w_hh.dtype, h0.dtype)
        ctx.save_for_backward(Y, A, GN, w_hh_, h0_)
        return Y, Y[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dhT):
        Y, A, GN, w_hh, h0 = ctx.saved_tensors
        dt = A.dtype
        dY = dY.to(dt) if dY is not None else torch.zeros_like(Y)
        with no_autocast(A):
            dA, dW, db, dh0 = gru_backward(ctx.lecture, (Y, A, GN), w_hh, h0, dY, dhT.to(dt) if dhT is not None else None)
        x_dt, w_dt, h_dt = ctx.dtypes
        return None, dA.to(x_dt), dW.to(w_dt), db.to(w_dt) if db is not None else None, dh0.to(h_dt)
