"""Sampling from a trained model, one step per token with the hidden state carried.

The priming text is run through the network once (one call over all its tokens); every
new token is then one recurrent step from the carried state: the prefix is never run
again. `n` samples run as a batch of n streams.
"""
from __future__ import annotations

import torch

from lightning_modules.lm import CharRNN
from lightning_modules.vocab import Vocab


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use argmax for greedy decoding")


@torch.no_grad()
def sample_ids(
    model: CharRNN,
    prime: list[int],
    length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    argmax: bool = False,
    n: int = 1,
    seed: int | None = None,
) -> torch.Tensor:
    """(n, length) new token ids following `prime` (a non-empty list of ids)."""
    check_temperature(temperature)
    if not prime:
        raise ValueError("the prime must hold at least one token")
    if length < 0 or n < 1:
        raise ValueError(f"need length >= 0 and n >= 1, got {length} and {n}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else torch.seed())
    x = torch.tensor(prime, device=device).repeat(n, 1)
    logits, state = model(x)
    last = logits[:, -1].float()
    out = torch.empty(n, length, dtype=torch.long, device=device)
    for t in range(length):
        if argmax:
            nxt = last.argmax(-1)
        else:
            scores = last / temperature
            if 0 < top_k < scores.shape[-1]:
                kth = scores.topk(top_k, -1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(scores, -1), 1, generator=g).squeeze(1)
        out[:, t] = nxt
        logits, state = model(nxt[:, None], state)
        last = logits[:, 0].float()
    model.train(was_training)
    return out


def generate(model: CharRNN, vocab: Vocab, prime: str = "", length: int = 500, **kw) -> list[str]:
    """n strings of `length` new tokens after `prime` (default: a newline, else token 0)."""
    check_temperature(kw.get("temperature", 1.0))
    ids = vocab.encode(prime) if prime else [vocab.stoi.get("\n", 0)]
    new = sample_ids(model, ids, length, **kw)
    return [prime + vocab.decode(row.tolist()) for row in new]
