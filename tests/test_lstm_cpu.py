"""The compiled C gate kernels of the equation LSTMs (lightning_modules/lstm_cpu.py): equal to the
torch-op BPTT of lstm_seq for every variant, taken by LSTMSequence on the CPU in float32, and
a missing or failing compiler falls back to the torch ops with one warning, not an error."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules import lstm_cpu, lstm_seq
from lightning_modules.cells import LSTMCell
from lightning_modules.names import LSTM_NAMES

ROOT = Path(__file__).resolve().parent.parent
needs_cc = pytest.mark.skipif(lstm_cpu.compiler() is None, reason="no C compiler on this machine")


def _inputs(name: str, B=3, T=6, H=8, I=5):
    torch.manual_seed(sum(map(ord, name)))
    cell = LSTMCell(I, H, name)
    with torch.no_grad():  # non-zero peepholes and R, so that every term is exercised
        for p in cell.parameters():
            p.uniform_(-0.6, 0.6)
    x = torch.randn(B, T, I)
    xw = torch.nn.functional.linear(x, cell.weight_ih, cell.bias).detach()
    peep = {n: p.detach() for n, p in (cell.peep.items() if cell.peep is not None else [])}
    w_gg = cell.weight_gg.detach() if cell.weight_gg is not None else None
    return cell.layout(), xw, cell.weight_hh.detach(), torch.randn(B, H), torch.randn(B, H), peep, w_gg


@needs_cc
@pytest.mark.parametrize("name", LSTM_NAMES)
def test_c_kernels_equal_the_torch_op_bptt(name):
    lay, xw, w_hh, h0, c0, peep, w_gg = _inputs(name)
    assert lstm_cpu.usable(xw, lay)
    ref = lstm_seq.lstm_forward(lay, xw, w_hh, h0, c0, peep, w_gg)
    got = lstm_cpu.lstm_forward(lay, xw, w_hh, h0, c0, peep, w_gg)
    B, T, H = ref[0].shape
    dY, dhT, dcT = torch.randn(B, T, H), torch.randn(B, H), torch.randn(B, H)
    gr = lstm_seq.lstm_backward(lay, ref, peep, w_hh, w_gg, h0, dY, dhT, dcT)
    gg = lstm_cpu.lstm_backward(lay, got, peep, w_hh, w_gg, h0, dY, dhT, dcT)
    if w_gg is not None:  # FGR's carried gates, in (s_0) and out (dL/ds_T)
        s0, dsT = torch.rand(B, w_gg.shape[0]), torch.randn(B, w_gg.shape[0])
        ref = lstm_seq.lstm_forward(lay, xw, w_hh, h0, c0, peep, w_gg, s0)
        got = lstm_cpu.lstm_forward(lay, xw, w_hh, h0, c0, peep, w_gg, s0)
        gr = lstm_seq.lstm_backward(lay, ref, peep, w_hh, w_gg, h0, dY, dhT, dcT, s0, dsT)
        gg = lstm_cpu.lstm_backward(lay, got, peep, w_hh, w_gg, h0, dY, dhT, dcT, s0, dsT)
        assert gr[-1] is not None
    for k, (r, g) in enumerate(zip(ref + gr, got + gg)):  # buffers, then (dxw, dW_h, dh0, dc0, dp, dR, ds0)
        if isinstance(r, dict):
            assert r.keys() == g.keys(), name
            r, g = (torch.cat(list(r.values())), torch.cat(list(g.values()))) if r else (None, None)
        assert (r is None) == (g is None), (name, k)
        if r is not None:
            assert (r - g).abs().max().item() < 2e-5, (name, k, (r - g).abs().max().item())


@needs_cc
def test_lstm_sequence_takes_the_c_path_on_the_cpu_and_the_torch_ops_when_told(monkeypatch):
    lay, xw, w_hh, h0, c0, peep, w_gg = _inputs("lstm-v")
    assert lstm_cpu.usable(xw, lay)
    assert not lstm_cpu.usable(xw.double(), lay), "float64 keeps the torch ops (gradcheck)"
    monkeypatch.setenv("LSTM_CPU_KERNEL", "0")
    assert not lstm_cpu.usable(xw, lay)
    off = lstm_seq.LSTMSequence.apply(lay, xw, w_hh, h0, c0, None, None, None, None)
    monkeypatch.setenv("LSTM_CPU_KERNEL", "1")
    on = lstm_seq.LSTMSequence.apply(lay, xw, w_hh, h0, c0, None, None, None, None)
    for a, b in zip(off, on):
        assert (a - b).abs().max().item() < 1e-5


@needs_cc
def test_the_library_is_built_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_CPU_CACHE", str(tmp_path))
    defs = lstm_cpu._defines(_inputs("lstm")[0])
    first = lstm_cpu.build(defs)
    stamp = first.stat().st_mtime_ns
    assert lstm_cpu.build(defs) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "no temporary files left behind"


def test_a_compiler_that_fails_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_CPU_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    with pytest.raises(RuntimeError, match="false could not build the LSTM step kernel"):
        lstm_cpu.build(lstm_cpu._defines(_inputs("lstm")[0]))
    assert list(tmp_path.iterdir()) == [], "a failed build leaves nothing in the cache"


FALLBACK = r"""
import warnings, torch
from lightning_modules import lstm_cpu
from lightning_modules.recurrent import RecurrentStack
torch.manual_seed(0)
layer = RecurrentStack("lstm-cifg", 6, 6, 1, fused=False).layers[0]
x = torch.randn(2, 5, 6)
state = (torch.zeros(2, 6), torch.zeros(2, 6))
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    y, _ = layer(x, state)
    y2, _ = layer(x, state)
y_ref, _ = layer.loop(x, state)
assert (y - y_ref).abs().max().item() < 1e-6
msgs = [str(m.message) for m in w if "LSTM CPU kernel" in str(m.message)]
assert len(msgs) == 1, msgs
print(msgs[0])
"""


def test_without_a_compiler_the_torch_ops_run_with_one_warning(tmp_path):
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "LSTM_CPU_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "LSTM CPU kernel unavailable, using torch ops instead" in res.stdout


@needs_cc
def test_cc_may_carry_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_CPU_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", f"{lstm_cpu.compiler()[0]} -std=c11")
    assert lstm_cpu.build(lstm_cpu._defines(_inputs("lstm")[0])).exists()


@needs_cc
def test_saved_buffers_in_another_layout_give_the_same_gradients():
    """A saved-tensors hook may hand back non-contiguous buffers: the C path copies them."""
    lay, xw, w_hh, h0, c0, peep, w_gg = _inputs("lstm-fgr")
    w_hh.requires_grad_(True)
    pack = lambda t: t.transpose(0, 1).contiguous() if t.dim() == 3 else t  # noqa: E731
    unpack = lambda t: t.transpose(0, 1) if t.dim() == 3 else t  # noqa: E731
    grads = []
    for hooks in (False, True):
        w_hh.grad = None
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack) if hooks else torch.enable_grad():
            y = lstm_seq.LSTMSequence.apply(lay, xw, w_hh, h0, c0, peep.get("i"), peep.get("f"), peep.get("o"), w_gg)[0]
        y.square().sum().backward()
        grads.append(w_hh.grad.clone())
    assert (grads[0] - grads[1]).abs().max().item() < 1e-5


def test_fgr_without_its_gate_matrix_is_a_clear_error():
    lay, xw, w_hh, h0, c0, peep, w_gg = _inputs("lstm-fgr")
    from lightning_modules import lstm_steps

    with pytest.raises(ValueError, match="R \\(w_gg\\) is missing.*full_recurrence=True"):
        lstm_steps.forward(lay, xw, w_hh, h0, c0, peep, None, lambda z: None)


def test_the_shared_step_loop_hands_every_backend_contiguous_buffers():
    """Contiguity is made in lstm_steps, so the Triton kernels get it as the C ones do."""
    from lightning_modules import lstm_steps

    lay, xw, w_hh, h0, c0, peep, w_gg = _inputs("lstm-v")
    saved = lstm_seq.lstm_forward(lay, xw, w_hh, h0, c0, peep, w_gg)
    strided = tuple(b.transpose(0, 1).contiguous().transpose(0, 1) if b is not None else None for b in saved)
    assert not strided[0].is_contiguous()
    peep_strided = {n: torch.stack([p, p], 1)[:, 0] for n, p in peep.items()}
    seen = []

    def make_bwd(z):
        seen.extend(b for b in (z.A, z.C, z.HC, *z.peep.values()) if b is not None)
        return lambda t: None

    B, T, H = saved[0].shape
    lstm_steps.backward(lay, strided, peep_strided, w_hh, w_gg, h0, torch.zeros(B, T, H), None, None, make_bwd)
    assert seen and all(b.is_contiguous() for b in seen)
