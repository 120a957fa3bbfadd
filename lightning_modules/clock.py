"""The training clock: seconds of training, the time spent validating left out.

`TrainClock` is a Lightning callback that other callbacks extend (the time budget,
lightning_modules/budget.py, and the loss curves' train_s, pipeline/curves.py), so that a
budget and the curves of the same run count the same seconds:

    t_train = spent + (now - t_start) - sum of the validations' durations

where spent is 0 for a new run; on a resume the budget restores the seconds spent before
(its state is in the checkpoint), while the curves, written per run, start again at 0.
"""
from __future__ import annotations

import time

import torch
from lightning.pytorch.callbacks import Callback


class TrainClock(Callback):
    def __init__(self):
        self.spent = 0.0  # seconds trained before this process (a resumed run may set it)
        self._t0 = self._v0 = None
        self._in_val = 0.0

    def wall_seconds(self) -> float:
        """Seconds since training started in this process, validation included."""
        return 0.0 if self._t0 is None else time.perf_counter() - self._t0

    def train_seconds(self) -> float:
        """`spent` + the seconds since training started, validation left out."""
        if self._t0 is None:
            return self.spent
        return self.spent + self.wall_seconds() - self._in_val

    def on_train_start(self, trainer, pl_module):
        self._t0, self._in_val = time.perf_counter(), 0.0  # the sanity check's validation is not counted

    def on_validation_start(self, trainer, pl_module):
        if pl_module.device.type == "cuda":  # the training steps' queued kernels finish on the training clock
            torch.cuda.synchronize(pl_module.device)
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if self._v0 is not None:
            self._in_val += time.perf_counter() - self._v0
            self._v0 = None
