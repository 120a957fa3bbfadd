"""Recurrent cells written from the lecture's equations (one layer each, batch first).

Notation of the lecture (../shared/lecture/NOTES.md): [h_{t-1}, x_t] is the concatenation
of the previous output and the input; W . [h_{t-1}, x_t] is computed as W_x x_t + W_h h_{t-1}
with W = [W_h | W_x]. The input half W_x x_t + b does not depend on the recurrence, so
every cell computes it for the whole sequence in one matmul before the time loop
(`x @ weight_ih.T + bias`, shape (B, T, G*H)); only W_h h_{t-1} stays inside the loop.

Weight layout follows torch.nn (`weight_ih` (G*H, in), `weight_hh` (G*H, H)) so that the
fused kernels (cuDNN on GPU, oneDNN on CPU) and these cells load each other's weights:
see `lightning_modules/recurrent.py` for the mapping.

Cells:
- `RNNCell`:   h_t = tanh(W . [h_{t-1}, x_t] + b)
- `LSTMCell`:  the lecture's LSTM and the variants of Greff et al. 2017, "LSTM: A Search
               Space Odyssey" (V, NIG, NFG, NOG, NIAF, NOAF, NP, CIFG, FGR), by flags.
- `GRUCell`:   `form="lecture"`: exactly the slide (no biases, reset before the matmul);
               `form="torch"`: torch.nn.GRU's form, written with the lecture's z.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_modules.gru_seq import GRUSequence
from lightning_modules.lstm_seq import Layout, LSTMSequence
from lightning_modules.names import CELLS, FUSED, LSTM_NAMES  # noqa: F401  (re-exported)


def _uniform_(module: nn.Module, hidden: int) -> None:
    """torch.nn's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
    k = 1.0 / math.sqrt(hidden)
    for p in module.parameters():
        nn.init.uniform_(p, -k, k)


class RNNCell(nn.Module):
    """Plain recurrent layer (Elman, tanh).

        h_t = tanh(W . [h_{t-1}, x_t] + b) = tanh(W_x x_t + W_h h_{t-1} + b)

    The same weights serve every step: unrolled in time it is a deep perceptron with
    shared layers, trained by back-propagation through time.
    """

    gates = 1
    has_cell = False

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.input_size, self.hidden = input_size, hidden
        self.weight_ih = nn.Parameter(torch.empty(hidden, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden, hidden))
        self.bias = nn.Parameter(torch.empty(hidden))
        _uniform_(self, hidden)

    def forward(self, x: Tensor, state: tuple[Tensor]) -> tuple[Tensor, tuple[Tensor]]:
        (h,) = state
        xw = torch.nn.functional.linear(x, self.weight_ih, self.bias)  # (B, T, H), hoisted
        w_hh = self.weight_hh.t()
        out = []
        for t in range(x.shape[1]):
            h = torch.tanh(xw[:, t] + h @ w_hh)
            out.append(h)
        return torch.stack(out, 1), (h,)


@dataclass(frozen=True)
class LSTMVariant:
    """Which parts of the LSTM are present (Greff et al. 2017, section 3).

    input_gate=False: NIG, i_t = 1.       forget_gate=False: NFG, f_t = 1.
    output_gate=False: NOG, o_t = 1.      input_act=False: NIAF, g(x) = x.
    output_act=False: NOAF, h(x) = x.     peepholes=False: NP (and the lecture's LSTM).
    coupled=True: CIFG, f_t = 1 - i_t.    full_recurrence=True: FGR, every gate also sees
                                           i_{t-1}, f_{t-1}, o_{t-1}.
    """

    input_gate: bool = True
    forget_gate: bool = True
    output_gate: bool = True
    input_act: bool = True
    output_act: bool = True
    peepholes: bool = True
    coupled: bool = False
    full_recurrence: bool = False


LSTM_VARIANTS: dict[str, LSTMVariant] = {
    "lstm": LSTMVariant(peepholes=False),  # the lecture's LSTM: no peepholes (= NP)
    "lstm-v": LSTMVariant(),  # Greff's vanilla: peepholes
    "lstm-nig": LSTMVariant(input_gate=False),
    "lstm-nfg": LSTMVariant(forget_gate=False),
    "lstm-nog": LSTMVariant(output_gate=False),
    "lstm-niaf": LSTMVariant(input_act=False),
    "lstm-noaf": LSTMVariant(output_act=False),
    "lstm-np": LSTMVariant(peepholes=False),
    "lstm-cifg": LSTMVariant(forget_gate=False, coupled=True),
    "lstm-fgr": LSTMVariant(full_recurrence=True),
}


class LSTMCell(nn.Module):
    """LSTM layer, the lecture's equations, with Greff's variants as switches.

        f_t  = sigma(W_f . [h_{t-1}, x_t] + p_f * C_{t-1} + b_f)    forget gate
        i_t  = sigma(W_i . [h_{t-1}, x_t] + p_i * C_{t-1} + b_i)    input gate
        C~_t = g(W_C . [h_{t-1}, x_t] + b_C)                        candidate, g = tanh
        C_t  = f_t * C_{t-1} + i_t * C~_t                           state update
        o_t  = sigma(W_o . [h_{t-1}, x_t] + p_o * C_t + b_o)        output gate
        h_t  = o_t * h(C_t)                                         output, h = tanh

    The peephole terms p_* (element-wise weights on the cell state; Greff's vanilla "V")
    are absent in the lecture's LSTM and in NP. Variants: NIG i_t = 1; NFG f_t = 1 (C_{t-1}
    is carried unscaled); NOG o_t = 1; NIAF g(x) = x; NOAF h(x) = x, so h_t = o_t * C_t;
    CIFG f_t = 1 - i_t (no forget weights); FGR adds R . [i_{t-1}, f_{t-1}, o_{t-1}] to the
    pre-activation of every gate.

    Gate rows are stored in torch.nn.LSTM's order (i, f, C~, o), leaving out the gates a
    variant does not have, so the lecture's LSTM loads torch.nn.LSTM weights unchanged.
    """

    has_cell = True

    def __init__(self, input_size: int, hidden: int, variant: LSTMVariant | str = "lstm"):
        super().__init__()
        v = LSTM_VARIANTS[variant] if isinstance(variant, str) else variant
        self.variant, self.input_size, self.hidden = v, input_size, hidden
        names = []
        if v.input_gate:
            names.append("i")
        if v.forget_gate:
            names.append("f")
        names.append("g")
        if v.output_gate:
            names.append("o")
        self.gate_names = tuple(names)
        self.gates = len(names)
        H = hidden
        self.weight_ih = nn.Parameter(torch.empty(self.gates * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(self.gates * H, H))
        self.bias = nn.Parameter(torch.empty(self.gates * H))
        # the sigmoid gates that exist; FGR and the peepholes act on these
        self.sig_names = tuple(n for n in names if n != "g")
        if v.peepholes:
            self.peep = nn.ParameterDict({n: nn.Parameter(torch.empty(H)) for n in self.sig_names})
        else:
            self.peep = None
        if v.full_recurrence:
            k = len(self.sig_names)
            self.weight_gg = nn.Parameter(torch.empty(k * H, k * H))  # [i,f,o]_{t-1} -> gates
        else:
            self.weight_gg = None
        _uniform_(self, hidden)

    def layout(self) -> Layout:
        v = self.variant
        return Layout(self.hidden, self.gate_names, self.sig_names, v.input_act, v.output_act, v.coupled, v.peepholes, v.full_recurrence)

    @property
    def state_widths(self) -> tuple[int, ...]:
        """The state's widths: (h, C), and for FGR also its sigmoid gates [i, f, o], which
        feed the next step as h does, so a sequence split into calls carries them."""
        H = self.hidden
        return (H, H, len(self.sig_names) * H) if self.weight_gg is not None else (H, H)

    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The whole sequence at once with hand-written BPTT (`lstm_seq.LSTMSequence`);
        the same function as `loop`, several times faster. state: (h, C), FGR (h, C, [i, f, o])
        (given as (h, C): gates from zero)."""
        h, c = state[0], state[1]
        xw = torch.nn.functional.linear(x, self.weight_ih, self.bias)  # (B, T, G*H), hoisted
        p = self.peep
        pi, pf, po = ((p[n] if p is not None and n in p else None) for n in ("i", "f", "o"))
        s0 = state[2] if self.weight_gg is not None and len(state) > 2 else None
        out = LSTMSequence.apply(self.layout(), xw, self.weight_hh, h, c, pi, pf, po, self.weight_gg, s0)
        return out[0], tuple(out[1:])

    def loop(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The reference: one step at a time, autograd records every operation."""
        h, c = state[0], state[1]
        v, H = self.variant, self.hidden
        xw = torch.nn.functional.linear(x, self.weight_ih, self.bias)  # (B, T, G*H), hoisted
        w_hh = self.weight_hh.t()
        idx = {n: k for k, n in enumerate(self.gate_names)}
        peep = self.peep
        prev_gates = None
        if self.weight_gg is not None:
            prev_gates = state[2] if len(state) > 2 else x.new_zeros(x.shape[0], len(self.sig_names) * H)
        w_gg = self.weight_gg.t() if self.weight_gg is not None else None
        out = []
        for t in range(x.shape[1]):
            pre = xw[:, t] + h @ w_hh
            if w_gg is not None:
                sig_pre = prev_gates @ w_gg
                parts = list(pre.split(H, 1))
                for j, n in enumerate(self.sig_names):
                    parts[idx[n]] = parts[idx[n]] + sig_pre[:, j * H : (j + 1) * H]
            else:
                parts = pre.split(H, 1)
            if v.input_gate:
                zi = parts[idx["i"]]
                i = torch.sigmoid(zi + peep["i"] * c if peep is not None else zi)
            else:
                i = None  # i_t = 1
            if v.coupled:
                f = 1.0 - i
            elif v.forget_gate:
                zf = parts[idx["f"]]
                f = torch.sigmoid(zf + peep["f"] * c if peep is not None else zf)
            else:
                f = None  # f_t = 1
            zg = parts[idx["g"]]
            g = torch.tanh(zg) if v.input_act else zg
            fc = c if f is None else f * c
            c = fc + (g if i is None else i * g)
            if v.output_gate:
                zo = parts[idx["o"]]
                o = torch.sigmoid(zo + peep["o"] * c if peep is not None else zo)
            else:
                o = None  # o_t = 1
            hc = torch.tanh(c) if v.output_act else c
            h = hc if o is None else o * hc
            if w_gg is not None:
                got = {"i": i, "f": f, "o": o}
                prev_gates = torch.cat([got[n] for n in self.sig_names], 1)
            out.append(h)
        return torch.stack(out, 1), ((h, c, prev_gates) if w_gg is not None else (h, c))


class GRUCell(nn.Module):
    """GRU layer in one of two forms.

    form="lecture", exactly as on the slide (no biases; the reset gate scales h_{t-1}
    before the matmul):

        z_t  = sigma(W_z . [h_{t-1}, x_t])
        r_t  = sigma(W_r . [h_{t-1}, x_t])
        h~_t = tanh(W . [r_t * h_{t-1}, x_t])
        h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t

    form="torch", torch.nn.GRU's equations (biases; the reset gate scales W_hn h_{t-1}
    after the matmul), written with the lecture's z (torch's z is 1 - z_t):

        z_t  = sigma(W_zx x_t + W_zh h_{t-1} + b_z)
        r_t  = sigma(W_rx x_t + W_rh h_{t-1} + b_r)
        h~_t = tanh(W_nx x_t + b_nx + r_t * (W_nh h_{t-1} + b_nh))
        h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t

    The two are different functions: r * (W h) != W (r * h). Only the torch form maps onto
    the fused kernel: torch.nn.GRU's rows are (r, z, n) and its z rows are the negated
    lecture z rows, since 1 - sigma(a) = sigma(-a) (see recurrent.py).
    Rows here: (r, z, n) with the lecture's z.
    """

    gates = 3
    has_cell = False

    def __init__(self, input_size: int, hidden: int, form: str = "torch"):
        super().__init__()
        if form not in ("torch", "lecture"):
            raise ValueError(f"GRU form must be 'torch' or 'lecture', got {form!r}")
        self.form, self.input_size, self.hidden = form, input_size, hidden
        H = hidden
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * H, H))
        if form == "torch":
            self.bias_ih = nn.Parameter(torch.empty(3 * H))
            self.bias_hh = nn.Parameter(torch.empty(3 * H))
        else:
            self.bias_ih = self.bias_hh = None
        _uniform_(self, hidden)

    def forward(self, x: Tensor, state: tuple[Tensor]) -> tuple[Tensor, tuple[Tensor]]:
        """The whole sequence at once with hand-written BPTT (`gru_seq.GRUSequence`);
        the same function as `loop`, several times faster."""
        (h,) = state
        xw = torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)  # (B, T, 3H), hoisted
        y, h = GRUSequence.apply(self.form == "lecture", xw, self.weight_hh, self.bias_hh, h)
        return y, (h,)

    def loop(self, x: Tensor, state: tuple[Tensor]) -> tuple[Tensor, tuple[Tensor]]:
        """The reference: one step at a time, autograd records every operation."""
        (h,) = state
        H = self.hidden
        xw = torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)  # (B, T, 3H), hoisted
        out = []
        if self.form == "torch":
            w_hh = self.weight_hh.t()
            for t in range(x.shape[1]):
                xr, xz, xn = xw[:, t].split(H, 1)
                hr, hz, hn = (h @ w_hh + self.bias_hh).split(H, 1)
                r = torch.sigmoid(xr + hr)
                z = torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * h + z * n
                out.append(h)
        else:
            w_rz = self.weight_hh[: 2 * H].t()
            w_n = self.weight_hh[2 * H :].t()
            for t in range(x.shape[1]):
                xr, xz, xn = xw[:, t].split(H, 1)
                hr, hz = (h @ w_rz).split(H, 1)
                r = torch.sigmoid(xr + hr)
                z = torch.sigmoid(xz + hz)
                n = torch.tanh(xn + (r * h) @ w_n)
                h = (1 - z) * h + z * n
                out.append(h)
        return torch.stack(out, 1), (h,)


def make_cell(name: str, input_size: int, hidden: int) -> nn.Module:
    """An equation cell by its params name (see CELLS)."""
    if name == "rnn":
        return RNNCell(input_size, hidden)
    if name == "gru":
        return GRUCell(input_size, hidden, "torch")
    if name == "gru-lecture":
        return GRUCell(input_size, hidden, "lecture")
    if name in LSTM_VARIANTS:
        return LSTMCell(input_size, hidden, name)
    raise ValueError(f"unknown cell {name!r}; choose one of {', '.join(CELLS)}")


assert tuple(LSTM_VARIANTS) == LSTM_NAMES
