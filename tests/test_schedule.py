"""The learning-rate schedule (CharLM.lr_at): warmup, cosine, warmup-stable-decay, and its params."""
from __future__ import annotations

import math

import pytest
from lightning.pytorch.callbacks import Callback

from lightning_modules.budget import TimeBudget
from lightning_modules.module import CharLM
from lightning_modules.train import fit
from pipeline.config import load_params, parse_sets
from pipeline.errors import UserError
from tests.fakeclock import install
from tests.test_budget import BUDGET, _budget

LR, M, W, S = 2e-3, 0.1, 10, 110


def _module(**kw) -> CharLM:
    return CharLM(vocab_size=5, hidden=4, layers=1, lr=LR, min_lr_frac=M, warmup_steps=W, max_steps=S, **kw)


def _cosine(step: int) -> float:
    """The plain schedule written out: linear warmup, then cosine from LR to M * LR over S - W steps."""
    if step < W:
        return LR * (step + 1) / W
    t = min(1.0, (step - W) / (S - W))
    return LR * (M + (1 - M) * (1 + math.cos(math.pi * t)) / 2)


def test_decay_frac_1_is_the_plain_cosine_exactly():
    m = _module()
    assert m.hparams.decay_frac == 1.0
    for s in range(0, S + 20):
        assert m.lr_at(s) == _cosine(s), s


def test_warmup_stable_decay():
    m = _module(decay_frac=0.2)  # 100 steps after warmup: 80 held, 20 decaying
    assert [m.lr_at(s) for s in range(W)] == [_cosine(s) for s in range(W)]
    assert all(m.lr_at(s) == LR for s in range(W, W + 81))
    decay = [m.lr_at(s) for s in range(W + 80, S + 1)]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly down to the floor
    assert m.lr_at(W + 90) == pytest.approx(LR * (M + (1 - M) / 2))  # the cosine's middle
    assert m.lr_at(S) == pytest.approx(LR * M) and m.lr_at(S + 50) == pytest.approx(LR * M)
    m.schedule_steps = 210  # a time budget moved the end: the decay moves with it
    assert m.lr_at(S) == LR and m.lr_at(210) == pytest.approx(LR * M)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_bad_decay_frac(bad):
    with pytest.raises(ValueError, match="decay_frac"):
        _module(decay_frac=bad)
    with pytest.raises(UserError, match=r"train\.decay_frac: must be in \(0, 1\]"):
        load_params("params.yaml", parse_sets([f"train.decay_frac={bad}"]))


def test_a_decay_shorter_than_one_step_is_refused():
    with pytest.raises(UserError, match=r"train\.decay_frac: 0\.001 x \(max_steps - warmup_steps\) = 0\.5 steps"):
        load_params("params.yaml", parse_sets(["train.decay_frac=0.001", "train.max_steps=550"]))
    load_params("params.yaml", parse_sets(["train.decay_frac=0.002", "train.max_steps=550"]))  # one step: allowed


def test_decay_frac_from_params():
    assert load_params("params.yaml").train.to_fit()["decay_frac"] == 0.2  # the workflow's default: WSD
    assert load_params("params.yaml", parse_sets(["preset=gpu"])).train.decay_frac == 1.0  # the anchor's cosine
    assert load_params("params.yaml", parse_sets(["train.decay_frac=0.25"])).train.to_fit()["decay_frac"] == 0.25


def test_an_explicit_override_wins_over_the_preset():
    gpu = load_params("params.yaml", parse_sets(["preset=gpu"])).train
    t = load_params("params.yaml", parse_sets(["train.batch_size=512", "preset=gpu", "train.lr=4e-3"])).train
    assert t.batch_size == 512 != gpu.batch_size and t.lr == 4e-3 != gpu.lr
    assert (t.hidden, t.layers, t.precision) == (gpu.hidden, gpu.layers, gpu.precision) == (512, 3, "bf16-mixed")


def test_time_budget_with_warmup_stable_decay(corpus, tmp_path, monkeypatch):
    install(monkeypatch, 1 / 64)  # an exact clock (tests/fakeclock.py): 3 s = 192 steps
    r = fit(dict(BUDGET, max_seconds=3.0, decay_frac=0.25), corpus, tmp_path / "w")
    m, steps = r["module"], r["steps"]
    assert steps == 192 == _budget(r["trainer"]).stop_step == m.schedule_steps
    assert m.lr_at(steps // 2) == m.hparams.lr  # still held at half the budget
    assert m.lr_at(steps - 1) == pytest.approx(m.hparams.lr * m.hparams.min_lr_frac, rel=0.05)


class SpeedUp(Callback):
    """A hand-stepped training clock: `slow` seconds a step until the decay begins, a quarter
    of that after; records the lr of every step. The budget reads this clock instead of the
    wall clock (the test's monkeypatch), so the run is the same under any machine load."""

    def __init__(self, slow: float):
        self.slow, self.lrs, self.clock = slow, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        self.lrs.append(pl_module.lr_at(step))
        self.clock += self.slow if step < pl_module.decay_start() else self.slow / 4


def test_a_budget_does_not_lift_the_lr_back_up_the_decay(corpus, tmp_path, monkeypatch):
    # steps get 4x faster once the decay begins: the validations inside the decay would
    # estimate a later end S, lifting the lr back up; a decay that has begun only comes earlier
    rec = SpeedUp(0.02)
    monkeypatch.setattr(TimeBudget, "train_seconds", lambda self: rec.clock)
    r = fit(dict(BUDGET, max_seconds=3.0, decay_frac=0.5, val_every=10), corpus, tmp_path / "u", callbacks=[rec])
    m, lrs = r["module"], rec.lrs
    start = math.ceil(m.decay_start())
    assert m.hparams.warmup_steps < start < r["steps"] - 10  # validations fell inside the decay
    decay = lrs[start:]
    assert all(b <= a for a, b in zip(decay, decay[1:])), "the lr went back up during the decay"
    assert lrs[-1] == pytest.approx(m.hparams.lr * m.hparams.min_lr_frac, rel=0.05)
    assert rec.clock <= 3.0 + 0.02  # the budget, to the last step
    # with the wall clock the end of the decay would follow the machine's load; this one is exact
    assert _budget(r["trainer"]).stop_step == r["steps"] == m.schedule_steps


@pytest.mark.parametrize("key", ["io_dropout", "weight_drop"])
@pytest.mark.parametrize("bad", ["1.0", "-0.1"])
def test_dropout_out_of_range_is_refused(key, bad):
    with pytest.raises(UserError, match=rf"train\.{key}: must be in \[0, 1\), got {bad}"):
        load_params("params.yaml", parse_sets([f"train.{key}={bad}"]))


def test_set_keeps_text_for_text_keys_and_numbers_elsewhere():
    """`--set sample.prime=1e3` primes with "1e3" (YAML would read a number, refused as a prime);
    `train.lr=3e-3` is the number (YAML 1.1 would read a string)."""
    sets = parse_sets(["sample.prime=1e3", "train.lr=3e-3", "presets.gpu.sample.prime=42", "tracking.uri=null", "train.cell=gru"])
    assert sets == {"sample.prime": "1e3", "train.lr": 3e-3, "presets.gpu.sample.prime": "42", "tracking.uri": None, "train.cell": "gru"}
    typed = ["a #b", "#x", "@x", "|", "a: b: c", "", " two words "]  # YAML would cut, empty or refuse these
    assert [parse_sets([f"sample.prime={v}"])["sample.prime"] for v in typed] == typed
    assert parse_sets(["sample.prime='x y'", 'sample.prime="ROMEO:"']) == {"sample.prime": "ROMEO:"}
    with pytest.raises(UserError, match="train.lr=@x': not a YAML value"):
        parse_sets(["train.lr=@x"])
    p = load_params("params.yaml", parse_sets(["sample.prime=1e3", "train.lr=3e-3"]))
    assert (p.sample.prime, p.train.lr) == ("1e3", 3e-3)
    with pytest.raises(UserError, match="train.hidden: must be an integer"):
        load_params("params.yaml", parse_sets(["train.hidden=wide"]))
