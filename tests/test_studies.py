"""The lecture's studies on tiny sizes: "hello" exactly, vanishing gradients, BPTT vs TBPTT, variants, review."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import load_params
from tests.conftest import ROOT, SHARED_CORPORA, one_line_error, run_module
from tests.lmdata import make_corpus


def params_for(tmp_path: Path, **overrides):
    o = {"tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    o.update(overrides)
    return load_params(ROOT / "params.yaml", o)


def test_hello_spells_hello_with_three_neurons(tmp_path):
    from studies import hello

    r = hello.run(params_for(tmp_path), tmp_path / "hello")
    assert r["spelled"] == "hello" and r["correct"] and r["hidden_units"] == 3
    t = pd.read_csv(tmp_path / "hello/probabilities.csv")
    assert list(t["input"]) == ["h", "e", "l", "l"] and list(t["output"]) == ["e", "l", "l", "o"]
    probs = t[["P(h)", "P(e)", "P(l)", "P(o)"]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    # deterministic for a seed
    assert hello.run(params_for(tmp_path), tmp_path / "again")["final_loss"] == r["final_loss"]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("study-hello").experiment_id])
    assert runs and runs[0].data.metrics["correct"] == 1.0


def test_vanishing_tiny(tmp_path):
    from studies import vanishing
    from studies.adding import gradient_by_lag, test_adding, train_adding

    p = params_for(tmp_path, **{"studies.vanishing.lengths": [8, 12], "studies.vanishing.steps": 20, "studies.vanishing.test_sequences": 500,
                               "studies.vanishing.workers": 1, "studies.vanishing.repeats": 2, "studies.vanishing.seed": 5})
    r = vanishing.run(p, tmp_path / "v")
    t = pd.read_csv(tmp_path / "v/adding.csv")
    assert len(t) == 6 and set(t.cell) == {"rnn", "lstm", "gru"} and (t.seeds == 2).all()
    assert t.params.max() / t.params.min() < 1.15  # the same parameter count, give or take a unit
    assert ((t.accuracy >= 0) & (t.accuracy <= 1)).all() and (t.test_mse > 0).all()
    # every (cell, T) from seeds 5 and 6; the table is their mean, the solved count theirs
    each = pd.read_csv(tmp_path / "v/adding_seeds.csv")
    assert len(each) == 12 and sorted(set(each.seed)) == [5, 6] == r["seeds"]
    by = each.groupby(["T", "cell"])
    for row in t.itertuples():
        runs = by.get_group((row.T, row.cell))
        assert row.accuracy == pytest.approx(runs.accuracy.mean(), abs=1e-4) and row.accuracy_sd == pytest.approx(runs.accuracy.std(), abs=1e-4)
        assert t.loc[row.Index, "seeds solved (acc > 0.95)"] == int(runs.solved.sum())
    # a seed's row is that seed's own training, not another's
    one = each[(each.cell == "rnn") & (each["T"] == 8)].set_index("seed")
    H = int(t[t.cell == "rnn"].hidden.iloc[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the study's workers train
    try:
        assert test_adding(train_adding("rnn", H, 8, 20, 64, 3e-3, 6), 8, 500)["accuracy"] == pytest.approx(one.accuracy[6], abs=1e-4)
    finally:
        torch.set_num_threads(threads)
    assert one.accuracy[5] != one.accuracy[6] or one.test_mse[5] != one.test_mse[6]
    g = pd.read_csv(tmp_path / "v/gradient_lag.csv")
    assert len(g) == 3 * 2 * 2 * 12 and (g.grad_norm >= 0).all()
    init = g[(g.weights == "init") & (g.cell == "gru")].groupby("seed").grad_norm.apply(list)
    assert init[5] != init[6]  # each seed's own initial weights ...
    H = int(t[t.cell == "gru"].hidden.iloc[0])
    start = train_adding("gru", H, 12, 1, 64, 0.0, 5)  # ... the very weights seed 5's training started from (lr 0: unchanged)
    assert init[5] == pytest.approx([float(x) for x in gradient_by_lag(start, 12)], rel=1e-5)
    ratios = pd.read_csv(tmp_path / "v/gradient_ratio.csv")
    assert len(ratios) == 6 and (ratios.far_to_near > 0).all() and (ratios.far_to_near_init >= 0).all()
    lstm = sorted(ratios[ratios.cell == "lstm"].far_to_near)
    assert r["far_to_near_gradient_ratio"]["lstm"] == pytest.approx(lstm[0])  # the lower median of 2: a model's own ratio, not their mean
    assert (tmp_path / "v/gradient_lag.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(q.name for q in (tmp_path / "v").iterdir()) == sorted(vanishing.FILES)


def test_adding_random_streams_are_apart(monkeypatch):
    """A seed's initial weights, its batches, the test set and the gradient probe draw numbers no
    other seed or use draws. torch keeps a seed's low 32 bits only (2**32 + s draws what s draws),
    and batches seeded s + 1 were seed s + 1's weights: both are compared as torch draws them."""
    from studies import adding

    def draws(seed32):  # what a generator seeded so draws (its state also records the seed it was given)
        return torch.rand(16, generator=torch.Generator().manual_seed(seed32))

    seeds = [adding.stream(s, u) for s in range(50) for u in (adding.WEIGHTS, adding.BATCHES, adding.TEST, adding.PROBE)]
    assert {adding.TEST_SEED, adding.PROBE_SEED} <= set(seeds)
    drawn = [draws(x) for x in seeds]
    assert all(not torch.equal(a, b) for i, a in enumerate(drawn) for b in drawn[i + 1:])  # 200 streams, all apart
    assert torch.equal(draws(2**32 + 7), draws(7))  # why: the truncation these seeds must survive
    # what a training really draws from: its batch generator at the first batch, its initial weights
    first = []
    real = adding.adding_batch

    def spy(b, T, g):
        if not first:
            copy = torch.Generator()
            copy.set_state(g.get_state())
            first.append(torch.rand(16, generator=copy))
        return real(b, T, g)

    monkeypatch.setattr(adding, "adding_batch", spy)
    trained = adding.train_adding("lstm", 4, 6, 2, 8, 0.0, 3)  # lr 0: the weights stay the initial ones
    assert torch.equal(first[0], draws(adding.stream(3, adding.BATCHES)))
    for other in (3, 4, 2**32 + 3, 2**32 + 4, adding.stream(3, adding.WEIGHTS), adding.stream(4, adding.WEIGHTS), adding.TEST_SEED):
        assert not torch.equal(first[0], draws(other)), other
    a, b = adding.initial_model("lstm", 4, 3).state_dict(), trained.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(adding.initial_model("lstm", 4, 4).rnn.rnn.weight_hh_l0, a["rnn.rnn.weight_hh_l0"])
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        adding.train_adding("rnn", 4, 6, 1, 8, 1e-3, -1)


def test_adding_problem_data():
    import torch

    from studies.adding import adding_batch

    x, y = adding_batch(100, 50, torch.Generator().manual_seed(0))
    assert 50 <= x.shape[1] <= 55 and (x[:, :, 1].sum(1) == 2).all()
    first_half = x[:, : x.shape[1] // 2, 1].sum(1)
    assert (first_half == 2).all()
    assert torch.allclose(y, 0.5 + (x[:, :, 0] * x[:, :, 1]).sum(1) / 4)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "lstm-cifg"])
def test_hidden_for_finds_the_closest_count_as_the_full_search_does(monkeypatch, cell):
    from studies import adding

    monkeypatch.setattr(adding, "HIDDEN_RANGE", range(2, 60))
    counts = {h: adding.n_params(cell, h) for h in adding.HIDDEN_RANGE}
    budgets = [1, counts[2], counts[59], counts[59] + 10_000, counts[17] + 1, counts[17] - 1, counts[40]]
    budgets += [(counts[h - 1] + counts[h]) // 2 for h in (10, 31, 50)]  # ties where the midpoint is whole
    budgets += [(counts[h - 1] + counts[h]) // 2 + 1 for h in (10, 31, 50)]
    for budget in budgets:
        full = min(adding.HIDDEN_RANGE, key=lambda h: abs(counts[h] - budget))  # the search it replaces
        assert adding.hidden_for(cell, budget) == full, budget


def test_bptt_study_tiny(tmp_path):
    from studies import bptt

    make_corpus(tmp_path / "onehot/toy")
    p = params_for(tmp_path, **{"studies.bptt.corpus": "toy", "studies.bptt.hidden": 16, "studies.bptt.layers": 1,
                                "studies.bptt.budget_chars": 6000, "studies.bptt.full_len": 32, "studies.bptt.batch_size": 8,
                                "studies.bptt.k1_eq_k2": [8, 16], "studies.bptt.k1_lt_k2": ["8:16"], "studies.bptt.repeats": 2,
                                "studies.bptt.seed": 5})
    bptt.run(p, tmp_path / "b", data_root=tmp_path / "onehot")
    t = pd.read_csv(tmp_path / "b/tradeoff.csv")
    assert list(t.regime) == ["full BPTT (T=32)", "TBPTT(8,8)", "TBPTT(16,16)", "TBPTT(8,16)"]
    # two seeds (5, 6) per regime: the tables hold their mean and sample sd, seeds.csv every run
    s = pd.read_csv(tmp_path / "b/seeds.csv")
    assert list(s.seed) == [5, 6] * 4 and list(s.regime) == [r for r in t.regime for _ in (5, 6)]
    g = s.groupby("regime", sort=False).val_loss
    assert np.allclose(t.val_loss, g.mean().round(4).values) and np.allclose(t.val_loss_sd, g.std(ddof=1).round(4).values, atol=1e-4)
    assert (t.val_loss_sd > 0).any()  # the seeds train different models
    assert list(t.columns).index("val_loss_sd") == list(t.columns).index("val_loss") + 1
    assert (t.train_chars <= 6000).all() and t.val_loss.between(0, math.log(40)).all()
    assert t.val_loss_windows.between(0, math.log(40)).all() and (t.s_per_1M_chars > 0).all()  # train_s rounds to 0.0 here
    # every regime validates at full BPTT's step interval: 6000 // (8 * 32) = 23 steps, val_points 4 -> every 5
    res = json.loads((tmp_path / "b/result.json").read_text())
    for r in res["rows"]:
        steps = [p["step"] for p in r["curve"]]
        assert steps[:4] == [5, 10, 15, 20] and steps[-1] == r["steps"] and r["curve"][-1]["val_loss"] == r["seeds"][0]["val_loss"]
        assert [x["seed"] for x in r["seeds"]] == [5, 6] and res["seeds"] == [5, 6]
        assert [p["chars"] for p in r["curve"]] == [s * 8 * r["k1"] for s in steps]
        assert all(a["train_s"] <= b["train_s"] for a, b in zip(r["curve"], r["curve"][1:]))  # rounded to 1 ms
    u = pd.read_csv(tmp_path / "b/updates.csv")  # equal updates: runs of full BPTT's 23 steps
    assert res["equal_updates"]["step"] == 23 and list(u.regime) == list(t.regime) and (u.steps == 23).all()
    assert list(u.train_chars) == [23 * 8 * k for k in (32, 8, 16, 8)] and u.val_loss.between(0, math.log(40)).all()
    assert u.val_loss[0] == t.val_loss[0] and u.val_loss_sd[0] == t.val_loss_sd[0]  # full BPTT's budget run is its equal-updates run
    assert np.allclose(u.val_loss, s.groupby("regime", sort=False).val_loss_equal_updates.mean().round(4).values)
    assert (u.val_loss[1:] != t.val_loss[1:]).all()  # the others train fewer steps on a schedule of their own
    assert (tmp_path / "b/curves.png").stat().st_size > 0 and (tmp_path / "b/updates.md").is_file()
    bad = params_for(tmp_path, **{"studies.bptt.k1_lt_k2": ["64:32"]})
    with pytest.raises(Exception, match="0 < K1 <= K2"):
        bptt.run(bad, tmp_path / "b2", data_root=tmp_path / "onehot")
    with pytest.raises(Exception, match=r"studies.bptt.repeats: must be >= 1, got 0"):
        bptt.run(params_for(tmp_path, **{"studies.bptt.repeats": 0}), tmp_path / "b2", data_root=tmp_path / "onehot")
    # a val split shorter than one window: one line before any training, the report untouched
    short = params_for(tmp_path, **{"studies.bptt.corpus": "toy", "studies.bptt.full_len": 10**6, "studies.bptt.val_points": 1})
    with pytest.raises(Exception, match=r"val.npy: \d+ tokens, fewer than 1000001 .*lower studies.bptt.full_len"):
        bptt.run(short, tmp_path / "b", data_root=tmp_path / "onehot")
    assert pd.read_csv(tmp_path / "b/tradeoff.csv").equals(t)


def test_bptt_windowed_loss_is_the_mean_over_zero_state_windows():
    """windowed_loss: each window predicted from a zero state, the remainder (< one window) left out."""
    from studies.bptt import windowed_loss

    torch.manual_seed(0)
    model = torch.nn.Module()
    emb, rnn, head = torch.nn.Embedding(7, 5), torch.nn.LSTM(5, 6, batch_first=True), torch.nn.Linear(6, 7)

    def forward(ids, state=None):
        y, state = rnn(emb(ids), state)
        return head(y), state

    model.forward = forward
    ids = torch.randint(0, 7, (53,))
    want = []
    for a in range(0, 48, 8):  # (53 - 1) // 8 = 6 windows of 8
        logits, _ = forward(ids[a : a + 8][None])
        want.append(torch.nn.functional.cross_entropy(logits[0], ids[a + 1 : a + 9], reduction="sum").item())
    assert windowed_loss(model, ids, 8, batch=4) == pytest.approx(sum(want) / 48, rel=1e-6)
    carried, _ = forward(ids[:-1][None])  # the same tokens with the state carried score otherwise
    assert torch.nn.functional.cross_entropy(carried[0, :48], ids[1:49]).item() != pytest.approx(sum(want) / 48, rel=1e-6)
    with pytest.raises(Exception, match="fewer than one window of full_len"):
        windowed_loss(model, ids[:8], 8)


@pytest.fixture
def jsb_dir(tmp_path):
    """The real JSB split from the mirror when present, else a small synthetic piano roll."""
    from pipeline.pianoroll import pianoroll

    src = SHARED_CORPORA / "jsb-chorales-quarter.json"
    d = tmp_path / "onehot/jsb_chorales"
    d.mkdir(parents=True)
    if src.is_file():
        obj = json.loads(src.read_text())
        obj = {k: v[:12] for k, v in obj.items()}  # a few chorales per split: a smoke test
    else:
        rng = np.random.default_rng(0)
        obj = {k: [[sorted(rng.choice(range(50, 70), 3, replace=False).tolist()) for _ in range(20)] for _ in range(6)] for k in ("train", "valid", "test")}
    (tmp_path / "jsb.json").write_text(json.dumps(obj))
    meta = pianoroll(tmp_path / "jsb.json", d)
    (d / "meta.json").write_text(json.dumps(meta))
    return tmp_path / "onehot"


def test_variants_study_at_equal_parameters(tmp_path, jsb_dir):
    """width: params: the RNN runs wider than V's draw, at about V's parameter count; the trials table keeps the draw."""
    from studies import variants

    p = params_for(tmp_path, **{"studies.variants.variants": ["V", "RNN"], "studies.variants.trials": 2, "studies.variants.tasks": ["jsb"],
                                "studies.variants.jsb_max_epochs": 1, "studies.variants.jsb_patience": 1, "studies.variants.workers": 2,
                                "studies.variants.width": "params"})
    r = variants.run(p, tmp_path / "var", data_root=jsb_dir)
    t = pd.read_csv(tmp_path / "var/trials_jsb.csv").sort_values(["trial", "variant"])
    v, rnn = t[t.variant == "V"].set_index("trial"), t[t.variant == "RNN"].set_index("trial")
    assert (v.hidden == v.hidden_drawn).all() and (rnn.hidden_drawn == v.hidden).all() and (rnn.hidden > 2 * v.hidden).all()
    assert ((rnn.params - v.params).abs() / v.params < 0.05).all()
    assert r["width"] == "params" and "matched to V's parameter count" in r["reading"][0]


def test_variants_study_tiny(tmp_path, jsb_dir):
    from studies import variants

    make_corpus(jsb_dir / "toy")
    p = params_for(tmp_path, **{"studies.variants.variants": ["V", "NFG", "GRU"], "studies.variants.trials": 2,
                                "studies.variants.jsb_max_epochs": 2, "studies.variants.jsb_patience": 2,
                                "studies.variants.text_corpus": "toy", "studies.variants.text_budget_chars": 4096,
                                "studies.variants.text_batch": 8, "studies.variants.text_seq_len": 32, "studies.variants.workers": 2})
    r = variants.run(p, tmp_path / "var", data_root=jsb_dir)
    for task in ("jsb", "text"):
        s = pd.read_csv(tmp_path / f"var/summary_{task}.csv")
        assert list(s.variant) == ["V", "NFG", "GRU"] and (s.trials == 2).all()
        assert np.isnan(s.paired_p[0]) and s.paired_p[1:].between(0, 1).all() and (s.pairs[1:] == 2).all()
        assert (s.holm_p[1:] >= s.paired_p[1:]).all() and s.wilcoxon_p.isna().all()  # 2 pairs: no signed-rank test
        trials = pd.read_csv(tmp_path / f"var/trials_{task}.csv")
        assert len(trials) == 6  # read back from MLflow: this invocation's runs only
    assert "Significantly worse than V" in r["reading"][0]
    # paired draws: the same (lr, hidden) sequence for every variant
    t = pd.read_csv(tmp_path / "var/trials_jsb.csv")
    assert t.groupby("variant")[["lr", "hidden"]].apply(lambda d: tuple(sorted(map(tuple, d.to_numpy())))).nunique() == 1
    assert (tmp_path / "var/boxplots.png").read_bytes()[:4] == b"\x89PNG"
    # and the review page renders from reports like these
    from studies import review
    from studies.hello import run as hello_run
    from studies.vanishing import run as van_run
    from studies.bptt import run as bptt_run

    rep = tmp_path / "reports"
    (tmp_path / "var").rename(rep / "variants") if rep.exists() else (rep.mkdir(), (tmp_path / "var").rename(rep / "variants"))
    hello_run(p, rep / "hello")
    van_run(params_for(tmp_path, **{"studies.vanishing.lengths": [6], "studies.vanishing.steps": 5, "studies.vanishing.test_sequences": 500, "studies.vanishing.workers": 1}), rep / "vanishing")
    bptt_run(params_for(tmp_path, **{"studies.bptt.corpus": "toy", "studies.bptt.hidden": 8, "studies.bptt.layers": 1,
                                     "studies.bptt.budget_chars": 2000, "studies.bptt.full_len": 16, "studies.bptt.batch_size": 4,
                                     "studies.bptt.k1_eq_k2": [8], "studies.bptt.k1_lt_k2": []}), rep / "bptt", data_root=jsb_dir)
    page = review.render(rep)
    assert "## 1. Why are plain recurrent networks ineffective?" in page and "| variant" in page and "hello" in page
    assert "Against the published figures" not in page  # stage variants_full_jsb not run
    import shutil

    shutil.copytree(rep / "variants", rep / "variants_full")
    best = r["best"]["jsb"]
    page = review.render(rep)
    verdict = "met." if best["V"] <= 8.67 and best["GRU"] <= 8.67 else "not met."
    assert f"LSTM (V): best {best['V']:.3f} vs 8.67" in page and f"The bar (best LSTM and GRU <= 8.67) is {verdict}" in page


def test_study_params_are_validated(tmp_path):
    assert "studies.variants.variants: unknown" in one_line_error(
        run_module("studies.variants", "--params", str(_params_file(tmp_path, "variants", {"variants": ["V", "XYZ"]}))))
    assert "studies.variants.tasks: unknown task 'xyz'" in one_line_error(
        run_module("studies.variants", "--params", str(_params_file(tmp_path, "variants", {})), "--set", "studies.variants.tasks=[xyz]"))
    assert "studies.vanishing.cells: unknown" in one_line_error(
        run_module("studies.vanishing", "--params", str(_params_file(tmp_path, "vanishing", {"cells": ["lstmm"]}))))
    assert "studies.hello.speed: unknown key" in one_line_error(
        run_module("studies.hello", "--params", str(_params_file(tmp_path, "hello", {"speed": 1}))))
    import yaml

    f = _params_file(tmp_path, "hello", {})
    raw = yaml.safe_load(f.read_text())
    raw["studies"]["preset"] = "fulll"
    f.write_text(yaml.safe_dump(raw))
    e = one_line_error(run_module("studies.hello", "--params", str(f)))
    assert "studies.preset: unknown preset 'fulll'" in e and "full" in e  # a typo would otherwise run the default sizes


def _params_file(tmp_path, study, values):
    import yaml

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["studies"][study].update(values)
    p["tracking"]["enabled"] = False
    f = tmp_path / f"params-{study}.yaml"
    f.write_text(yaml.safe_dump(p))
    return f


def test_variants_reading_cites_only_the_variants_that_ran():
    from studies.variants import reading

    def summary(names, trials):
        sig = [False] + [True] * (len(names) - 1)
        return pd.DataFrame({"variant": names, "trials": trials, "diverged": 0, "pairs": trials, "median": 8.7, "best": [8.5 + 0.01 * k for k in range(len(names))],
                             "params (median)": 20000, "holm_p": [np.nan] + [0.01] * (len(names) - 1),
                             "significant (Holm p<0.05)": sig, "worse than V": sig})

    chung = reading("jsb", summary(["V", "GRU", "RNN"], 20), "NLL")
    assert ("Significantly worse than V (paired t-test over 20 shared (lr, hidden) draws, Holm-corrected over the"
            " 2 variants tested, p < 0.05): GRU, RNN.") in chung
    assert "equal width, not at equal parameters" in chung and "wilcoxon_p" in chung
    assert "NOAF" not in chung and "Chung et al. 2014" in chung
    greff = reading("jsb", summary(["V", "NOAF", "NFG"], 20), "NLL")
    assert "Greff et al. found NOAF and NFG" in greff
    few = reading("jsb", summary(["V", "NOAF"], 4), "NLL")
    assert "little power" in few and "Wilcoxon signed-rank test is left out" in few and "0.125" in few
    text = reading("text", summary(["V", "NOAF"], 4), "nats/char", baseline=8.7, steps=146)
    assert "after 146 optimizer steps" in text and "scores 8.700 nats/char on the val split" in text and "the median of V, NOAF is not below it" in text
