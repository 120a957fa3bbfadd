"""Sampling from a trained model, one step per token with the hidden state carried.

The priming text is run through the network once (one call over all its tokens); every
new token is then one recurrent step from the carried state: the prefix is never run
again. `n` samples run as a batch of n streams.

For the fused cells (rnn, lstm, gru) each step runs `FastStep`: the cell equations on
the fused weights, with the first layer's input projection looked up in a precomputed
(vocab x gates) table (W_ih . E[x] + b for every token x). On a CPU a one-token call of
torch.nn.LSTM costs far more than its arithmetic (the oneDNN kernel prepares its weights
on every call), so this is several times faster (bench/sample_speed.py). On a GPU the steps
run in chunks, each replayed as one CUDA graph (`sampling_graph.ChunkSampler`), because
there a token's dozen kernels cost more to launch than to run; the graph is captured once
per model and settings and reused by later calls until the weights change.
"""
from __future__ import annotations

import torch

from lightning_modules import lstm_triton
from lightning_modules.lm import CharRNN
from lightning_modules.sampling_graph import CHUNK, ChunkSampler, borrowed, weights_signature
from lightning_modules.vocab import Vocab


MIN_TEMPERATURE = 1e-3  # below it, logits / T overflow float32 for large logits; greedy decoding anyway


def check_temperature(temperature: float, argmax: bool = False) -> None:
    """softmax(z / T) needs T > 0; argmax (greedy decoding) ignores T."""
    if argmax:
        return
    if not temperature >= MIN_TEMPERATURE:
        raise ValueError(f"temperature must be >= {MIN_TEMPERATURE}, got {temperature}; use argmax for greedy decoding")


def start_id(vocab: Vocab) -> int:
    """The token an empty prime starts from: a newline (byte 10 at byte level), else token 0."""
    return vocab.stoi.get(10 if vocab.level == "byte" else "\n", 0)


FAST_MAX_STREAMS = 32  # CPU: above this the fused kernel's batching wins (bench/sample_speed.py)


def draw(probs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One id per row of `probs` (B, V), the one `torch.multinomial(probs, 1, generator=g)`
    draws, from the same generator stream: its algorithm for a single sample,

        s = argmax_j p_j / q_j,   q_j ~ Exp(1)   (the Gumbel-max trick, exponentiated),

    without its per-call checks of the distribution, which cost about as much as the draw at
    batch 1 (`sample_ids` checks the logits once, at the end). `probs` is overwritten."""
    q = torch.empty_like(probs).exponential_(1, generator=g)
    return probs.div_(q).argmax(-1)


class FastStep:
    """One recurrent step of a fused RNN/LSTM/GRU stack, for token ids, from plain tensors.

    LSTM and RNN fold both biases into the input part (b_ih + b_hh), so a layer is two matmuls
    (layer 1: a table row and one matmul) and the gate arithmetic; on a GPU with Triton the
    LSTM's gate arithmetic is one kernel (`lstm_triton.lstm_cell_point`)."""

    def __init__(self, model: CharRNN):
        rnn = model.rnn.rnn
        self.kind, self.L = model.rnn.cell, rnn.num_layers
        p = {n: t.detach() for n, t in rnn.named_parameters()}
        self.w_ih = [p[f"weight_ih_l{k}"].t() for k in range(self.L)]
        self.w_hh = [p[f"weight_hh_l{k}"].t() for k in range(self.L)]
        self.b_ih = [p[f"bias_ih_l{k}"] for k in range(self.L)]
        self.b_hh = [p[f"bias_hh_l{k}"] for k in range(self.L)]
        if self.kind != "gru":  # GRU keeps b_hh apart: its reset gate scales W_hn h + b_hn only
            self.b_ih = [bi + bh for bi, bh in zip(self.b_ih, self.b_hh)]
        emb = model.encoder.weight.detach()  # (V, E): Embedding and OneHotInput alike
        self.table = torch.addmm(self.b_ih[0], emb, self.w_ih[0])  # (V, G*H): layer 1's input part
        self.head_w, self.head_b = model.head.weight.detach().t(), model.head.bias.detach()
        self.triton = self.kind == "lstm" and lstm_triton.usable(self.table)

    def layers(self, ids: torch.Tensor, hs: list, cs: list | None) -> torch.Tensor:
        """ids (B,) -> logits (B, V); hs, cs: per-layer (B, H) states, replaced in place in the lists."""
        x = None
        for k in range(self.L):
            gi = self.table.index_select(0, ids) if k == 0 else torch.addmm(self.b_ih[k], x, self.w_ih[k])
            if self.kind == "lstm":  # rows i, f, g (C~), o
                gates = torch.addmm(gi, hs[k], self.w_hh[k])
                if self.triton:
                    hs[k], cs[k] = lstm_triton.lstm_cell_point(gates, cs[k])
                else:
                    i, f, g, o = gates.chunk(4, 1)
                    cs[k] = torch.sigmoid(f) * cs[k] + torch.sigmoid(i) * torch.tanh(g)
                    hs[k] = torch.sigmoid(o) * torch.tanh(cs[k])
            elif self.kind == "gru":  # rows r, z, n (torch's z)
                gh = torch.addmm(self.b_hh[k], hs[k], self.w_hh[k])
                ir, iz, i_n = gi.chunk(3, 1)
                hr, hz, hn = gh.chunk(3, 1)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                hs[k] = (1 - z) * torch.tanh(i_n + r * hn) + z * hs[k]
            else:
                hs[k] = torch.tanh(torch.addmm(gi, hs[k], self.w_hh[k]))
            x = hs[k]
        return torch.addmm(self.head_b, x, self.head_w)

    def __call__(self, ids: torch.Tensor, state: tuple[torch.Tensor, ...]):
        """ids (B,) -> logits (B, V), new state (tuple of (L, B, H))."""
        hs = list(state[0].unbind(0))
        cs = list(state[1].unbind(0)) if self.kind == "lstm" else None
        logits = self.layers(ids, hs, cs)
        new = (torch.stack(hs), torch.stack(cs)) if cs is not None else (torch.stack(hs),)
        return logits, new


def check_scores(last: torch.Tensor) -> None:
    """Finite weights whose scores overflow float32 drew garbage ids: the last scores say so
    (a NaN or inf state stays to the end). One sync, after the loop."""
    if not bool(torch.isfinite(last).all()):
        raise ValueError("the model's next-token scores are not finite (they overflow float32); take another checkpoint or retrain")


@torch.inference_mode()
def sample_ids(
    model: CharRNN,
    prime: list[int],
    length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    argmax: bool = False,
    n: int = 1,
    seed: int | None = None,
    fast: bool = True,
    chunk: int | None = None,
) -> torch.Tensor:
    """(n, length) new token ids following `prime` (a non-empty list of ids).

    fast=False runs every step through the model's own forward (the reference path).
    chunk: tokens per `ChunkSampler` call (Gumbel-max, one CUDA graph per chunk on a GPU);
    None: chunks of `sampling_graph.CHUNK` on a GPU, token by token (`draw`, as torch.multinomial) on a CPU."""
    check_temperature(temperature, argmax)
    if not prime:
        raise ValueError("the prime must hold at least one token")
    if length < 0 or n < 1:
        raise ValueError(f"need length >= 0 and n >= 1, got {length} and {n}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 token, got {chunk}")
    if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):  # one sync
        raise ValueError("the model's weights are not finite (NaN or inf); take another checkpoint or retrain")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device)
    if seed is not None:
        g.manual_seed(seed)
    else:
        g.seed()  # a fresh seed for this generator only; the global RNGs are left alone
    x = torch.tensor(prime, device=device).repeat(n, 1)
    logits, state = model(x)
    last = logits[:, -1].float()
    gpu = device.type == "cuda"
    if fast and (n <= FAST_MAX_STREAMS or gpu or chunk is not None) and model.rnn.fused and next(model.parameters()).dtype == torch.float32:
        state = tuple(s.float() for s in state)
        if chunk is not None or gpu:
            k = chunk or CHUNK
            key = (n, k, float(temperature), top_k, bool(argmax), str(device), weights_signature(model))
            with borrowed(model, key, lambda: ChunkSampler(FastStep(model), last, state, temperature, top_k, argmax, g, k)) as sampler:
                sampler.reset(last, state, g)  # a reused sampler (and its CUDA graph) starts from this call's prime
                ids = sampler.run(length)
                end = sampler.last.clone()  # the scores after the last chunk (the sampler goes back to its cache)
            model.train(was_training)
            check_scores(end)
            return ids
        fs = FastStep(model)
        hs = list(state[0].unbind(0))  # per-layer states, replaced in these lists step by step
        cs = list(state[1].unbind(0)) if fs.kind == "lstm" else None

        def step(ids):
            return fs.layers(ids, hs, cs)
    else:
        carried = [state]

        def step(ids):
            lg, carried[0] = model(ids[:, None], carried[0])
            return lg[:, 0]
    drawn = []
    for t in range(length):
        if argmax:
            nxt = last.argmax(-1)
        else:
            scores = last / temperature
            if 0 < top_k < scores.shape[-1]:
                kth = scores.topk(top_k, -1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            nxt = draw(torch.softmax(scores, -1), g)
        drawn.append(nxt)
        last = step(nxt).float()
    model.train(was_training)
    check_scores(last)
    return torch.stack(drawn, 1) if drawn else torch.empty(n, 0, dtype=torch.long, device=device)


def generate(model: CharRNN, vocab: Vocab, prime: str = "", length: int = 500, **kw) -> list[str]:
    """n strings of `length` new tokens after `prime` (default: a newline, else token 0).

    A sample depends on the seed and on `n`: the n streams draw from one generator."""
    check_temperature(kw.get("temperature", 1.0), kw.get("argmax", False))
    ids = vocab.encode(prime) if prime else [start_id(vocab)]
    new = sample_ids(model, ids, length, **kw)
    return [prime + vocab.decode(row.tolist()) for row in new]
