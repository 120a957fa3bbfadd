"""The fused equation LSTM's whole-sequence forward and backward, each replayed as one
CUDA graph (opt-in: LSTM_GRAPH=1).

With the gate arithmetic fused (`lstm_triton`), a time step is two kernels forward and two
backward, but each is still launched from Python: at H512 B128 the GPU finishes a step's
kernels before the CPU has issued the next ones. A CUDA graph records the launches of a
whole call once (per layout, shape and dtype) and replays them with one launch: inputs are
copied into the graph's static buffers, outputs cloned out of them (so three layers of one
shape can share a graph, and what backward saves is never overwritten).

Opt-in until measured on a GPU (bench/cell_speed.py has a row for it); never under
torch.inference_mode (evaluation, sampling), whose tensors a graph kept for training could
not write. The plumbing
(flatten, copy in, replay, clone out, cache) is tested on the CPU with `EagerReplay`
standing in for `torch.cuda.CUDAGraph`.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from lightning_modules import lstm_triton

MAX_GRAPHS = 8  # (function, layout, shapes) kept; the oldest goes first


def enabled(x: Tensor) -> bool:
    """LSTM_GRAPH=1, the fused path usable, and not under inference mode (a graph kept
    from there could not write training tensors, nor the other way round)."""
    return lstm_triton.usable(x) and os.environ.get("LSTM_GRAPH", "0") == "1" and not torch.is_inference_mode_enabled()


class EagerReplay:
    """Stand-in for torch.cuda.CUDAGraph where there is none (tests): `replay` runs the
    captured function again and writes into the outputs it returned at capture."""

    def capture(self, fn, args):
        self.fn, self.args = fn, args
        self.out = fn(*args)
        return self.out

    def replay(self):
        new, _ = tree_flatten(self.fn(*self.args))
        for o, n in zip(tree_flatten(self.out)[0], new):
            if isinstance(o, Tensor):
                o.copy_(n)


class CudaReplay:
    """One function call recorded as a CUDA graph (after a warm-up on a side stream, which
    compiles the kernels and sets up cuBLAS)."""

    def capture(self, fn, args):
        side = torch.cuda.Stream()  # on the current device: `run` sets it to the tensors' one
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # captured on `side`: torch's default capture stream belongs to the first GPU that captured
        with torch.cuda.graph(self.graph, stream=side):
            out = fn(*args)
        return out

    def replay(self):
        self.graph.replay()


_GRAPHS: OrderedDict = OrderedDict()


def _key(fn, leaves, spec) -> tuple:
    sig = tuple((tuple(t.shape), t.dtype, str(t.device)) if isinstance(t, Tensor) else t for t in leaves)
    return fn.__module__, fn.__qualname__, str(spec), sig


def run(fn, *args, replay_cls=None):
    """fn(*args) through a cached graph; args may nest tuples, dicts, None and hashable
    non-tensors (the Layout). Returns fresh tensors, like fn itself."""
    leaves, spec = tree_flatten(args)
    key = _key(fn, leaves, spec)
    entry = _GRAPHS.get(key)
    first = next(t for t in leaves if isinstance(t, Tensor))
    # the function casts itself (autocast's weight cache must stay out of a graph); streams,
    # graph and kernels on the tensors' GPU, whichever device is current
    with torch.autocast("cuda", enabled=False), lstm_triton.device_of(first):
        if entry is None:
            static = [t.clone() if isinstance(t, Tensor) else t for t in leaves]
            rec = (replay_cls or CudaReplay)()
            out = rec.capture(fn, tree_unflatten(static, spec))
            entry = _GRAPHS[key] = (rec, static, out)
            while len(_GRAPHS) > MAX_GRAPHS:
                _GRAPHS.popitem(last=False)
        rec, static, out = entry
        _GRAPHS.move_to_end(key)
        for s, t in zip(static, leaves):
            if isinstance(t, Tensor):
                s.copy_(t)
        rec.replay()
        flat, out_spec = tree_flatten(out)
        return tree_unflatten([t.clone() if isinstance(t, Tensor) else t for t in flat], out_spec)


def clear() -> None:
    _GRAPHS.clear()
