"""Equation cells: equal to torch.nn after weight mapping, gradcheck, each variant's defining property."""
from __future__ import annotations

import pytest
import torch

from lightning_modules.cells import CELLS, LSTM_VARIANTS, GRUCell, LSTMCell, make_cell
from lightning_modules.recurrent import RecurrentStack, to_equation, to_fused

B, T, I, H, L = 3, 7, 5, 4, 2


@pytest.fixture(autouse=True)
def float64():
    """These tests compare to 1e-10: float64 throughout, restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_equation_cells_match_torch_kernels(cell):
    torch.manual_seed(0)
    fused = RecurrentStack(cell, I, H, L, fused=True).double()
    eq = to_equation(fused)
    x = torch.randn(B, T, I, requires_grad=True)
    s0 = tuple(torch.randn(L, B, H) for _ in range(2 if cell == "lstm" else 1))
    y1, st1 = fused(x, s0)
    y2, st2 = eq(x, s0)
    assert rel(y2, y1) <= 1e-10
    for a, b in zip(st2, st1):
        assert rel(a, b) <= 1e-10
    g1 = torch.autograd.grad((y1**2).sum() + sum((s**3).sum() for s in st1), [x, *fused.parameters()])
    g2 = torch.autograd.grad((y2**2).sum() + sum((s**3).sum() for s in st2), [x, *eq.parameters()])
    assert rel(g2[0], g1[0]) <= 1e-10  # input gradient
    # and back: the round trip computes the same function
    assert rel(to_fused(eq)(x, s0)[0], y1) <= 1e-10
    # parameter gradients, compared in the fused layout
    eq_grads = dict(zip([n for n, _ in eq.named_parameters()], g2[1:]))
    fz_grads = dict(zip([n for n, _ in fused.named_parameters()], g1[1:]))
    for k in range(L):
        if cell == "gru":
            sign = torch.ones(3 * H)
            sign[H : 2 * H] = -1
            assert rel(eq_grads[f"layers.{k}.weight_hh"] * sign[:, None], fz_grads[f"rnn.weight_hh_l{k}"]) <= 1e-10
            assert rel(eq_grads[f"layers.{k}.bias_hh"] * sign, fz_grads[f"rnn.bias_hh_l{k}"]) <= 1e-10
        else:
            assert rel(eq_grads[f"layers.{k}.weight_hh"], fz_grads[f"rnn.weight_hh_l{k}"]) <= 1e-10
            # b = b_ih + b_hh: each torch bias gets the cell bias's gradient
            assert rel(eq_grads[f"layers.{k}.bias"], fz_grads[f"rnn.bias_ih_l{k}"]) <= 1e-10
        assert rel(eq_grads[f"layers.{k}.weight_ih"] * (sign[:, None] if cell == "gru" else 1), fz_grads[f"rnn.weight_ih_l{k}"]) <= 1e-10


def test_fused_loads_equation_weights():
    torch.manual_seed(1)
    eq = RecurrentStack("lstm", I, H, L, fused=False).double()
    fz = to_fused(eq)
    x = torch.randn(B, T, I)
    assert rel(fz(x)[0], eq(x)[0]) <= 1e-10


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_every_cell(cell):
    torch.manual_seed(2)
    m = make_cell(cell, 3, 2).double()
    x = torch.randn(2, 3, 3, requires_grad=True)
    state = tuple(torch.randn(2, 2, requires_grad=True) for _ in range(2 if isinstance(m, LSTMCell) else 1))

    def f(x, *s):
        y, st = m(x, s)
        return (y, *st)

    assert torch.autograd.gradcheck(f, (x, *state), eps=1e-6, atol=1e-6)
    params = list(m.parameters())
    assert torch.autograd.gradcheck(lambda *ps: _with_params(m, ps, x, state), params, eps=1e-6, atol=1e-6)


def _with_params(m, ps, x, state):
    return torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], ps)), (x, state))[0]


def _step(cell, x, h, c):
    y, (h2, c2) = cell(x[:, None], (h, c))
    return h2, c2


def gates_of(cell: LSTMCell, x, h, c):
    """Recompute the pre-activations of one step by hand from the cell's weights."""
    pre = x @ cell.weight_ih.T + cell.bias + h @ cell.weight_hh.T
    return dict(zip(cell.gate_names, pre.split(cell.hidden, 1)))


def test_variant_defining_properties():
    torch.manual_seed(3)
    x, h, c = torch.randn(4, I), torch.randn(4, H), torch.randn(4, H)
    sig, tanh = torch.sigmoid, torch.tanh

    # NFG: f = 1, the old state is carried unscaled
    m = LSTMCell(I, H, "lstm-nfg")
    p = gates_of(m, x, h, c)
    i = sig(p["i"] + m.peep["i"] * c)
    h2, c2 = _step(m, x, h, c)
    assert torch.allclose(c2, c + i * tanh(p["g"]))
    assert "f" not in m.gate_names

    # CIFG: f = 1 - i
    m = LSTMCell(I, H, "lstm-cifg")
    p = gates_of(m, x, h, c)
    i = sig(p["i"] + m.peep["i"] * c)
    h2, c2 = _step(m, x, h, c)
    assert torch.allclose(c2, (1 - i) * c + i * tanh(p["g"]))

    # NIG: i = 1
    m = LSTMCell(I, H, "lstm-nig")
    p = gates_of(m, x, h, c)
    f = sig(p["f"] + m.peep["f"] * c)
    h2, c2 = _step(m, x, h, c)
    assert torch.allclose(c2, f * c + tanh(p["g"]))

    # NOG: o = 1, h = tanh(C)
    m = LSTMCell(I, H, "lstm-nog")
    h2, c2 = _step(m, x, h, c)
    assert torch.allclose(h2, tanh(c2))

    # NIAF: g(x) = x
    m = LSTMCell(I, H, "lstm-niaf")
    p = gates_of(m, x, h, c)
    i, f = sig(p["i"] + m.peep["i"] * c), sig(p["f"] + m.peep["f"] * c)
    h2, c2 = _step(m, x, h, c)
    assert torch.allclose(c2, f * c + i * p["g"])

    # NOAF: h = o * C; the output peephole looks at the new state C_t
    m = LSTMCell(I, H, "lstm-noaf")
    p = gates_of(m, x, h, c)
    h2, c2 = _step(m, x, h, c)
    o = sig(p["o"] + m.peep["o"] * c2)
    assert torch.allclose(h2, o * c2)

    # V: peepholes i, f on C_{t-1}, o on C_t; NP/lstm: none
    m = LSTMCell(I, H, "lstm-v")
    p = gates_of(m, x, h, c)
    i, f = sig(p["i"] + m.peep["i"] * c), sig(p["f"] + m.peep["f"] * c)
    c_new = f * c + i * tanh(p["g"])
    h2, c2 = _step(m, x, h, c)
    assert torch.allclose(c2, c_new) and torch.allclose(h2, sig(p["o"] + m.peep["o"] * c_new) * tanh(c_new))
    assert LSTMCell(I, H, "lstm-np").peep is None and LSTMCell(I, H, "lstm").peep is None

    # FGR: with the gate-to-gate weights zero it is V; with them, step 2 differs
    m = LSTMCell(I, H, "lstm-fgr")
    v = LSTMCell(I, H, "lstm-v")
    v.load_state_dict({k: w for k, w in m.state_dict().items() if k != "weight_gg"})
    xs = torch.randn(4, 2, I)
    with torch.no_grad():
        m.weight_gg.zero_()
    assert torch.allclose(m(xs, (h, c))[0], v(xs, (h, c))[0])
    with torch.no_grad():
        m.weight_gg.normal_()
    y_m, y_v = m(xs, (h, c))[0], v(xs, (h, c))[0]
    assert torch.allclose(y_m[:, 0], y_v[:, 0]) and not torch.allclose(y_m[:, 1], y_v[:, 1])
    assert m.weight_gg.shape == (3 * H, 3 * H)


def test_gru_lecture_form_is_the_slide():
    torch.manual_seed(4)
    m = GRUCell(I, H, "lecture")
    assert m.bias_ih is None
    x, h = torch.randn(4, I), torch.randn(4, H)
    Wx, Wh = m.weight_ih, m.weight_hh
    r = torch.sigmoid(x @ Wx[:H].T + h @ Wh[:H].T)
    z = torch.sigmoid(x @ Wx[H : 2 * H].T + h @ Wh[H : 2 * H].T)
    n = torch.tanh(x @ Wx[2 * H :].T + (r * h) @ Wh[2 * H :].T)
    y, (h2,) = m(x[:, None], (h,))
    assert torch.allclose(h2, (1 - z) * h + z * n)


def test_unknown_cell_is_an_error():
    with pytest.raises(ValueError, match="unknown cell 'lstm-xyz'"):
        make_cell("lstm-xyz", 2, 2)
    with pytest.raises(ValueError, match="no fused kernel"):
        RecurrentStack("lstm-v", 2, 2, fused=True)
    assert set(LSTM_VARIANTS) >= {"lstm-v", "lstm-nig", "lstm-nfg", "lstm-nog", "lstm-niaf", "lstm-noaf", "lstm-np", "lstm-cifg", "lstm-fgr"}


@pytest.mark.parametrize("variant", list(LSTM_VARIANTS))
@pytest.mark.parametrize("steps", [1, 6])
def test_hand_written_bptt_equals_the_autograd_loop(variant, steps):
    """LSTMCell.forward (whole sequence, backward by hand) = LSTMCell.loop (autograd per step):
    outputs, final state, and gradients of inputs, initial state and every parameter."""
    torch.manual_seed(4)
    m = LSTMCell(I, H, variant)
    with torch.no_grad():  # non-zero peepholes and gate recurrence, so their paths count
        for p in m.parameters():
            p.uniform_(-0.8, 0.8)
    x = torch.randn(B, steps, I, requires_grad=True)
    h0, c0 = torch.randn(B, H, requires_grad=True), torch.randn(B, H, requires_grad=True)
    w = torch.randn(B, steps, H)
    got = []
    for run in (m.forward, m.loop):
        y, (h, c, *gates) = run(x, (h0, c0))  # FGR: its gates [i, f, o]_T too
        loss = (y * w).sum() + (h**2).sum() + (c.sin()).sum() + sum(g.cos().sum() for g in gates)
        got.append((y, h, c, *torch.autograd.grad(loss, [x, h0, c0, *m.parameters()])))
    names = ["y", "h_T", "C_T", "dx", "dh0", "dC0", *(f"d{n}" for n, _ in m.named_parameters())]
    for name, a, b in zip(names, *got):
        assert (a - b).norm() <= 1e-12 * b.norm() or (a == b).all(), name  # FGR's dR is 0 when T = 1


def test_hand_written_bptt_without_grad_and_in_float32():
    torch.manual_seed(5)
    m = LSTMCell(I, H, "lstm-v").float()
    x = torch.randn(B, T, I, dtype=torch.float32)
    s = (torch.zeros(B, H, dtype=torch.float32), torch.zeros(B, H, dtype=torch.float32))
    with torch.no_grad():
        y, (h, c) = m(x, s)
        y_ref, (h_ref, c_ref) = m.loop(x, s)
    assert y.dtype == torch.float32 and not y.requires_grad
    assert torch.allclose(y, y_ref, atol=1e-6) and torch.equal(h, y[:, -1]) and torch.allclose(c, c_ref, atol=1e-6)


@pytest.mark.parametrize("form", ["lecture", "torch"])
@pytest.mark.parametrize("steps", [1, 6])
def test_gru_hand_written_bptt_equals_the_autograd_loop(form, steps):
    """GRUCell.forward (gru_seq, backward by hand) = GRUCell.loop (autograd per step): outputs,
    final state, and gradients of inputs, initial state and every parameter."""
    torch.manual_seed(6)
    m = GRUCell(I, H, form)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.8, 0.8)
    x = torch.randn(B, steps, I, requires_grad=True)
    h0 = torch.randn(B, H, requires_grad=True)
    w = torch.randn(B, steps, H)
    got = []
    for run in (m.forward, m.loop):
        y, (h,) = run(x, (h0,))
        loss = (y * w).sum() + (h.sin()).sum()
        got.append((y, h, *torch.autograd.grad(loss, [x, h0, *m.parameters()])))
    names = ["y", "h_T", "dx", "dh0", *(f"d{n}" for n, _ in m.named_parameters())]
    assert len(names) == (8 if form == "torch" else 6)
    for name, a, b in zip(names, *got):
        assert (a - b).norm() <= 1e-12 * b.norm(), name
    # only the last output or only the final state carries a gradient
    y, (h,) = m(x, (h0,))
    gy = torch.autograd.grad(y.sum(), [x, h0])
    gl = torch.autograd.grad(m.loop(x, (h0,))[0].sum(), [x, h0])
    assert all((a - b).norm() <= 1e-12 * b.norm() for a, b in zip(gy, gl))
    gh = torch.autograd.grad(m(x, (h0,))[1][0].sum(), [x, h0])
    ghl = torch.autograd.grad(m.loop(x, (h0,))[1][0].sum(), [x, h0])
    assert all((a - b).norm() <= 1e-12 * b.norm() for a, b in zip(gh, ghl))


def test_gru_hand_written_bptt_without_grad_in_float32_and_bf16_autocast():
    torch.manual_seed(7)
    m = GRUCell(I, H, "lecture").float()
    x = torch.randn(B, T, I, dtype=torch.float32)
    s = (torch.randn(B, H, dtype=torch.float32),)
    with torch.no_grad():
        y, (h,) = m(x, s)
        y_ref, (h_ref,) = m.loop(x, s)
    assert y.dtype == torch.float32 and not y.requires_grad
    assert torch.allclose(y, y_ref, atol=1e-6) and torch.equal(h, y[:, -1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, _ = m(x.requires_grad_(), s)
    assert y16.dtype == torch.float32  # the recurrence runs in the promoted dtype
    y16.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and m.weight_hh.grad.dtype == torch.float32
    assert (y16 - y_ref).abs().max() < 0.05  # bf16 input projection only


def test_gru_sequence_refuses_bad_arguments_with_a_clear_message():
    from lightning_modules.gru_seq import GRUSequence

    w, h0 = torch.randn(3 * H, H), torch.zeros(B, H)
    with pytest.raises(ValueError, match="T >= 1"):
        GRUSequence.apply(True, torch.randn(B, 0, 3 * H), w, None, h0)
    with pytest.raises(ValueError, match="3H"):
        GRUSequence.apply(True, torch.randn(B, T, 2 * H), w, None, h0)
    with pytest.raises(ValueError, match="b_hh"):
        GRUSequence.apply(False, torch.randn(B, T, 3 * H), w, None, h0)
    with pytest.raises(ValueError, match="b_hh"):
        GRUSequence.apply(True, torch.randn(B, T, 3 * H), w, torch.zeros(3 * H), h0)


@pytest.mark.parametrize("cell", ["lstm", "lstm-fgr", "gru-lecture", "gru"])
def test_hand_written_bptt_ignores_an_autocast_region_around_backward(cell):
    """Lightning's manual_backward runs inside the precision plugin's autocast region: the
    hand-written backward must still run in float32 (its docstring's promise), giving the
    same gradients as a backward called outside the region."""
    torch.manual_seed(8)
    m = make_cell(cell, I, H).float()
    x = torch.randn(B, T, I, dtype=torch.float32)
    s = tuple(torch.randn(B, H, dtype=torch.float32) for _ in range(2 if m.has_cell else 1))
    grads = []
    for inside in (True, False):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, st = m(x, s)
            loss = (y * torch.linspace(-1, 1, H)).sum() + st[0].sum()
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("cell", ["lstm-v", "gru-lecture"])
def test_hand_written_bptt_runs_on_the_meta_device(cell):
    """Shape inference (meta tensors, as in FLOP counting) goes through the hand-written path."""
    m = make_cell(cell, I, H).to("meta")
    x = torch.empty(B, T, I, device="meta")
    s = tuple(torch.empty(B, H, device="meta") for _ in range(2 if m.has_cell else 1))
    y, st = m(x, s)
    assert y.shape == (B, T, H) and y.device.type == "meta" and st[0].shape == (B, H)


@pytest.mark.parametrize("cell,fused", [("lstm", True), ("lstm", False), ("lstm-v", False), ("gru", True), ("gru-lecture", False), ("rnn", True)])
def test_weight_drop_is_dropconnect_on_the_recurrent_matrices(cell, fused):
    from lightning_modules.recurrent import RecurrentStack

    torch.manual_seed(0)
    p = 0.5
    st = RecurrentStack(cell, 6, 16, layers=2, fused=fused, weight_drop=p)
    ref = RecurrentStack(cell, 6, 16, layers=2, fused=fused)
    ref.load_state_dict(st.state_dict())  # DropConnect adds no weights
    x = torch.randn(3, 9, 6)
    st.eval(), ref.eval()
    assert torch.equal(st(x)[0], ref(x)[0])  # evaluation: W_hh itself
    st.train()
    y1, y2 = st(x)[0], st(x)[0]
    assert not torch.allclose(y1, y2)  # a new mask per call
    hh = [w for n, w in st.named_parameters() if "weight_hh" in n]
    assert len(hh) == 2
    st.zero_grad()
    st(x)[0].square().sum().backward()
    for w in hh:  # a dropped entry of W_hh gets no gradient; about p of them are dropped
        zero = (w.grad == 0).float().mean().item()
        assert 0.4 < zero < 0.6, zero
    ih = [w for n, w in st.named_parameters() if "weight_ih" in n]
    assert all((w.grad == 0).float().mean().item() < 0.05 for w in ih)  # the input weights are not dropped
    # one mask per call, the same at every time step: the output is the plain model's with
    # W_hh' = M * W_hh / (1 - p) in place of W_hh (masks drawn layer by layer, as here)
    torch.manual_seed(1)
    y = st(x)[0]
    torch.manual_seed(1)
    with torch.no_grad():
        for w_ref, w in zip([w for n, w in ref.named_parameters() if "weight_hh" in n], hh):
            w_ref.copy_(torch.nn.functional.dropout(w, p, training=True))
    assert torch.allclose(y, ref(x)[0], atol=1e-6)
    with pytest.raises(ValueError, match="weight_drop must be in"):
        RecurrentStack(cell, 6, 16, weight_drop=1.0)


@pytest.mark.parametrize("cell,fused", [("lstm", True), ("gru", True), ("lstm-cifg", False), ("gru-lecture", False)])
def test_one_mask_runs_a_sequence_split_into_calls_as_one_call(cell, fused):
    """Inside one_mask, two calls draw W_hh' once: their outputs are one call's over the
    whole sequence (same seed); outside it the second call draws a new mask."""
    from lightning_modules.recurrent import RecurrentStack

    torch.manual_seed(0)
    st = RecurrentStack(cell, 6, 16, layers=2, fused=fused, weight_drop=0.5).train()  # dropout 0: masks are the only draws
    x = torch.randn(3, 9, 6)
    torch.manual_seed(1)
    whole = st(x)[0]

    def split():
        torch.manual_seed(1)
        a, s = st(x[:, :4])
        return torch.cat([a, st(x[:, 4:], s)[0]], 1)

    with st.one_mask():
        y = split()
    assert torch.allclose(y, whole, atol=1e-6)
    assert not torch.allclose(split(), whole, atol=1e-3)  # a mask per call
    assert st._masks is None  # closed: the next call draws its own


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_weight_drop_leaves_the_fused_modules_parameters_in_place(cell, monkeypatch):
    """Swapping a torch.nn.LSTM's weights for a call makes it re-flatten them, in place on CUDA,
    which breaks the backward of an earlier call (TBPTT runs the model twice per step). The
    dropped weights go to the kernel's functional form instead: no re-flattening, and two
    calls before one backward work."""
    from lightning_modules.recurrent import RecurrentStack

    torch.manual_seed(0)
    st = RecurrentStack(cell, 6, 16, layers=2, fused=True, weight_drop=0.3).train()
    flattened = []
    cls = type(st.rnn)
    real = cls.flatten_parameters
    monkeypatch.setattr(cls, "flatten_parameters", lambda self: (flattened.append(1), real(self))[1])
    params = list(st.rnn._flat_weights)
    versions = [p._version for p in params]
    x = torch.randn(3, 9, 6)
    y1, s = st(x)
    y2, _ = st(x, tuple(t.detach() for t in s))
    (y1.square().sum() + y2.square().sum()).backward()
    assert flattened == [] and all(a is b for a, b in zip(params, st.rnn._flat_weights))
    assert [p._version for p in params] == versions
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_sequence_split_into_calls_is_the_same_network(cell, dtype):
    """TBPTT windows, evaluation chunks and sampling run a sequence in several calls with the
    state carried: outputs and gradients must equal one call over all of it. FGR's gates feed
    the next step, so they are state too (float64: the torch ops; float32: the C kernels)."""
    from lightning_modules.lm import CharRNN

    torch.manual_seed(3)
    m = CharRNN(11, cell, hidden=H, layers=L).to(dtype)
    x = torch.randint(0, 11, (B, 9))
    whole, _ = m(x)
    whole.square().sum().backward()
    want = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    a, s = m(x[:, :4])
    b, _ = m(x[:, 4:], s)  # the state not detached: the gradient flows back into the first call
    (a.square().sum() + b.square().sum()).backward()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert (torch.cat([a, b], 1) - whole).abs().max().item() < tol
    for p, g in zip(m.parameters(), want):
        assert (p.grad - g).abs().max().item() < tol * 10
    with torch.no_grad():  # token by token, as the sampler runs it
        s, steps = None, []
        for t in range(x.shape[1]):
            y, s = m(x[:, t : t + 1], s)
            steps.append(y)
        assert (torch.cat(steps, 1) - whole).abs().max().item() < tol


def test_fgr_carries_its_gates_in_the_state_and_the_loop_agrees():
    torch.manual_seed(4)
    m = LSTMCell(I, H, "lstm-fgr").double()
    assert m.state_widths == (H, H, 3 * H)
    x = torch.randn(B, T, I, dtype=torch.float64)
    h, c, s = (torch.randn(B, w, dtype=torch.float64, requires_grad=True) for w in m.state_widths)
    y1, st1 = m(x, (h, c, s))
    y2, st2 = m.loop(x, (h, c, s))
    assert len(st1) == len(st2) == 3
    assert torch.allclose(y1, y2, atol=1e-12) and all(torch.allclose(u, v, atol=1e-12) for u, v in zip(st1, st2))
    # gradients of the carried gates, in and out (the R^T da_1 and dL/ds_T terms of the BPTT)
    f = lambda *a: (lambda y, st: y.sum() + (st[2] * torch.linspace(-1, 1, 3 * H, dtype=torch.float64)).sum())(*m(x, a))  # noqa: E731
    assert torch.autograd.gradcheck(f, (h, c, s))
    g1 = torch.autograd.grad(y1.sum() + st1[2].sum(), (s, m.weight_gg))
    g2 = torch.autograd.grad(y2.sum() + st2[2].sum(), (s, m.weight_gg))
    assert all(torch.allclose(u, v, atol=1e-12) for u, v in zip(g1, g2))
    y0, st0 = m(x, (h, c))  # (h, C) alone: the gates start from zero
    assert torch.allclose(y0, m(x, (h, c, torch.zeros_like(s)))[0])
