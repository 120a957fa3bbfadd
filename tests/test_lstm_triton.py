"""The GPU paths of the equation LSTM, checked on the CPU.

- The fused Triton kernels (lightning_modules/lstm_triton.py) against the torch-op BPTT of
  lstm_seq, every LSTM variant, values and gradients: Triton's interpreter runs the kernels
  on the CPU (TRITON_INTERPRET=1, set before triton is imported: hence the subprocess).
- The same kernels through Triton's real compiler to an H100 binary.
- The CUDA-graph plumbing (lightning_modules/lstm_graph.py) with an eager stand-in for the graph.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules import lstm_graph, lstm_seq
from lightning_modules.cells import LSTMCell

ROOT = Path(__file__).resolve().parent.parent

CHECK = r"""
import torch
from lightning_modules import lstm_seq, lstm_triton
from lightning_modules.cells import LSTMCell
from lightning_modules.names import LSTM_NAMES

assert lstm_triton.available()
assert not lstm_triton.usable(torch.zeros(1)), "CPU tensors must keep the torch-op path"
torch.manual_seed(0)
B, T, H, I = 3, 5, 8, 6
worst = 0.0
for name in LSTM_NAMES:
    cell = LSTMCell(I, H, name)
    lay = cell.layout()
    x = torch.randn(B, T, I)
    xw = torch.nn.functional.linear(x, cell.weight_ih, cell.bias).detach()
    h0, c0 = torch.randn(B, H), torch.randn(B, H)
    peep = {n: p.detach() for n, p in (cell.peep.items() if cell.peep is not None else [])}
    w_hh = cell.weight_hh.detach()
    w_gg = cell.weight_gg.detach() if cell.weight_gg is not None else None
    s0 = torch.rand(B, w_gg.shape[0]) if w_gg is not None else None  # FGR's carried gates
    dsT = torch.randn(B, w_gg.shape[0]) if w_gg is not None else None
    ref = lstm_seq.lstm_forward(lay, xw, w_hh, h0, c0, peep, w_gg, s0)
    got = lstm_triton.lstm_forward(lay, xw, w_hh, h0, c0, peep, w_gg, s0)
    dY, dhT, dcT = torch.randn(B, T, H), torch.randn(B, H), torch.randn(B, H)
    gr = lstm_seq.lstm_backward(lay, ref, peep, w_hh, w_gg, h0, dY, dhT, dcT, s0, dsT)
    gg = lstm_triton.lstm_backward(lay, got, peep, w_hh, w_gg, h0, dY, dhT, dcT, s0, dsT)
    for r, g in zip(ref + gr, got + gg):  # forward buffers, then (dxw, dW_h, dh0, dc0, dp, dR, ds0)
        if isinstance(r, dict):
            assert r.keys() == g.keys(), name
            r, g = (torch.cat(list(r.values())), torch.cat(list(g.values()))) if r else (None, None)
        assert (r is None) == (g is None), name
        if r is not None:
            d = (r - g).abs().max().item()
            assert d < 1e-4, (name, d)
            worst = max(worst, d)
print("worst", worst)
assert worst < 1e-4
"""


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton not installed (CPU-only torch)")


def run_script(script: str, **env) -> str:
    """python -c script with the repository importable; asserts success, returns stdout."""
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **env)
    r = subprocess.run([sys.executable, "-c", script], env=e, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return r.stdout


@needs_triton
def test_fused_kernels_match_torch_ops_for_every_variant():
    assert "worst" in run_script(CHECK, TRITON_INTERPRET="1")


CELL_POINT = r"""
import torch
from lightning_modules import lstm_triton
torch.manual_seed(0)
gates, c = torch.randn(3, 4 * 40) * 2, torch.randn(3, 40)
h, cn = lstm_triton.lstm_cell_point(gates, c)
i, f, g, o = gates.chunk(4, 1)
c_ref = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
h_ref = torch.sigmoid(o) * torch.tanh(c_ref)
d = max((cn - c_ref).abs().max().item(), (h - h_ref).abs().max().item())
print("worst", d)
assert d < 1e-5
"""


@needs_triton
def test_sampling_cell_kernel_matches_torch_ops():
    run_script(CELL_POINT, TRITON_INTERPRET="1")


COMPILE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lightning_modules import lstm_triton as L
from lightning_modules.lstm_steps import gate_constants
from lightning_modules.cells import LSTMCell
from lightning_modules.names import LSTM_NAMES

def signature(fn, pointers, ints, consts, ptr="*fp32"):
    return {a: ptr if a in pointers else "i32" if a in ints else "constexpr" for a in fn.arg_names}

n = 0
for name, ptr in [(v, "*fp32") for v in LSTM_NAMES] + [("lstm-v", "*bf16")]:  # bf16: a bf16-true model's buffers
    fl = gate_constants(LSTMCell(4, 8, name).layout())
    consts = dict(fl, G=4 - sum(fl[k] < 0 for k in ("KI", "KF", "KO")), K=sum(fl[k] >= 0 for k in ("RI", "RF", "RO")), BLOCK=L.BLOCK)
    for fn, ptrs in ((L._fwd_step, "A C Y HC SG Rb PI PF PO"), (L._bwd_step, "A C HC DA DSG DH DC EX PI PF PO")):
        src = ASTSource(fn=fn, signature=signature(fn, ptrs.split(), ["t", "T", "H", "N"], consts, ptr), constexprs=consts)
        assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm
        n += 1
src = ASTSource(fn=L._cell_point, signature=signature(L._cell_point, ["Gt", "C", "Hn", "Cn"], ["N", "H"], {}), constexprs={"BLOCK": L.BLOCK})
assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm
print("compiled", n + 1)
"""


@needs_triton
def test_kernels_compile_for_an_h100(tmp_path):
    """The interpreter runs the kernels' Python; this runs Triton's real compiler down to an
    sm_90 (H100) binary, every variant, with no GPU needed (ptxas ships with Triton)."""
    out = run_script(COMPILE, TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1", TRITON_INTERPRET="0")
    assert "compiled 23" in out


def test_graph_plumbing_copies_in_replays_and_clones_out():
    lstm_graph.clear()
    torch.manual_seed(0)
    cell = LSTMCell(5, 6, "lstm-fgr")
    lay, B, T, H = cell.layout(), 3, 4, 6
    w_hh, w_gg = cell.weight_hh.detach(), cell.weight_gg.detach()
    peep = {n: p.detach() for n, p in cell.peep.items()}

    def args(seed, b=B):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(b, T, 4 * H, generator=g), torch.randn(b, H, generator=g), torch.randn(b, H, generator=g))

    first = None
    for seed in (1, 2):
        xw, h0, c0 = args(seed)
        s0 = torch.rand(B, 3 * H)  # FGR's carried gates
        want = lstm_seq.lstm_forward(lay, xw, w_hh, h0, c0, peep, w_gg, s0)
        got = lstm_graph.run(lstm_seq.lstm_forward, lay, xw, w_hh, h0, c0, peep, w_gg, s0, replay_cls=lstm_graph.EagerReplay)
        assert all(torch.equal(a, b) for a, b in zip(want, got))  # new inputs reached the replay
        dY, dh, dc, ds = torch.randn(B, T, H), torch.randn(B, H), torch.randn(B, H), torch.randn(B, 3 * H)
        gw = lstm_seq.lstm_backward(lay, want, peep, w_hh, w_gg, h0, dY, dh, dc, s0, ds)
        gg = lstm_graph.run(lstm_seq.lstm_backward, lay, got, peep, w_hh, w_gg, h0, dY, dh, dc, s0, ds, replay_cls=lstm_graph.EagerReplay)
        assert len(gw) == 7 and gw[-1] is not None  # ds0
        for a, b in zip(gw, gg):
            if isinstance(a, dict):
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            else:
                assert torch.equal(a, b)
        if first is None:
            first = (got[0].clone(), got[0])
    assert torch.equal(*first)  # what a call returned is not overwritten by the next replay
    assert len(lstm_graph._GRAPHS) == 2  # forward and backward, each captured once
    for b in range(2, 2 + lstm_graph.MAX_GRAPHS):  # new shapes: new graphs, the oldest dropped
        xw, h0, c0 = args(0, b)
        lstm_graph.run(lstm_seq.lstm_forward, lay, xw, w_hh, h0, c0, peep, w_gg, None, replay_cls=lstm_graph.EagerReplay)
    assert len(lstm_graph._GRAPHS) == lstm_graph.MAX_GRAPHS
    assert not lstm_graph.enabled(torch.zeros(1))  # CPU tensors never take the graph path
    lstm_graph.clear()


def test_fused_kernels_refuse_buffers_their_32_bit_offsets_cannot_address():
    from lightning_modules import lstm_triton

    lstm_triton._check_size(torch.empty(2**31 - 1, device="meta"))
    with pytest.raises(ValueError, match="too large for the fused kernels.*LSTM_TRITON=0"):
        lstm_triton._check_size(torch.empty(128, 4096, 4096, device="meta"))
