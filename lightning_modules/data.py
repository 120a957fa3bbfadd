"""Batches from the onehot stage's index arrays (data/onehot/<corpus>/{train,val,test}.npy).

Two layouts, both addressed by the optimizer step so that a resumed run sees exactly the
batches a straight run would have seen, on any number of ranks:

- `RandomWindows` (stateless training, full BPTT): the batch of step s is B windows of
  T+1 tokens at offsets drawn by a generator seeded with (seed, s). With W ranks, rank r
  takes windows [r*B/W, (r+1)*B/W): W ranks at B/W each see the same B windows as one
  rank at B.
  On a GPU the split lives on the device and windows are gathered there.
- `Streams` (truncated BPTT, and evaluation): the split is cut into B contiguous streams,
  as char-rnn and torch-rnn do; batch c holds the c-th chunk of every stream, so the
  hidden state of one batch is the right start for the next. `reset` marks a batch that
  starts the streams afresh (the model then starts from zeros).

A batch is (x, y, reset): x, y (B, T) int64 with y the next token of x.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import torch


def load_split(data_dir: str | Path, split: str) -> torch.Tensor:
    """A split as a 1-D integer tensor in its stored dtype (uint8 stays uint8)."""
    arr = np.load(Path(data_dir) / f"{split}.npy")
    if arr.dtype == np.uint32:
        arr = arr.astype(np.int64)  # torch has no uint32 indexing
    return torch.from_numpy(arr)


class _StepAddressed:
    """Batches addressed by optimizer step; resumable (Lightning saves/loads `state_dict`).

    Subclasses define `batch_at(step)`; `steps` is the epoch's length. After a resume,
    iteration starts at the restored step, so the batches match a straight run's.
    """

    steps: int
    start: int = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        step = self.start
        self.start = 0
        while step < self.steps:
            yield self.batch_at(step)
            step += 1

    def state_dict(self) -> dict:
        return {"step": self._position()}

    def load_state_dict(self, state: dict) -> None:
        self.start = int(state["step"])

    _position = staticmethod(lambda: 0)  # set by the DataModule: the trainer's global step


class RandomWindows(_StepAddressed):
    """Step-addressed random windows of seq_len + 1 tokens (stateless training)."""

    def __init__(self, data: torch.Tensor, batch: int, seq_len: int, steps: int, seed: int, rank: int = 0, world: int = 1):
        if batch % world:
            raise ValueError(f"batch_size {batch} must be divisible by the {world} ranks")
        if len(data) < seq_len + 2:
            raise ValueError(f"the train split has {len(data)} tokens, fewer than one window of seq_len+1={seq_len + 1}; lower seq_len")
        self.data, self.batch, self.seq_len, self.steps, self.seed = data, batch, seq_len, steps, seed
        self.rank, self.world, self.start = rank, world, 0
        self.local = batch // world
        self.arange = torch.arange(seq_len + 1)

    def to(self, device) -> "RandomWindows":
        """Keep the split on `device` (a GPU): each batch is then gathered there, and only the
        B offsets cross from the host, asynchronously (no host-device sync per step)."""
        self.data, self.arange = self.data.to(device), self.arange.to(device)
        return self

    def batch_at(self, step: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)  # the same windows on any device
        # (the split's last token is never a target: one token in a split, kept for the runs it would change)
        starts = torch.randint(0, len(self.data) - self.seq_len - 1, (self.batch,), generator=g)
        starts = starts[self.rank * self.local : (self.rank + 1) * self.local]
        if self.data.is_cuda:
            starts = starts.pin_memory().to(self.data.device, non_blocking=True)
        w = self.data[starts[:, None] + self.arange].long()
        return w[:, :-1], w[:, 1:], False


class Streams(_StepAddressed):
    """B contiguous streams read chunk by chunk; for TBPTT the walk repeats for `steps`."""

    def __init__(self, data: torch.Tensor, batch: int, chunk: int, steps: int | None = None, rank: int = 0, world: int = 1):
        if batch % world:
            raise ValueError(f"batch_size {batch} must be divisible by the {world} ranks")
        self.length = (len(data) - 1) // batch  # tokens per stream
        if self.length < 1:
            raise ValueError(f"{len(data)} tokens cannot make {batch} streams; lower the batch size")
        local = batch // world
        rows = torch.arange(rank * local, (rank + 1) * local)
        self.x = data[: batch * self.length].view(batch, self.length)[rows]
        self.y = data[1 : batch * self.length + 1].view(batch, self.length)[rows]
        self.chunk = min(chunk, self.length)
        self.per_pass = -(-self.length // self.chunk) if steps is None else self.length // self.chunk
        self.steps = self.per_pass if steps is None else steps
        self.start = 0

    def to(self, device) -> "Streams":
        """Keep the streams on `device`: batches are slices there, nothing crosses per step."""
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def batch_at(self, step: int):
        c = step % self.per_pass
        a = c * self.chunk
        b = min(a + self.chunk, self.length)
        return self.x[:, a:b].long(), self.y[:, a:b].long(), c == 0


class TextDataModule(L.LightningDataModule):
    """Train/val/test batches of a tokenized corpus.

    bptt="full": random windows of `seq_len`; bptt="tbptt": `batch_size` streams read `k1`
    tokens per step. Validation and test read `eval_batch` streams in chunks of
    `eval_len` with the state carried, so every token of the split is scored once with
    all the context before it in its stream (but the last few, fewer than `eval_batch`,
    which do not fill a stream).
    """

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 32,
        seq_len: int = 128,
        bptt: str = "full",
        k1: int = 64,
        steps: int = 1000,
        seed: int = 0,
        eval_batch: int = 16,
        eval_len: int = 512,
    ):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size, self.seq_len, self.bptt, self.k1 = batch_size, seq_len, bptt, k1
        self.steps, self.seed, self.eval_batch, self.eval_len = steps, seed, eval_batch, eval_len
        meta = json.loads((self.data_dir / "meta.json").read_text())
        self.meta = meta
        self.vocab_size = meta["vocab_size"]
        self.splits: dict[str, torch.Tensor] = {}

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        for s in ("train", "val", "test"):
            if s not in self.splits and self.meta["splits"].get(s, 0) > 0:
                self.splits[s] = load_split(self.data_dir, s)

    def train_dataloader(self):
        rank, world = self._rank_world()
        data = self.splits["train"]
        if self.bptt == "full":
            it = RandomWindows(data, self.batch_size, self.seq_len, self.steps, self.seed, rank, world)
        else:
            it = Streams(data, self.batch_size, self.k1, self.steps, rank, world)
        if self.trainer is not None:
            it._position = lambda: self.trainer.global_step
            device = self.trainer.strategy.root_device
            if device.type == "cuda":
                it.to(device)
        return it

    def _eval(self, split: str):
        rank, world = self._rank_world()
        if split not in self.splits:
            return []
        return Streams(self.splits[split], self.eval_batch, self.eval_len, None, rank, world)

    def val_dataloader(self):
        return self._eval("val")

    def test_dataloader(self):
        return self._eval("test")
