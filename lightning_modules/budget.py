"""Train for a budget of seconds instead of a number of steps, the schedule fitted to it.

`TimeBudget(max_seconds)` is a Lightning callback. The learning-rate schedule of CharLM is
by step (warmup, lr held, then a cosine down to min_lr_frac * lr at `schedule_steps`;
CharLM.lr_at); with a time budget the number of steps that fit is not known in advance, so
this callback estimates it and moves the end of the schedule (and the stop) there:

    S = s + floor((budget - t_train) / dt)

where s is the current step, t_train the seconds spent training so far (validation time
left out, as in the curves' train_s) and dt the seconds per step measured since the
previous estimate. S is clamped to [s, max_steps]: max_steps stays a hard cap, so a run
ends at whichever comes first (the cap is the module's max_steps, not the trainer's, so a
run stopped early on purpose keeps the schedule of the whole run). Once a short decay
(decay_frac < 1) has begun, S may only come earlier: a later S would lift the lr back up
the decay (by about 1/decay_frac times what the same move does to a whole-run cosine).

The estimate is made only at sync points, so that every DDP rank uses the same S and the
ranks' learning rates (hence their weights) never drift apart: at steps c, 2c, 4c, 8c, ...
after the start (c = `calibrate`; every rank reaches them, and the clock is read after a
device synchronize), and at the end of every validation. Rank 0 computes S and broadcasts
it. The doubling steps cost a few syncs in all and correct an early estimate that the first
steps' one-off costs made too short, also when validations are rarer than the run's steps. When step S is reached, the callback sets
`trainer.should_stop`, and Lightning then runs one last validation, so the model at the
end of the schedule (usually the best) is scored and checkpointed.

The state (seconds trained, S, the budget) is saved in checkpoints: a resumed run spends
what is left of the budget, not a new one (with a changed budget, S is estimated again).
"""
from __future__ import annotations

import math

import torch

from lightning_modules.clock import TrainClock


class TimeBudget(TrainClock):
    def __init__(self, max_seconds: float, calibrate: int = 10):
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        if calibrate < 2:
            raise ValueError(f"calibrate must be >= 2 steps, got {calibrate}")
        super().__init__()
        self.max_seconds, self.calibrate = float(max_seconds), calibrate
        self.stop_step: int | None = None
        self._mark = None  # (step, train seconds) at the previous estimate
        self._first, self._next = 0, calibrate

    # -- the clock is TrainClock's (validation left out); these hooks add the estimates -----
    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self._mark = None
        self._first = trainer.global_step  # 0, or the step a resumed run starts from
        self._next = self._first + self.calibrate  # the next doubling step
        # the schedule belongs to the budget: a resumed run takes the restored end, a new one max_steps
        pl_module.schedule_steps = self.stop_step or pl_module.hparams.max_steps
        if self.stop_step is not None and trainer.global_step >= self.stop_step:
            trainer.should_stop = True  # resumed after the budget was spent: not one step more

    def on_validation_end(self, trainer, pl_module):
        super().on_validation_end(trainer, pl_module)
        if trainer.sanity_checking or self._t0 is None:
            return
        if self.stop_step is not None and trainer.global_step >= self.stop_step:
            return  # the validation of the stop itself: the decision stands
        self._estimate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.stop_step is not None and step >= self.stop_step:
            trainer.should_stop = True  # the end of the schedule: no estimate moves it now
            return
        if step == self._first + 2 and self._mark is None:  # past the first steps' one-off costs
            self._sync(pl_module)
            self._mark = (step, self.train_seconds())
        elif step >= self._next:
            self._sync(pl_module)
            self._estimate(trainer, pl_module)
            self._next = self._first + 2 * (step - self._first)

    # -- the estimate, made on rank 0 and shared -----------------------------------------
    @staticmethod
    def _sync(pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def _estimate(self, trainer, pl_module):
        step, now = trainer.global_step, self.train_seconds()
        if self._mark is not None and step == self._mark[0]:
            return  # estimated at this very step already (a validation at the calibration step)
        total = None
        if trainer.is_global_zero:
            total = self.projected_steps(step, now, self._mark, self.max_seconds, pl_module.hparams.max_steps)
            if self.stop_step is not None and pl_module.hparams.decay_frac < 1 and step >= pl_module.decay_start():
                total = min(total, self.stop_step)  # decaying: only an earlier end keeps the lr going down
        total = trainer.strategy.broadcast(total, src=0)
        self._mark = (step, now)
        self.stop_step = total
        pl_module.schedule_steps = total
        if step >= total:
            trainer.should_stop = True

    @staticmethod
    def projected_steps(step: int, now: float, mark, budget: float, max_steps: int) -> int:
        """S = s + floor((budget - t) / dt), dt measured since `mark`; clamped to [s, max_steps]."""
        if now >= budget:
            return min(step, max_steps)
        if mark is None or step <= mark[0]:
            dt = now / max(step, 1)
        else:
            dt = (now - mark[1]) / (step - mark[0])
        if dt <= 0:  # no time measured yet: nothing to go by but the cap
            return max_steps
        return min(max_steps, step + math.floor((budget - now) / dt))

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"spent": self.train_seconds(), "stop_step": self.stop_step, "max_seconds": self.max_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.spent = float(state.get("spent", 0.0))
        # a resume with another budget re-estimates at its next sync point
        same = state.get("max_seconds") == self.max_seconds
        self.stop_step = state.get("stop_step") if same else None
