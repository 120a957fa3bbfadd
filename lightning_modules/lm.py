"""The character (or word) language model of the lecture's text generators.

    token_t --1-of-k--> x_t = W_in . onehot(token_t)          (B, T, E)
            --L recurrent layers of H units, dropout between--> h_t   (B, T, H)
            --linear--> logits_t = W_out h_t + b               (B, T, V)
    p(token_{t+1} | token_<=t) = softmax(logits_t)

`dropout` acts between recurrent layers; `io_dropout` on x_t before the first layer and on
h_t^L before the linear head. With both, every non-recurrent connection is dropped and no
recurrent one is (Zaremba, Sutskever & Vinyals 2014): what the 3x512 model needs not to
overfit Tiny Shakespeare's 1M characters in the tens of epochs a GPU runs in two minutes.
`weight_drop` adds DropConnect on the recurrent matrices W_hh (see recurrent.py).

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
        io_dropout: float = 0.0,
        weight_drop: float = 0.0,
    ):
        super().__init__()
        if input not in ("embedding", "onehot"):
            raise ValueError(f"input must be 'embedding' or 'onehot', got {input!r}")
        E = embed or hidden
        self.vocab_size = vocab_size
        self.encoder = nn.Embedding(vocab_size, E) if input == "embedding" else OneHotInput(vocab_size, E)
        self.rnn = RecurrentStack(cell, E, hidden, layers, dropout, fused, weight_drop=weight_drop)
        self.head = nn.Linear(hidden, vocab_size)
        if not 0 <= io_dropout < 1:
            raise ValueError(f"io_dropout must be in [0, 1), got {io_dropout}")
        # p = 0: no module at all (no random numbers drawn: runs without it stay bit-identical)
        self.in_drop = nn.Dropout(io_dropout) if io_dropout > 0 else nn.Identity()
        self.out_drop = nn.Dropout(io_dropout) if io_dropout > 0 else nn.Identity()

    def forward(self, ids: Tensor, state: tuple[Tensor, ...] | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """ids (B, T) -> logits (B, T, V), state (tuple of (L, B, H))."""
        y, state = self.rnn(self.in_drop(self.encoder(ids)), state)
        return self.head(self.out_drop(y)), state
