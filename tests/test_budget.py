"""Training for a time budget (train.max_seconds): the estimate, the stop, the cosine's end, resume, DDP."""
from __future__ import annotations

import time

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_modules.budget import TimeBudget
from lightning_modules.train import fit
from pipeline.config import load_params, parse_sets
from pipeline.errors import UserError
from tests.test_lm import TINY

BUDGET = dict(TINY, max_steps=100_000, val_every=40, warmup_steps=5)


def _budget(trainer) -> TimeBudget:
    return next(c for c in trainer.callbacks if isinstance(c, TimeBudget))


def test_projected_steps():
    p = TimeBudget.projected_steps
    # 10 steps in the last 2 s since the mark: 0.2 s/step, 10 s left -> 50 more steps
    assert p(30, 10.0, (20, 8.0), 20.0, 10**6) == 80
    # no mark: the average since the start (30 steps in 10 s)
    assert p(30, 10.0, None, 20.0, 10**6) == 60
    assert p(30, 10.0, (20, 8.0), 20.0, 55) == 55  # max_steps caps it
    assert p(30, 25.0, (20, 8.0), 20.0, 10**6) == 30  # spent: stop now
    assert p(30, 10.0, (20, 10.0), 20.0, 500) == 500  # a zero-time interval: only the cap
    with pytest.raises(ValueError, match="max_seconds"):
        TimeBudget(0)


def test_budget_stops_training_and_ends_the_cosine_there(corpus, tmp_path):
    budget = 4.0
    r = fit(dict(BUDGET, max_seconds=budget), corpus, tmp_path / "b")
    cb, module = _budget(r["trainer"]), r["module"]
    spent = cb.train_seconds()
    assert 0.6 * budget <= spent <= 1.5 * budget + 1.0, spent
    assert 20 < r["steps"] < BUDGET["max_steps"]
    assert r["steps"] == cb.stop_step == module.schedule_steps
    # the cosine ended at the stop: the last step ran at (about) the floor of the schedule
    floor = module.hparams.lr * module.hparams.min_lr_frac
    assert module.lr_at(r["steps"] - 1) == pytest.approx(floor, rel=0.02)
    assert module.lr_at(r["steps"] // 2) > 2 * floor
    # one last validation at the stop scored the final model
    ck = torch.load(tmp_path / "b/last.ckpt", weights_only=True)
    assert ck["global_step"] == r["steps"]
    state = next(v for k, v in ck["callbacks"].items() if k.startswith("TimeBudget"))
    assert state["stop_step"] == r["steps"] and state["spent"] >= 0.6 * budget


def test_max_steps_still_caps_a_budgeted_run(corpus, tmp_path):
    r = fit(dict(BUDGET, max_steps=30, val_every=10, max_seconds=3600), corpus, tmp_path / "c")
    assert r["steps"] == 30
    assert r["module"].schedule_steps == 30


def test_resume_spends_what_is_left_of_the_budget(corpus, tmp_path):
    budget = 4.0
    cfg = dict(BUDGET, max_seconds=budget, val_every=20)
    half = fit(cfg, corpus, tmp_path / "h", stop_at=40)
    assert half["steps"] == 40
    first = _budget(half["trainer"]).train_seconds()
    assert first < budget
    resumed = fit(cfg, corpus, tmp_path / "r", resume=str(tmp_path / "h/last.ckpt"))
    total = _budget(resumed["trainer"]).train_seconds()
    assert resumed["steps"] > 40
    assert 0.6 * budget <= total <= 1.5 * budget + 1.0, (first, total)


def test_ddp_ranks_stop_together(corpus, tmp_path):
    # rank 0's estimate is broadcast: both ranks stop at the same step (or the run would hang)
    r = fit(dict(BUDGET, max_seconds=3.0, val_every=10, strategy="ddp_spawn", devices=2, dropout=0.0), corpus, tmp_path / "d")
    ck = torch.load(tmp_path / "d/last.ckpt", weights_only=True)
    state = next(v for k, v in ck["callbacks"].items() if k.startswith("TimeBudget"))
    assert 10 < ck["global_step"] < BUDGET["max_steps"]
    assert ck["global_step"] == state["stop_step"]
    assert r["best_val_loss"] is not None


class SlowFirstStep(Callback):
    """The first step takes `seconds` longer (a GPU's compile/autotune)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            time.sleep(self.seconds)


def test_a_slow_first_step_does_not_shrink_the_estimate(corpus, tmp_path):
    # a validation at the calibration step (val_every 10) must keep the estimate made there,
    # which leaves the first steps out; an average over all steps would stop far too early
    budget = 5.0
    r = fit(dict(BUDGET, max_seconds=budget, val_every=10), corpus, tmp_path / "s", callbacks=[SlowFirstStep(2.5)])
    spent = _budget(r["trainer"]).train_seconds()
    assert spent >= 0.8 * budget, (spent, r["steps"])


class SlowCalibration(Callback):
    """A hand-stepped training clock: 0.15 s a step for steps 3-10 (the first estimate's
    window), 5 ms the others. The budget reads it instead of the wall clock (the test's
    monkeypatch), so the run is the same under any machine load."""

    def __init__(self):
        self.clock = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.clock += 0.15 if 2 <= trainer.global_step < 10 else 0.005


def test_an_estimate_made_short_by_slow_first_steps_is_corrected_without_validations(corpus, tmp_path, monkeypatch):
    # the estimate at step 10 sees 0.15 s/step and would end the run at step 28; the doubling
    # steps (20, 40, ...) measure the real speed and spend the budget, though no validation
    # comes before the end (a word-level model's slow steps with val_every 250 did this)
    budget, clock = 4.0, SlowCalibration()
    monkeypatch.setattr(TimeBudget, "train_seconds", lambda self: clock.clock)
    r = fit(dict(BUDGET, max_seconds=budget, val_every=100_000), corpus, tmp_path / "c", callbacks=[clock])
    assert 0.95 * budget <= clock.clock <= budget + 0.005 and r["steps"] > 500, (clock.clock, r["steps"])
    m = r["module"]
    assert m.lr_at(r["steps"] - 1) == pytest.approx(m.hparams.lr * m.hparams.min_lr_frac, rel=0.05)


def test_a_stop_reached_on_a_doubling_step_is_final():
    """Steps speed up after step 80, where S = 160 was estimated; step 160 is also a doubling
    step, where a new estimate would move S later and lift the cosine's lr back up from its
    floor (decay_frac 1: no 'decaying: only earlier' rule). The stop must win."""
    from types import SimpleNamespace

    from lightning_modules.module import CharLM

    module = CharLM(vocab_size=5, hidden=4, layers=1, max_steps=10**6, warmup_steps=0, decay_frac=1.0)
    trainer = SimpleNamespace(global_step=0, should_stop=False, is_global_zero=True, sanity_checking=False,
                              strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    cb, clock = TimeBudget(100.0), [0.0]
    cb.train_seconds = lambda: clock[0]  # the run's clock, stepped by hand: 0.625 s a step, then 0.3 s
    cb.on_train_start(trainer, module)
    for step in range(1, 400):
        clock[0] += 0.625 if step <= 80 else 0.3
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, None, 0)
        if trainer.should_stop:
            break
    assert (step, cb.stop_step, module.schedule_steps) == (160, 160, 160)
    assert module.lr_at(159) == pytest.approx(module.hparams.lr * module.hparams.min_lr_frac, rel=1e-3)


def test_resume_after_the_budget_is_spent_takes_no_step_and_a_new_budget_is_spent(corpus, tmp_path):
    cfg = dict(BUDGET, max_seconds=2.0, val_every=20)
    done = fit(cfg, corpus, tmp_path / "a")
    again = fit(cfg, corpus, tmp_path / "b", resume=str(tmp_path / "a/last.ckpt"))
    assert again["steps"] == done["steps"]  # not one step past the stop
    more = fit(dict(cfg, max_seconds=4.0), corpus, tmp_path / "c", resume=str(tmp_path / "a/last.ckpt"))
    cb = _budget(more["trainer"])
    assert more["steps"] >= done["steps"] + 5  # trains on (how many more steps depends on the machine's load)
    assert cb.train_seconds() >= 0.6 * 4.0 and more["module"].schedule_steps == more["steps"]


def test_resume_without_a_budget_follows_the_new_max_steps(corpus, tmp_path):
    fit(dict(TINY, max_steps=20, val_every=10), corpus, tmp_path / "a")
    r = fit(dict(TINY, max_steps=40, val_every=10), corpus, tmp_path / "b", resume=str(tmp_path / "a/last.ckpt"))
    m = r["module"]
    assert r["steps"] == 40 and m.schedule_steps == 40
    assert m.lr_at(30) > 2 * m.hparams.lr * m.hparams.min_lr_frac  # still on the cosine, not at its floor


def test_the_last_step_is_validated_when_max_steps_is_not_a_multiple_of_val_every(corpus, tmp_path):
    r = fit(dict(TINY, max_steps=25, val_every=10), corpus, tmp_path / "v")
    assert r["steps"] == 25
    assert torch.load(tmp_path / "v/last.ckpt", weights_only=True)["global_step"] == 25


@pytest.mark.parametrize("value", ["0", "-5", "abc", "true"])
def test_bad_max_seconds_is_one_clear_error(value):
    with pytest.raises(UserError, match=r"train\.max_seconds"):
        load_params("params.yaml", parse_sets([f"train.max_seconds={value}"]))


def test_max_seconds_from_params(tmp_path):
    p = load_params("params.yaml", parse_sets(["train.max_seconds=120"]))
    assert p.train.max_seconds == 120.0 and p.train.to_fit()["max_seconds"] == 120.0
    assert load_params("params.yaml").train.max_seconds is None


def test_last_checkpoint_is_the_last_step_even_without_improvement(corpus, tmp_path):
    # lr 0: val_loss never improves after the first validation; last.ckpt must still move on
    r = fit(dict(TINY, lr=0.0, max_steps=30, val_every=10), corpus, tmp_path / "z")
    assert r["steps"] == 30
    assert torch.load(tmp_path / "z/last.ckpt", weights_only=True)["global_step"] == 30
    assert torch.load(tmp_path / "z/best.ckpt", weights_only=True)["global_step"] == 10
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["best.ckpt", "last.ckpt"]
