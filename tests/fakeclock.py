"""An exact training clock for tests of time budgets: every training step takes the seconds
the test says, whatever else runs on the machine (the wall clock made the budget tests and
the generators study's test fail on a loaded 2-core machine).

`install(monkeypatch, step_seconds)` replaces the `time` module of lightning_modules/clock.py
(the clock of TimeBudget and of the curves' train_s) with a FakeClock, which every
TimeBudget advances at the start of each training step by `step_seconds(global_step)` (or a
constant), and each validation batch by `val_batch_seconds` (default 0). In-process runs only
(not DDP's spawned ranks).
"""
from __future__ import annotations


class FakeClock:
    def __init__(self, step_seconds, val_batch_seconds: float = 0.0):
        self.t = 1000.0
        self.step_seconds = step_seconds if callable(step_seconds) else (lambda i: step_seconds)
        self.val_batch_seconds = val_batch_seconds

    def perf_counter(self) -> float:
        return self.t

    def tick(self, trainer) -> None:
        self.t += self.step_seconds(trainer.global_step)

    def tick_validation(self, trainer) -> None:
        self.t += self.val_batch_seconds


def install(monkeypatch, step_seconds, val_batch_seconds: float = 0.0) -> FakeClock:
    """`val_batch_seconds`: what each validation batch takes (0: validation is free)."""
    import lightning_modules.clock as clock_module
    from lightning_modules.budget import TimeBudget

    fake = FakeClock(step_seconds, val_batch_seconds)
    monkeypatch.setattr(clock_module, "time", fake)
    monkeypatch.setattr(TimeBudget, "on_train_batch_start", lambda self, trainer, *a: fake.tick(trainer), raising=False)
    monkeypatch.setattr(TimeBudget, "on_validation_batch_start", lambda self, trainer, *a: fake.tick_validation(trainer), raising=False)
    return fake
