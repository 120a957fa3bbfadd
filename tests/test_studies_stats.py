"""The studies' statistics: the paired test and Holm's correction of the variants study, the adding
problem's chance level and test count, the text task's bigram baseline and parameter count."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest


def _trials(scores: dict[str, list[float]]) -> pd.DataFrame:
    """One row per (variant, draw); draw k has the same (lr, hidden) for every variant, rows shuffled."""
    draws = [(1e-3 * (k + 1), 24 + 5 * k) for k in range(len(scores["V"]))]
    rows = [{"variant": v, "trial": k, "lr": lr, "hidden": h, "test_score": s, "params": 1000}
            for v, ss in scores.items() for k, ((lr, h), s) in enumerate(zip(draws, ss))]
    return pd.DataFrame(rows).sample(frac=1, random_state=0).reset_index(drop=True)


def test_paired_test_finds_what_welch_misses_and_holm_corrects():
    from scipy import stats

    from studies.variants import summarize

    base = np.array([8.5, 9.0, 9.5, 10.0, 10.5, 11.0])  # the draws' spread dominates ...
    worse = base + 0.1 + np.array([0.01, -0.01, 0.02, -0.02, 0.0, 0.01])  # ... a small shift on every draw
    noise = base + np.array([0.05, -0.04, 0.03, -0.05, 0.04, -0.03])
    s = summarize(_trials({"V": list(base), "FGR": list(worse), "NP": list(noise)}), ["V", "FGR", "NP"]).set_index("variant")
    assert stats.ttest_ind(worse, base, equal_var=False).pvalue > 0.8  # Welch sees nothing
    assert s.loc["FGR", "paired_p"] == pytest.approx(stats.ttest_rel(worse, base).pvalue, rel=1e-12)
    assert s.loc["FGR", "paired_p"] < 1e-4
    assert s.loc["FGR", "pairs"] == 6 and s.loc["FGR", "mean_diff_vs_V"] == pytest.approx(0.10 + 0.01 / 6)
    assert s.loc["FGR", "wilcoxon_p"] == pytest.approx(2 / 2**6)  # 6 of 6 differences positive: the exact smallest p
    assert s.loc["FGR", "worse than V"] and not s.loc["NP", "significant (Holm p<0.05)"]
    # Holm over the 2 variants tested, by hand: the smaller p times 2, the larger times 1, kept monotone
    p_fgr, p_np = s.loc["FGR", "paired_p"], s.loc["NP", "paired_p"]
    assert s.loc["FGR", "holm_p"] == pytest.approx(2 * p_fgr) and s.loc["NP", "holm_p"] == pytest.approx(max(2 * p_fgr, p_np))
    assert np.isnan(s.loc["V", "paired_p"]) and np.isnan(s.loc["V", "holm_p"])


def test_holm_by_hand():
    from studies.variants import holm

    # sorted 0.01, 0.03, 0.04 (m = 3): 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 1 x 0.04 = 0.04 -> max(0.06, 0.04) = 0.06
    assert np.allclose(holm([0.04, 0.01, np.nan, 0.03]), [0.06, 0.03, np.nan, 0.06], equal_nan=True)
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # 2 x 0.6 capped at 1, and no adjusted p below an earlier one


def test_text_params_are_the_recurrent_layer_whatever_the_vocabulary():
    from studies.variants import GREFF, text_params

    assert text_params("gru", 59, 65) == 21_240 == 3 * (59 * (59 + 59) + 2 * 59) == text_params("gru", 59, 97)
    from tests.conftest import ROOT

    committed = pd.read_csv(ROOT / "reports/variants/trials_text.csv")  # counted with 65 symbols: the same numbers
    assert all(text_params(GREFF[r.variant], r.hidden, 65) == r.params for r in committed.itertuples())


def test_bigram_baseline_by_hand(tmp_path):
    from studies.variants import bigram_nats

    (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": 2}))
    np.save(tmp_path / "train.npy", np.array([0, 1, 0, 1, 0], dtype=np.uint8))  # n(0,1) = 2, n(1,0) = 2
    np.save(tmp_path / "val.npy", np.array([0, 1, 1], dtype=np.uint8))  # scored: 0->1 and 1->1
    # add-one: P(1|0) = (2 + 1) / (2 + 2) = 3/4, P(1|1) = (0 + 1) / (2 + 2) = 1/4
    assert bigram_nats(tmp_path) == pytest.approx(-(np.log(3 / 4) + np.log(1 / 4)) / 2)


def test_adding_chance_level_is_derived_and_matches_a_draw():
    import torch

    from studies.adding import CHANCE_ACCURACY, CHANCE_MSE, SOLVED, adding_batch

    assert CHANCE_ACCURACY == pytest.approx(0.16 - 0.16**2 / 4) and CHANCE_ACCURACY == pytest.approx(0.1536)
    _, y = adding_batch(200_000, 4, torch.Generator().manual_seed(0))  # the constant guess 0.5 against real targets
    assert float(((y - 0.5).abs() < SOLVED).float().mean()) == pytest.approx(CHANCE_ACCURACY, abs=0.004)  # ~5 sd
    assert float(((y - 0.5) ** 2).mean()) == pytest.approx(CHANCE_MSE, rel=0.02)


def test_adding_test_uses_exactly_n_sequences():
    import torch

    from studies.adding import TEST_SEED, Regressor, adding_batch, test_adding

    torch.manual_seed(0)
    model = Regressor("gru", 4)

    def by_hand(sizes, T=6, seed=TEST_SEED):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            e = torch.cat([model(x) - y for x, y in (adding_batch(b, T, g) for b in sizes)])
        return {"test_mse": float((e**2).mean()), "accuracy": float((e.abs() < 0.04).float().mean())}

    assert test_adding(model, 6, 2000) == by_hand([500] * 4)  # the default: the same numbers as before
    assert test_adding(model, 6, 700) == by_hand([500, 200])  # was 500
    assert test_adding(model, 6, 3) == by_hand([3])  # was 500
    with pytest.raises(ValueError, match="n must be >= 1"):
        test_adding(model, 6, 0)


def test_pairs_are_trials_even_when_two_draws_coincide_and_divergence_is_reported():
    from studies.variants import paired_vs_base, reading, summarize

    t = _trials({"V": [1.0, 2.0, 3.0, 4.0], "NIG": [1.1, 2.05, 3.3, 4.2], "FGR": [float("nan")] * 4, "CIFG": [1.5, float("nan"), 3.5, 4.5]})
    t.loc[:, ["lr", "hidden"]] = (0.01, 32)  # lr_min == lr_max and one hidden size: every draw alike
    d, _, p, _ = paired_vs_base(t, "NIG")
    assert sorted(d.round(6)) == [0.05, 0.1, 0.2, 0.3]  # 4 pairs by trial, not 16 by (lr, hidden)
    s = summarize(t, ["V", "NIG", "FGR", "CIFG"])
    assert "FGR" not in set(s.variant) and s.set_index("variant").loc["CIFG", ["diverged", "pairs"]].tolist() == [1, 3]
    text = reading("jsb", s, "NLL", order=["V", "NIG", "FGR", "CIFG"])
    assert "Diverged (no finite score): FGR all 4, CIFG 1 of 4" in text and "over 3-4 shared (lr, hidden) draws" in text
    # the same non-zero difference in every pair: a sure difference, not "no test"
    d, t_, p, _ = paired_vs_base(_trials({"V": [1.0, 2.0, 3.0], "NP": [1.5, 2.5, 3.5]}), "NP")
    assert p == 0.0 and t_ > 0


def test_a_v_that_diverged_everywhere_is_one_line():
    from pipeline.errors import UserError
    from studies.variants import reading, summarize

    s = summarize(_trials({"V": [float("nan")] * 3, "NIG": [1.0, 2.0, 3.0]}), ["V", "NIG"])
    with pytest.raises(UserError, match="every trial of V on jsb diverged.*lower studies.variants.lr_max"):
        reading("jsb", s, "NLL", order=["V", "NIG"])


def test_equal_parameter_widths_are_the_nearest_count_to_vs():
    """width: params: each cell gets the width whose parameter count is nearest to V's at the draw."""
    from studies.variants import GREFF, VariantsParams, matched_hidden, param_counter, sized, trial_settings

    for task in ("jsb", "text"):
        count = param_counter(task)
        for h in (1, 7, 24, 36, 64):
            target = count("lstm-v", h)
            assert matched_hidden(count, "lstm-v", target) == h
            for cell in ("gru", "rnn", "lstm-fgr", "lstm-cifg"):
                m = matched_hidden(count, cell, target)
                assert all(abs(count(cell, m) - target) <= abs(count(cell, k) - target) for k in range(max(1, m - 3), m + 4))
        assert matched_hidden(count, "rnn", count("lstm-v", 36)) > 36 > matched_hidden(count, "lstm-fgr", count("lstm-v", 36))
    hp = VariantsParams(variants=("V", "GRU", "RNN"), trials=3)
    same = trial_settings(hp)
    assert sized(same, hp, "jsb") == same  # width: equal, the default
    matched = sized(same, VariantsParams(variants=("V", "GRU", "RNN"), trials=3, width="params"), "jsb")
    for a, b in zip(same, matched):  # the pairing (trial, lr, seed) is kept; only the widths move
        assert {k: a[k] for k in ("variant", "trial", "lr", "seed")} == {k: b[k] for k in ("variant", "trial", "lr", "seed")}
        assert b["hidden_drawn"] == a["hidden"] and (b["hidden"] == a["hidden"]) == (b["variant"] == "V")
    count = param_counter("jsb")
    for b in matched:
        v = count(GREFF["V"], b["hidden_drawn"])
        assert abs(count(b["cell"], b["hidden"]) - v) / v < 0.05
