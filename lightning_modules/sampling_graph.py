"""K tokens per call: generation in chunks, replayed as one CUDA graph on a GPU.

Batch-1 generation is launch-bound on a GPU: a token of the 3x512 LSTM is a dozen tiny
kernels, each shorter than its launch from Python. Here K steps (token choice and
recurrent step, `FastStep.layers`) are recorded once as a CUDA graph and replayed per
chunk, so the CPU issues one launch per K tokens. On a CPU the same chunk body runs
eagerly (that is what the tests check).

Token choice without torch.multinomial (whose private generator a graph cannot replay):
the Gumbel-max trick. With u_v ~ U(0, 1) and g_v = -log(-log u_v),

    x_{t+1} = argmax_v (z_v / T + g_v)    is an exact sample of softmax(z / T),

so the noise for a whole chunk is drawn before the replay (one kernel, from the seeded
generator) and the graph only adds and takes an argmax. top_k: scores below the k-th
largest are set to -inf first; argmax: no noise.

A capture costs about as much as generating a few hundred tokens, so each model keeps its
last sampler (`borrowed`): a later call with the same streams, chunk, temperature, top_k and
weights only copies its start (the prime's last logits and state) into the buffers and
replays. A call made while another thread holds the kept sampler gets a sampler of its own.
A weight updated in place (an optimizer step, load_state_dict) or replaced makes a new one;
the cache holds no model alive (weak keys). Not seen: a write through `p.data`, which
bypasses the version counter (call `clear_cache()` after one); and weights made under
torch.inference_mode have no version counter, so those models get a new sampler every call.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager

import torch

CHUNK = 32  # tokens per graph replay
_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()  # model -> (key, sampler, lock)
_GUARD = threading.Lock()


def weights_signature(model: torch.nn.Module) -> tuple | None:
    """Changes whenever a parameter changes: in place (its version counter) or replaced (its
    storage). None for weights made under inference mode, which have no version counter."""
    params = list(model.parameters())
    if any(p.is_inference() for p in params):
        return None
    return tuple((p.data_ptr(), p._version) for p in params)


@contextmanager
def borrowed(model: torch.nn.Module, key: tuple, make):
    """The model's last sampler if it was made for `key` (which must include
    weights_signature(model)) and no other call holds it, else a new one from make(), kept in
    its place unless the kept one is in use. A key holding None (weights without a version
    counter) is never cached. The sampler's buffers are the caller's until the block ends."""
    if None in key:
        yield make()
        return
    with _GUARD:
        hit = _CACHE.get(model)
        entry = hit if hit is not None and hit[0] == key and hit[2].acquire(blocking=False) else None
    if entry is None:
        entry = (key, make(), threading.Lock())
        entry[2].acquire()
        with _GUARD:
            kept = _CACHE.get(model)
            if kept is None or not kept[2].locked():
                _CACHE[model] = entry
    try:
        yield entry[1]
    finally:
        entry[2].release()


def clear_cache() -> None:
    _CACHE.clear()


class ChunkSampler:
    """Static buffers + one chunk body; `run(length)` -> (n, length) ids."""

    def __init__(self, step, last: torch.Tensor, state: tuple, temperature: float, top_k: int, argmax: bool,
                 generator: torch.Generator, chunk: int = CHUNK, graph: bool | None = None):
        self.step, self.K = step, chunk
        self.inv_t = 1.0 if argmax else 1.0 / temperature  # argmax: no temperature (it may be 0)
        self.top_k, self.argmax, self.gen = top_k, argmax, generator
        n, V = last.shape
        self.last = last.clone()
        self.hs = [h.clone() for h in state[0].unbind(0)]
        self.cs = [c.clone() for c in state[1].unbind(0)] if len(state) > 1 else None
        self.noise = torch.zeros(chunk, n, V, device=last.device)
        self.ids = torch.zeros(chunk, n, dtype=torch.long, device=last.device)
        self.graph = None
        if graph if graph is not None else last.is_cuda:
            with torch.cuda.device(last.device):  # stream, graph and kernels on the tensors' GPU
                self._capture()

    def reset(self, last: torch.Tensor, state: tuple, generator: torch.Generator) -> None:
        """Start again from `last` and `state` (same shapes), drawing noise from `generator`."""
        self.gen = generator
        self.last.copy_(last)
        for static, new in zip(self.hs + (self.cs or []), [*state[0].unbind(0), *(state[1].unbind(0) if self.cs is not None else [])]):
            static.copy_(new)

    def _body(self) -> None:
        """K steps from the buffers: token k = argmax(last / T + noise[k]); then one step."""
        last = self.last
        hs, cs = list(self.hs), (list(self.cs) if self.cs is not None else None)
        for k in range(self.K):
            if self.argmax:
                scores = last
            else:
                scores = torch.add(self.noise[k], last, alpha=self.inv_t)
                if 0 < self.top_k < last.shape[-1]:
                    kth = last.topk(self.top_k, -1).values[:, -1:]
                    scores = scores.masked_fill(last < kth, float("-inf"))
            torch.argmax(scores, -1, out=self.ids[k])
            last = self.step.layers(self.ids[k], hs, cs)
        self.last.copy_(last)
        for static, new in zip(self.hs + (self.cs or []), hs + (cs or [])):
            static.copy_(new)

    def _buffers(self) -> list:
        return [self.last, *self.hs, *(self.cs or [])]

    def _capture(self) -> None:
        keep = [b.clone() for b in self._buffers()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: kernels compiled, allocator primed
            self._body()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # captured on `side`: torch's default capture stream belongs to the first GPU that captured
        with torch.cuda.graph(self.graph, stream=side):
            self._body()
        for b, k in zip(self._buffers(), keep):  # the warm-up ran a chunk: undo it
            b.copy_(k)

    def _noise(self) -> None:
        if not self.argmax:
            torch.rand(self.noise.shape, generator=self.gen, device=self.noise.device, out=self.noise)
            self.noise.log_().neg_().log_().neg_()  # -log(-log u)

    def run(self, length: int) -> torch.Tensor:
        out = []
        for _ in range(-(-length // self.K)):
            self._noise()
            if self.graph is not None:
                self.graph.replay()
            else:
                self._body()
            out.append(self.ids.t().clone())
        if not out:
            return torch.empty(self.last.shape[0], 0, dtype=torch.long, device=self.last.device)
        return torch.cat(out, 1)[:, :length]
