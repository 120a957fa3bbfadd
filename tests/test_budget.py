"""Training for a time budget (train.max_seconds): the estimate, the stop, the cosine's end, resume, DDP."""
from __future__ import annotations

import pytest
import torch

from lightning_modules.budget import TimeBudget
from lightning_modules.train import fit
from pipeline.config import load_params, parse_sets
from pipeline.errors import UserError
from tests.fakeclock import install
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


@pytest.fixture
def clock(monkeypatch):
    """clock(step_seconds[, val_batch_seconds]): the training clock made exact from now on (tests/fakeclock.py)."""
    return lambda *a, **kw: install(monkeypatch, *a, **kw)


# steps of 1/16 s and budgets in sixteenths: the estimate's arithmetic is exact in binary
DT = 0.0625


def test_budget_stops_training_and_ends_the_cosine_there(corpus, tmp_path, clock):
    budget = 5.0  # 80 steps of DT
    clock(DT)
    r = fit(dict(BUDGET, max_seconds=budget), corpus, tmp_path / "b")
    cb, module = _budget(r["trainer"]), r["module"]
    assert r["steps"] == 80 == cb.stop_step == module.schedule_steps
    assert cb.train_seconds() == budget
    # the cosine ended at the stop: the last step ran at (about) the floor of the schedule
    floor = module.hparams.lr * module.hparams.min_lr_frac
    assert module.lr_at(r["steps"] - 1) == pytest.approx(floor, rel=0.02)
    assert module.lr_at(r["steps"] // 2) > 2 * floor
    # one last validation at the stop scored the final model
    ck = torch.load(tmp_path / "b/last.ckpt", weights_only=True)
    assert ck["global_step"] == r["steps"]
    state = next(v for k, v in ck["callbacks"].items() if k.startswith("TimeBudget"))
    assert state["stop_step"] == r["steps"] and state["spent"] == budget


def test_budget_follows_a_change_of_speed(corpus, tmp_path, clock):
    # 20 steps of DT (1.25 s), then steps twice as long: the estimate at step 40 sees the new
    # speed (3.75 s spent, 1.25 s left = 10 steps) and moves the stop from 80 to 50
    clock(lambda i: DT if i < 20 else 2 * DT)
    r = fit(dict(BUDGET, max_seconds=5.0), corpus, tmp_path / "s")
    cb = _budget(r["trainer"])
    assert r["steps"] == 50 == cb.stop_step == r["module"].schedule_steps
    assert cb.train_seconds() == 5.0


def test_validation_time_is_not_spent_from_the_budget(corpus, tmp_path, clock):
    # each validation batch takes 1 s, far more than the steps: the budget counts training
    # only (the curves' train_s too), so the run still takes its 80 steps of DT
    fake = clock(DT, val_batch_seconds=1.0)
    start = fake.t
    r = fit(dict(BUDGET, max_seconds=5.0, val_every=20), corpus, tmp_path / "v")
    cb = _budget(r["trainer"])
    assert r["steps"] == 80 == cb.stop_step
    assert cb.train_seconds() == 5.0
    assert fake.t - start >= 5.0 + 4  # four validations or more went by on the clock, left out


def test_budget_on_the_real_clock(corpus, tmp_path):
    # no fake: the callback reads time.perf_counter and stops near the budget (loose bounds,
    # since other work on the machine changes the speed of steps)
    budget = 4.0
    r = fit(dict(BUDGET, max_seconds=budget), corpus, tmp_path / "w")
    cb = _budget(r["trainer"])
    assert 20 < r["steps"] == cb.stop_step < BUDGET["max_steps"]
    assert 0.5 * budget <= cb.train_seconds() <= 3 * budget + 2.0


def test_max_steps_still_caps_a_budgeted_run(corpus, tmp_path):
    r = fit(dict(BUDGET, max_steps=30, val_every=10, max_seconds=3600), corpus, tmp_path / "c")
    assert r["steps"] == 30
    assert r["module"].schedule_steps == 30


def test_resume_spends_what_is_left_of_the_budget(corpus, tmp_path, clock):
    budget = 5.0  # 80 steps of DT in all
    cfg = dict(BUDGET, max_seconds=budget, val_every=20)
    clock(DT)
    half = fit(cfg, corpus, tmp_path / "h", stop_at=40)
    assert half["steps"] == 40
    assert _budget(half["trainer"]).train_seconds() == 40 * DT
    clock(DT)
    resumed = fit(cfg, corpus, tmp_path / "r", resume=str(tmp_path / "h/last.ckpt"))
    assert resumed["steps"] == 80
    assert _budget(resumed["trainer"]).train_seconds() == budget


def test_ddp_ranks_stop_together(corpus, tmp_path):
    # rank 0's estimate is broadcast: both ranks stop at the same step (or the run would hang)
    r = fit(dict(BUDGET, max_seconds=3.0, val_every=10, strategy="ddp_spawn", devices=2, dropout=0.0), corpus, tmp_path / "d")
    ck = torch.load(tmp_path / "d/last.ckpt", weights_only=True)
    state = next(v for k, v in ck["callbacks"].items() if k.startswith("TimeBudget"))
    assert 10 < ck["global_step"] < BUDGET["max_steps"]
    assert ck["global_step"] == state["stop_step"]
    assert r["best_val_loss"] is not None


def test_a_slow_first_step_does_not_shrink_the_estimate(corpus, tmp_path, clock):
    # the first step takes 2.5 s more (a GPU's compile/autotune); a validation at the
    # calibration step (val_every 10) must keep the estimate made there, which leaves the
    # first steps out: 3.125 s spent at step 10, DT a step since step 2 -> S = 10 + 30. An
    # average over all steps (0.3125 s) would stop at step 16
    clock(lambda i: DT + 2.5 * (i == 0))
    r = fit(dict(BUDGET, max_seconds=5.0, val_every=10), corpus, tmp_path / "s")
    assert r["steps"] == 40 == _budget(r["trainer"]).stop_step
    assert _budget(r["trainer"]).train_seconds() == 5.0


def test_an_estimate_made_short_by_slow_first_steps_is_corrected_without_validations(corpus, tmp_path, clock):
    # 0.15 s a step for steps 3-10, 1/256 s the others: the estimate at step 10 sees 0.15
    # s/step and would end the run at step 28; the doubling steps (20, 40, ...) measure the
    # real speed and spend the budget, though no validation comes before the end (a
    # word-level model's slow steps with val_every 250 did this)
    budget = 4.0
    clock(lambda i: 0.15 if 2 <= i < 10 else 1 / 256)
    r = fit(dict(BUDGET, max_seconds=budget, val_every=100_000), corpus, tmp_path / "c")
    spent = _budget(r["trainer"]).train_seconds()
    assert 0.95 * budget <= spent <= budget + 1 / 256 and r["steps"] > 500, (spent, r["steps"])
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


def test_resume_after_the_budget_is_spent_takes_no_step_and_a_new_budget_is_spent(corpus, tmp_path, clock):
    cfg = dict(BUDGET, max_seconds=2.0, val_every=20)  # 32 steps of DT
    clock(DT)
    done = fit(cfg, corpus, tmp_path / "a")
    assert done["steps"] == 32
    clock(DT)
    again = fit(cfg, corpus, tmp_path / "b", resume=str(tmp_path / "a/last.ckpt"))
    assert again["steps"] == done["steps"]  # not one step past the stop
    # a new budget of 4 s: the 2 s spent count, S is estimated anew -> 64 steps in all
    clock(DT)
    more = fit(dict(cfg, max_seconds=4.0), corpus, tmp_path / "c", resume=str(tmp_path / "a/last.ckpt"))
    cb = _budget(more["trainer"])
    assert more["steps"] == 64 == more["module"].schedule_steps
    assert cb.train_seconds() == 4.0


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
