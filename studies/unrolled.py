"""Slide 3: unrolled in time, a recurrent layer is a multilayer perceptron whose layers share
their weights; BPTT is back-propagation through that perceptron.

The recurrent layer (`lightning_modules.cells.RNNCell`):

    h_t = tanh(W_x x_t + W_h h_{t-1} + b),   t = 1..T,   h_0 = 0

The perceptron built here has T layers, layer t with its own copies W_x^(t), W_h^(t), b^(t)
and its own input x_t:

    h_t = tanh(W_x^(t) x_t + W_h^(t) h_{t-1} + b^(t))

With every copy equal to (W_x, W_h, b) the two compute the same h_1..h_T, and since the
recurrent layer's W_h is used once per layer, the chain rule gives

    dL/dW_h = sum_t dL/dW_h^(t)

the BPTT gradient as the sum of the perceptron's per-layer gradients. `compare` checks both
identities in float64 and returns each layer's share, whose norm shrinks with the distance
from the loss (the vanishing gradient of slide 5).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_modules.cells import RNNCell


class UnrolledPerceptron(nn.Module):
    """T layers, each a copy of one recurrent cell's weights: h_t = tanh(W_x^(t) x_t + W_h^(t) h_{t-1} + b^(t))."""

    def __init__(self, cell: RNNCell, steps: int):
        super().__init__()
        if steps < 1:
            raise ValueError(f"the perceptron needs at least 1 layer, got {steps}")
        self.layers = nn.ModuleList(copy.deepcopy(cell) for _ in range(steps))  # separate tensors, equal values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, in) -> (B, T, H); layer t reads x_t and the layer below's output."""
        if x.shape[1] != len(self.layers):
            raise ValueError(f"input has {x.shape[1]} steps, the perceptron {len(self.layers)} layers")
        h = x.new_zeros(x.shape[0], self.layers[0].hidden)
        out = []
        for t, layer in enumerate(self.layers):
            h = torch.tanh(x[:, t] @ layer.weight_ih.t() + h @ layer.weight_hh.t() + layer.bias)
            out.append(h)
        return torch.stack(out, 1)


def compare(steps: int = 12, inputs: int = 5, hidden: int = 8, batch: int = 4, seed: int = 0) -> dict:
    """The recurrent layer against its unrolled perceptron, in float64.

    Loss: the mean square of the last output against a random target, so the gradient
    enters at layer T only and reaches layer t through T - t recurrent steps.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cell = RNNCell(inputs, hidden).double()
    mlp = UnrolledPerceptron(cell, steps)
    x = torch.randn(batch, steps, inputs, generator=g, dtype=torch.float64)
    target = torch.randn(batch, hidden, generator=g, dtype=torch.float64)

    y_rnn, _ = cell(x, (x.new_zeros(batch, hidden),))
    y_mlp = mlp(x)
    ((y_rnn[:, -1] - target) ** 2).mean().backward()
    ((y_mlp[:, -1] - target) ** 2).mean().backward()
    per_layer = torch.stack([layer.weight_hh.grad for layer in mlp.layers])  # (T, H, H)
    return {
        "steps": steps,
        "max_output_diff": float((y_rnn - y_mlp).detach().abs().max()),
        "max_grad_diff": float((cell.weight_hh.grad - per_layer.sum(0)).abs().max()),
        "max_grad_diff_input": float((cell.weight_ih.grad - sum(l.weight_ih.grad for l in mlp.layers)).abs().max()),
        "grad_norm_total": float(cell.weight_hh.grad.norm()),
        "layer_grad_norms": [float(n) for n in per_layer.flatten(1).norm(dim=1)],
    }
