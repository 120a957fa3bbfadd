"""A stack of L recurrent layers: the fused kernel where one exists, the equation cells otherwise.

`RecurrentStack(cell, input_size, hidden, layers, dropout)` runs torch.nn.RNN / LSTM / GRU
(cuDNN on GPU, oneDNN on CPU) for the cells those kernels implement (`rnn`, `lstm`,
`gru`) and the cells of `cells.py` for everything else (the Greff variants, the slide's
GRU). Both paths take and return the state as a tuple of (L, B, width) tensors: (h, C) for
LSTM cells, (h,) otherwise, and for FGR (h, C, [i, f, o]) (its gates feed the next step;
`init_state` makes the right widths). Dropout acts between layers, as in torch.nn.

`weight_drop` p > 0 is DropConnect on the recurrent weights (Wan et al. 2013; the
weight-dropped LSTM of Merity, Keskar & Socher 2017): in training, each forward call draws
one mask M ~ Bernoulli(1 - p) per layer, shared by the whole batch, and runs the sequence with

    W_hh' = M * W_hh / (1 - p)      (the same W_hh' at every time step)

A sequence run as several calls (a TBPTT window: the part whose state the next window
starts from, then the rest) keeps one W_hh' across them inside `with stack.one_mask():`.

so the recurrent connections are regularised without touching the state itself. The fused
kernels (cuDNN, oneDNN) still run: their functional form (torch._VF.lstm / gru / rnn_*) is
called with W_hh' in place of W_hh, so the module's own parameters are never swapped (a swap
makes torch.nn.RNNBase re-flatten its weights in place on CUDA, which would break the
backward of an earlier call: TBPTT runs the model twice per step). The equation cells get
W_hh' through torch.func.functional_call. Evaluation uses W_hh.

Weight mapping between the two forms (`to_equation`, `to_fused`), per layer k:
- LSTM: weight_ih_lk / weight_hh_lk are the equation cell's weight_ih / weight_hh, rows
  (i, f, C~, o); the cell's bias b = bias_ih_lk + bias_hh_lk (the way back puts all of it
  in bias_ih and zero in bias_hh).
- RNN: the same with one gate.
- GRU: rows (r, z, n); torch's z is 1 - the lecture's z, and 1 - sigma(a) = sigma(-a), so
  the z rows of weights and biases change sign; r and n rows are equal.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, _VF, nn
from torch.func import functional_call

from lightning_modules.cells import CELLS, FUSED, make_cell


class RecurrentStack(nn.Module):
    def __init__(
        self, cell: str, input_size: int, hidden: int, layers: int = 1, dropout: float = 0.0, fused: bool | None = None,
        weight_drop: float = 0.0,
    ):
        super().__init__()
        if not 0 <= weight_drop < 1:
            raise ValueError(f"weight_drop must be in [0, 1), got {weight_drop}")
        self.weight_drop = weight_drop
        self._masks: dict | None = None  # W_hh' per layer while `one_mask` is open
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
        if fused and cell not in FUSED:
            raise ValueError(f"cell {cell!r} has no fused kernel; only {', '.join(FUSED)} do")
        self.cell, self.input_size, self.hidden, self.num_layers = cell, input_size, hidden, layers
        self.dropout = dropout
        self.fused = cell in FUSED if fused is None else fused
        self.has_cell = cell.startswith("lstm")
        if self.fused:
            self.rnn = getattr(nn, FUSED[cell])(input_size, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        else:
            self.layers = nn.ModuleList(make_cell(cell, input_size if k == 0 else hidden, hidden) for k in range(layers))
            self.drop = nn.Dropout(dropout)

    def init_state(self, batch: int, device=None, dtype=None) -> tuple[Tensor, ...]:
        widths = (self.hidden,) * (2 if self.has_cell else 1)
        if not self.fused:
            widths = getattr(self.layers[0], "state_widths", widths)
        return tuple(torch.zeros(self.num_layers, batch, w, device=device, dtype=dtype) for w in widths)

    def forward(self, x: Tensor, state: tuple[Tensor, ...] | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x (B, T, input_size) -> y (B, T, H), state: tuple of (L, B, H)."""
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        if self.fused:
            s = (state[0].to(x.dtype), state[1].to(x.dtype)) if self.has_cell else state[0].to(x.dtype)
            y, s = self._fused_dropped(x, s) if self._dropping else self.rnn(x, s)
            return y, (s if self.has_cell else (s,))
        new = []
        inp = x
        for k, cell in enumerate(self.layers):
            s = tuple(t[k] for t in state)
            y, s = functional_call(cell, {"weight_hh": self._drop_hh(cell.weight_hh, k)}, (inp, s)) if self._dropping else cell(inp, s)
            new.append(s)
            inp = self.drop(y) if k + 1 < self.num_layers else y
        return inp, tuple(torch.stack(parts) for parts in zip(*new))

    @property
    def _dropping(self) -> bool:
        """DropConnect on W_hh in this call: training, weight_drop > 0."""
        return self.training and self.weight_drop > 0

    @contextlib.contextmanager
    def one_mask(self):
        """The calls inside run with one W_hh' per layer, drawn by the first of them: one
        sequence split into calls is regularised as if it were one call."""
        self._masks = {}
        try:
            yield
        finally:
            self._masks = None

    def _drop_hh(self, w: Tensor, key) -> Tensor:
        """W_hh' = M * W_hh / (1 - p), M ~ Bernoulli(1 - p): one mask for the whole call
        (for every call inside `one_mask`)."""
        if self._masks is None:
            return F.dropout(w, self.weight_drop, training=True)
        if key not in self._masks:
            self._masks[key] = F.dropout(w, self.weight_drop, training=True)
        return self._masks[key]

    def _fused_dropped(self, x: Tensor, hx):
        """The fused kernel's functional form with W_hh' for every layer, the module's
        parameters left in place (see the module docstring)."""
        rnn = self.rnn
        weights = [self._drop_hh(w, n) if n.startswith("weight_hh") else w for n, w in zip(rnn._flat_weights_names, rnn._flat_weights)]
        args = (weights, rnn.bias, rnn.num_layers, rnn.dropout, True, rnn.bidirectional, rnn.batch_first)
        if rnn.mode == "LSTM":
            y, h, c = _VF.lstm(x, hx, *args)
            return y, (h, c)
        fn = {"GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}[rnn.mode]
        return fn(x, hx, *args)


def _equation_params(cell: str, sd: dict, k: int, hidden: int) -> dict:
    """Fused layer k's weights -> the equation cell's parameter dict."""
    w_ih, w_hh = sd[f"weight_ih_l{k}"], sd[f"weight_hh_l{k}"]
    b_ih, b_hh = sd[f"bias_ih_l{k}"], sd[f"bias_hh_l{k}"]
    if cell == "gru":
        sign = torch.ones(3 * hidden, dtype=w_ih.dtype, device=w_ih.device)
        sign[hidden : 2 * hidden] = -1
        return {"weight_ih": w_ih * sign[:, None], "weight_hh": w_hh * sign[:, None], "bias_ih": b_ih * sign, "bias_hh": b_hh * sign}
    return {"weight_ih": w_ih, "weight_hh": w_hh, "bias": b_ih + b_hh}


def _fused_params(cell: str, p: dict, k: int, hidden: int) -> dict:
    """The equation cell's parameter dict -> fused layer k's weights."""
    if cell == "gru":
        sign = torch.ones(3 * hidden, dtype=p["weight_ih"].dtype, device=p["weight_ih"].device)
        sign[hidden : 2 * hidden] = -1
        return {
            f"weight_ih_l{k}": p["weight_ih"] * sign[:, None],
            f"weight_hh_l{k}": p["weight_hh"] * sign[:, None],
            f"bias_ih_l{k}": p["bias_ih"] * sign,
            f"bias_hh_l{k}": p["bias_hh"] * sign,
        }
    return {
        f"weight_ih_l{k}": p["weight_ih"],
        f"weight_hh_l{k}": p["weight_hh"],
        f"bias_ih_l{k}": p["bias"],
        f"bias_hh_l{k}": torch.zeros_like(p["bias"]),
    }


@torch.no_grad()
def to_equation(stack: RecurrentStack) -> RecurrentStack:
    """The same network as equation cells (a copy); `stack` must be fused."""
    if not stack.fused:
        raise ValueError("to_equation needs a fused stack")
    eq = RecurrentStack(stack.cell, stack.input_size, stack.hidden, stack.num_layers, stack.dropout, fused=False, weight_drop=stack.weight_drop)
    eq.to(next(stack.parameters()).dtype)
    sd = stack.rnn.state_dict()
    for k, layer in enumerate(eq.layers):
        layer.load_state_dict(_equation_params(stack.cell, sd, k, stack.hidden))
    return eq.to(next(stack.parameters()).device)


@torch.no_grad()
def to_fused(stack: RecurrentStack) -> RecurrentStack:
    """The same network on the fused kernel (a copy); `stack` must be equation cells of rnn/lstm/gru."""
    if stack.fused or stack.cell not in FUSED:
        raise ValueError(f"to_fused needs an equation stack of {', '.join(FUSED)}")
    fz = RecurrentStack(stack.cell, stack.input_size, stack.hidden, stack.num_layers, stack.dropout, fused=True, weight_drop=stack.weight_drop)
    fz.to(next(stack.parameters()).dtype)
    sd = {}
    for k, layer in enumerate(stack.layers):
        sd.update(_fused_params(stack.cell, dict(layer.named_parameters()), k, stack.hidden))
    fz.rnn.load_state_dict(sd)
    return fz.to(next(stack.parameters()).device)
