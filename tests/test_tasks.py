"""The tasks study (slides 2-3): the unrolled perceptron, corpus classification, regime forecasting."""
from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_modules.cells import RNNCell
from pipeline.errors import UserError
from studies import regimes, snippets
from studies.tasks import prefixes
from studies.unrolled import UnrolledPerceptron, compare
from tests.conftest import one_line_error, run_module
from tests.lmdata import make_corpus, toy_text
from tests.test_studies import _params_file, params_for

TINY = {"studies.tasks.cells": ["rnn", "lstm"], "studies.tasks.classify_corpora": ["play", "code"], "studies.tasks.classify_len": 16, "studies.tasks.classify_hidden": 16,
        "studies.tasks.classify_batch": 16, "studies.tasks.classify_steps": 120, "studies.tasks.classify_val": 100,
        "studies.tasks.forecast_train_series": 40, "studies.tasks.forecast_test_series": 10, "studies.tasks.forecast_series_len": 300,
        "studies.tasks.forecast_len": 64, "studies.tasks.forecast_warmup": 20, "studies.tasks.forecast_hidden": 16,
        "studies.tasks.forecast_steps": 150, "studies.tasks.unrolled_steps": 6}


def code_text(n_chars: int, seed: int = 0) -> str:
    """C-like lines: braces, semicolons and identifiers, an alphabet that overlaps toy_text's letters."""
    rnd = random.Random(seed)
    names = ["ret", "dev", "len", "buf", "idx"]
    out, n = [], 0
    while n < n_chars:
        a, b = rnd.choice(names), rnd.choice(names)
        line = rnd.choice([f"\tif (!{a})\n\t\treturn -{rnd.randint(1, 99)};\n", f"\t{a} = {b} + {rnd.randint(0, 9)};\n",
                           f"static int {a}_{b}(void *{a})\n{{\n"])
        out.append(line)
        n += len(line)
    return "".join(out)[:n_chars]


@pytest.fixture(scope="module")
def onehot_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    make_corpus(root / "play", toy_text(30_000, seed=5))
    make_corpus(root / "code", code_text(30_000, seed=6))
    (root / "music").mkdir()
    (root / "music/meta.json").write_text(json.dumps({"kind": "music"}))
    return root


def test_the_unrolled_perceptron_computes_the_recurrent_layer_and_bptt_is_the_sum_of_its_layers():
    r = compare(steps=7, seed=3)
    assert r["max_output_diff"] < 1e-12 and r["max_grad_diff"] < 1e-12 and r["max_grad_diff_input"] < 1e-12
    norms = r["layer_grad_norms"]
    assert len(norms) == 7 and norms[0] == 0.0  # layer 1 multiplies h_0 = 0
    assert min(norms[1:]) > 0 and norms[-1] > 10 * norms[1]  # the share shrinks away from the loss


def test_the_perceptron_has_its_own_weights_per_layer_so_changing_one_changes_its_output():
    torch.manual_seed(0)
    cell = RNNCell(3, 4).double()
    mlp = UnrolledPerceptron(cell, 5)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    same = mlp(x)
    with torch.no_grad():
        mlp.layers[3].weight_hh += 0.1
    changed = mlp(x)
    assert torch.equal(same[:, :3], changed[:, :3]) and (same[:, 3:] - changed[:, 3:]).abs().max() > 1e-3
    assert cell.weight_hh.data_ptr() != mlp.layers[0].weight_hh.data_ptr()
    with pytest.raises(ValueError, match="input has 4 steps, the perceptron 5 layers"):
        mlp(x[:, :4])


def test_with_one_regime_the_filter_is_the_ar1_forecast_and_least_squares_finds_its_coefficient():
    rng = np.random.default_rng(0)
    rets, regs = regimes.simulate(30, 2000, [0.6, 0.6], 0.9, 1.0, rng)
    pred, post = regimes.oracle(rets, [0.6, 0.6], 0.9, 1.0)
    assert np.allclose(pred, 0.6 * rets[:, :-1]) and np.allclose(post, 0.5)
    coef = regimes.fit_ar(rets, 3)
    assert coef[0] == pytest.approx(0.6, abs=0.02) and np.abs(coef[1:]).max() < 0.02
    manual = coef[0] * rets[:, 2:-1] + coef[1] * rets[:, 1:-2] + coef[2] * rets[:, :-3]
    assert np.allclose(regimes.ar_predict(rets, coef)[:, 2:], manual)


def test_the_filter_is_the_exact_conditional_mean_summed_over_every_regime_path():
    """Brute force: E[r_{t+1} | r_0..r_t] and P(s_t | r_0..r_t) by enumerating all k^(t+2) regime paths
    (s_0 uniform, r_0 read as following r_{-1} = 0, the filter's convention)."""
    phis, stay, sigma = np.array([-0.5, 0.7, 0.2]), 0.8, 0.7
    rets, _ = regimes.simulate(3, 6, phis, stay, sigma, np.random.default_rng(3))
    pred, post = regimes.oracle(rets, phis, stay, sigma)
    a, k = regimes.transition(3, stay), 3
    pdf = lambda x, m: np.exp(-0.5 * ((x - m) / sigma) ** 2)  # noqa: E731  (constants cancel)
    for i in range(3):
        r = rets[i]
        for t in range(rets.shape[1] - 1):
            num = den = 0.0
            marg = np.zeros(k)
            for path in itertools.product(range(k), repeat=t + 2):  # s_0 .. s_{t+1}
                p = 1 / k * np.prod([a[path[u - 1], path[u]] for u in range(1, t + 2)])
                p *= np.prod([pdf(r[u], phis[path[u]] * (r[u - 1] if u else 0.0)) for u in range(t + 1)])
                den += p
                num += p * phis[path[t + 1]] * r[t]
                marg[path[t]] += p
            assert pred[i, t] == pytest.approx(num / den, abs=1e-12)
            assert np.allclose(post[i, t], marg / den, atol=1e-12)


def test_regimes_persist_as_the_chain_says_and_the_filter_beats_the_linear_forecasts():
    rng = np.random.default_rng(1)
    phis, stay = [-0.5, 0.7], 0.95
    rets, regs = regimes.simulate(100, 1000, phis, stay, 1.0, rng)
    switches = (np.diff(regs, axis=1) != 0).mean()
    assert switches == pytest.approx(1 - stay, abs=0.005)
    assert np.allclose(regimes.transition(3, 0.8).sum(1), 1) and regimes.transition(3, 0.8)[0, 1] == pytest.approx(0.1)
    pred, post = regimes.oracle(rets, phis, stay, 1.0)
    y = rets[:, 1:]
    mse = lambda p: ((p - y)[:, 50:] ** 2).mean()  # noqa: E731
    ar = regimes.ar_predict(rets, regimes.fit_ar(rets, 4))
    assert mse(pred) < mse(ar) < mse(np.zeros_like(y))
    assert ((post[:, :, 1] > 0.5) == (regs == 1))[:, 50:].mean() > 0.8  # the filter tells the regimes apart


def test_snippets_map_every_corpus_into_one_alphabet_and_naive_bayes_reads_them(onehot_root):
    data = snippets.load(onehot_root, ["play", "code"], 16)
    assert data.alphabet == sorted(set(toy_text(30_000, seed=5)) | set(code_text(30_000, seed=6)))
    rng = np.random.default_rng(0)
    for k, (name, text) in enumerate([("play", toy_text(30_000, seed=5)), ("code", code_text(30_000, seed=6))]):
        w = data.windows(k, "val", 5, 16, rng)
        assert w.shape == (5, 16)
        for row in w:
            assert "".join(data.alphabet[i] for i in row) in text[int(0.9 * len(text)) - 1:]
    x = np.concatenate([data.windows(k, "val", 50, 16, rng) for k in range(2)])
    y = np.repeat([0, 1], 50)
    acc = snippets.naive_bayes_accuracy(data.unigram_logp(), x, y, [1, 16])
    assert acc[1] > 0.95 and acc[0] < acc[1]
    assert prefixes(16) == [1, 2, 4, 8, 16] and prefixes(12) == [1, 2, 4, 8, 12]
    with pytest.raises(UserError, match=r"fewer than studies.tasks.classify_len=5000; lower classify_len"):
        snippets.load(onehot_root, ["play", "code"], 5000)


def test_the_study_writes_its_tables_plot_and_mlflow_run(tmp_path, onehot_root):
    from studies import tasks

    r = tasks.run(params_for(tmp_path, **TINY), tmp_path / "out", data_root=onehot_root)
    cls = pd.read_csv(tmp_path / "out/classify.csv")
    assert list(cls.columns) == ["prefix_chars", "rnn", "lstm", "naive_bayes"] and list(cls.prefix_chars) == [1, 2, 4, 8, 16]
    assert cls.lstm.iloc[-1] > 0.9 and cls.lstm.iloc[-1] >= cls.lstm.iloc[0]
    fc = pd.read_csv(tmp_path / "out/forecast.csv")
    assert list(fc.forecast) == ["naive (index unchanged)", "AR(8), least squares", "rnn, 16 units", "lstm, 16 units", "regime filter (the optimum)"]
    assert fc.share_of_optimal_gain.iloc[0] == 0 and fc.share_of_optimal_gain.iloc[-1] == pytest.approx(1)
    assert fc.mse.iloc[-1] == fc.mse.min()  # nothing beats the optimum on this many test days
    assert fc.r2.iloc[3] > 0.5 * fc.r2.iloc[-1]  # the LSTM's forecast learned part of the regimes
    assert len(pd.read_csv(tmp_path / "out/unrolled.csv")) == 6
    assert (tmp_path / "out/tasks.png").stat().st_size > 1000
    assert "| forecast" in (tmp_path / "out/forecast.md").read_text()
    assert r["unrolled"]["max_grad_diff"] < 1e-12 and json.loads((tmp_path / "out/result.json").read_text())["params"]["classify_len"] == 16
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("study-tasks").experiment_id])
    assert run.data.metrics["classify_acc_lstm"] == pytest.approx(cls.lstm.iloc[-1]) and run.info.run_name == "rnn-lstm"
    assert {"classify.md", "forecast.md", "tasks.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    # the review page's section 1 quotes the report; without a GRU, no GRU-against-LSTM line
    import shutil

    from studies import review

    shutil.copytree(tmp_path / "out", tmp_path / "rep/tasks")
    (line, _) = review.tasks_lines(tmp_path / "rep")
    assert f"rnn {fc.share_of_optimal_gain.iloc[2]:.2f}, lstm {fc.share_of_optimal_gain.iloc[3]:.2f}" in line and "12 layers" not in line
    assert "a perceptron of 6 layers" in line and review.tasks_gru_line(tmp_path / "rep") == ""
    assert review.tasks_lines(tmp_path / "absent") == [] and review.tasks_gru_line(tmp_path / "absent") == ""


@pytest.mark.parametrize("values, message", [
    ({"classify_corpora": ["play", "play"]}, "studies.tasks.classify_corpora: needs 2 or more different corpora, got ['play', 'play']"),
    ({"classify_corpora": ["play", "music"]}, "data/onehot/music/meta.json: music is not char-level text; list char-level text corpora in studies.tasks.classify_corpora"),
    ({"classify_corpora": ["play", "absent"]}, "data/onehot/absent/meta.json: not found; run `dvc repro onehot@absent` first (a text corpus of params.yaml `corpora`)"),
    ({"forecast_phis": [0.5, 1.2]}, "studies.tasks.forecast_phis: each regime's AR(1) coefficient must be in (-1, 1), got [0.5, 1.2]"),
    ({"cells": ["lstm", "lstmx"]}, "studies.tasks.cells: ['lstmx'] is not a list of different cells; choose from rnn"),
    ({"cells": ["gru", "gru"]}, "studies.tasks.cells: ['gru', 'gru'] is not a list of different cells"),
    ({"cells": "lstm"}, "params.yaml: studies.tasks.cells: must be a list, got 'lstm'"),
    ({"forecast_phis": ["up", 0.5]}, "params.yaml: studies.tasks.forecast_phis[0]: must be a number, got 'up'"),
    ({"forecast_warmup": 63}, "studies.tasks: needs 0 <= forecast_warmup < forecast_len - 1 and 2 <= forecast_len <= forecast_series_len"),
    ({"forecast_len": 1, "forecast_warmup": 0}, "studies.tasks: needs 0 <= forecast_warmup < forecast_len - 1"),
    ({"forecast_len": 400}, "studies.tasks: needs 0 <= forecast_warmup < forecast_len - 1 and 2 <= forecast_len <= forecast_series_len (a training window"),
    ({"classify_batch": 15}, "studies.tasks.classify_batch: 15 does not split evenly over 2 corpora; use a multiple of 2, e.g. 14"),
    ({"classify_batch": 1}, "studies.tasks.classify_batch: 1 is fewer than one snippet per corpus (2); raise it"),
    ({"forecast_stay": 1.0}, "studies.tasks: forecast_stay must be in (0, 1) and forecast_sigma > 0, got 1.0 and 1.0"),
    ({"ar_order": 0}, "studies.tasks.ar_order: must be >= 1, got 0"),
    ({"ar_order": 300}, "studies.tasks.ar_order: 300 must be below forecast_series_len=300"),
])
def test_bad_settings_fail_with_one_line_before_training_and_keep_the_last_report(tmp_path, onehot_root, values, message):
    data = tmp_path / "data"
    data.mkdir()
    (data / "onehot").symlink_to(onehot_root)
    (tmp_path / "o").mkdir()
    (tmp_path / "o/classify.md").write_text("the last good report")
    (tmp_path / "o/result.json").write_text("{}\n")  # a report's folder, which a run may replace
    f = _params_file(tmp_path, "tasks", {**{k.split(".")[-1]: v for k, v in TINY.items()}, **values})
    p = run_module("studies.tasks", "--params", str(f), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert one_line_error(p).startswith(f"error: {message}")
    assert (tmp_path / "o/classify.md").read_text() == "the last good report"
