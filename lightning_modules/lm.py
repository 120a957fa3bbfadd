"""The character (or word) language model of the lecture's text generators.

    token_t --1-of-k--> x_t = W_in . onehot(token_t)          (B, T, E)
            --L recurrent layers of H units, dropout between--> h_t   (B, T, H)
            --linear--> logits_t = W_out h_t + b               (B, T, V)
    p(token_{t+1} | token_<=t) = softmax(logits_t)

Trained on softmax cross-entropy in nats per token (bits per character = nats / ln 2,
perplexity = e^nats). The lecture's generator is 3 layers of 512 LSTM units.
"""
from __future__ import annotations

from torch import Tensor, nn

from lightning_modules.onehot import OneHotInput
from lightning_modules.recurrent import RecurrentStack


class CharRNN(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.0,
        input: str = "embedding",
        embed: int | None = None,
        fused: bool | None = None,
    ):
        super().__init__()
        if input not in ("embedding", "onehot"):
            raise ValueError(f"input must be 'embedding' or 'onehot', got {input!r}")
        E = embed or hidden
        self.vocab_size = vocab_size
        self.encoder = nn.Embedding(vocab_size, E) if input == "embedding" else OneHotInput(vocab_size, E)
        self.rnn = RecurrentStack(cell, E, hidden, layers, dropout, fused)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids: Tensor, state: tuple[Tensor, ...] | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """ids (B, T) -> logits (B, T, V), state (tuple of (L, B, H))."""
        y, state = self.rnn(self.encoder(ids), state)
        return self.head(y), state
