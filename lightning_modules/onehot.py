"""The lecture's 1-of-k input, formed on the device one batch at a time.

The data stages store each position's hot index (uint8 for up to 256 tokens); the dense
(positions x vocab) matrix exists only here, for one batch.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def onehot(ids: Tensor, vocab_size: int, dtype=torch.float32) -> Tensor:
    """ids (...,) integer -> (..., vocab_size) with a 1 at each id, on ids' device."""
    out = torch.zeros(*ids.shape, vocab_size, dtype=dtype, device=ids.device)
    return out.scatter_(-1, ids.long().unsqueeze(-1), 1)


class OneHotInput(nn.Module):
    """x_t = W . onehot(token_t): the first layer's input from the 1-of-k vector.

    `weight` is (vocab, E), the layout of nn.Embedding: it is W^T, because W . onehot(k) is
    column k of W (E x vocab), row k of `weight`, and the lookup `Embedding(vocab, E)(k)`
    computes the same thing without the matmul (tests/test_lm.py shows the two agree). Kept
    for the lecture's formulation.
    """

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.randn(vocab_size, dim))  # nn.Embedding's N(0, 1) init

    def forward(self, ids: Tensor) -> Tensor:
        return onehot(ids, self.vocab_size, self.weight.dtype) @ self.weight
