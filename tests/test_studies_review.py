"""docs/review.md's text says what the committed numbers show and no more."""
from __future__ import annotations

import json
import shutil

from tests.conftest import ROOT


def test_review_text_follows_the_committed_reports(tmp_path):
    from studies import review

    rep = tmp_path / "reports"
    shutil.copytree(ROOT / "reports", rep, ignore=shutil.ignore_patterns("*.png", "generators", "captioning"))
    page = review.render(rep)
    # (the committed reading.md, written by the variants stage, changes when that stage reruns)
    assert "Welch's t-test against" not in page and "paired t-test over the shared draws" in page and "Holm-corrected" in page
    # vanishing, 5 seeds: each seed's accuracy, the reach of each cell, the far/near ratio read model by model
    assert "A constant guess of 0.5 solves 0.1536 of the sequences" in page
    assert ("At T = 100, each cell trained from 5 seeds, the task (accuracy above 0.95) was solved in 2 of 5 by gru (accuracy 1.0000, 0.7015,"
            " 0.1590, 0.9990, 0.8595), in 0 of 5 by lstm") in page
    assert "The longest T solved in most seeds: rnn T = 20 (3 of 5), lstm T = 50 (4 of 5), gru T = 50 (5 of 5)." in page
    assert ("the far/near ratio after training is 0.01 or more in gru seeds 0, 1, 3, 4 (at initialisation it is below 1e-06 in every model),"
            " and the task at T = 100 is solved by gru seeds 0, 3: 2 of the 4 models at 0.01 or more (gru seed 1 at accuracy 0.7015, gru"
            " seed 4 at accuracy 0.8595: not solved but well above the constant guess, the task partly learned) and 0 of the 11 models"
            " below it solved the task") in page
    assert "additive, so gradients survive" not in page
    # bptt: equal characters, not equal updates; the like-for-like pair
    assert "full BPTT (T=256) 183, TBPTT(16,16) 2,929" in page and "(equal characters) TBPTT(16,16) scores best, 1.676" in page
    assert ("at the budget's end every one of the 3 seeds ranks the regimes as their means do: TBPTT(16,16) < TBPTT(32,64) < TBPTT(32,32)"
            in page)  # the order of the means, seed by seed
    assert ("TBPTT(32,32) 1.738 against TBPTT(32,64) 1.728 (1,464 steps each; TBPTT(32,64) lower in 3 of 3 seeds, "
            "TBPTT(32,64) - TBPTT(32,32) -0.010 ± 0.003)") in page and "Lightning's whole fit" not in page
    # equal updates: separate runs, one schedule; longer windows learn more per update, full BPTT most
    assert "At equal updates (runs of 183 steps each, with the same warmup and schedule" in page
    assert "best first: full BPTT (T=256) 2.166, TBPTT(128,128) 2.197, TBPTT(64,64) 2.227" in page
    assert "full BPTT gets 2.170 (state carried: 2.166)" in page
    # Chung at equal parameters beside the equal-width search
    assert "At equal parameters, as Chung et al. compared them (stage `variants_chung`)" in page
    assert "LSTM (V): best 8.514 vs 8.67; GRU (GRU): best 8.584 vs 8.54; tanh RNN (RNN): best 8.608 vs 9.10" in page
    assert "at equal parameters (stage variants_chung), GRU best 8.584 vs LSTM-V best 8.514" in page
    # variants: the text task is early training and left out of the GRU-vs-LSTM line
    assert "early-training numbers (146 optimizer steps per trial)" in page and "text: GRU best" not in page
    # Chung: equal width, with the parameter counts of the committed trials
    assert "V 13,120 / 20,998 / 44,125" in page and "GRU 24,833, RNN 11,211, V 41,308" in page


def _van(runs: list[tuple[str, int, float, float, float]], T: int = 100) -> dict:
    """A vanishing result.json from (cell, seed, accuracy, far_to_near, far_to_near_init) at one T."""
    seeds = sorted({seed for _, seed, *_ in runs})
    cells = list(dict.fromkeys(c for c, *_ in runs))
    each = [{"T": T, "cell": c, "seed": seed, "accuracy": acc, "solved": acc > 0.95} for c, seed, acc, _, _ in runs]
    return {"adding": [{"T": T, "cell": c, "accuracy": sum(r["accuracy"] for r in each if r["cell"] == c) / len(seeds),
                        "seeds solved (acc > 0.95)": sum(r["solved"] for r in each if r["cell"] == c), "seeds": len(seeds)} for c in cells],
            "adding_seeds": each, "seeds": seeds, "T_gradient": T, "solved_below": 0.04, "chance_accuracy": 0.1536,
            "gradient_ratio": [{"cell": c, "seed": seed, "accuracy": acc, "solved": acc > 0.95, "far_to_near": far, "far_to_near_init": init}
                               for c, seed, acc, far, init in runs]}


def test_review_vanishing_text_holds_for_other_outcomes():
    from studies import review

    one = _van([("gru", 1, 0.9995, 2.6, 3e-19), ("lstm", 1, 0.144, 5e-10, 3.4e-7), ("rnn", 1, 0.1445, 2e-17, 0.0)])
    line = review.adding_line(one)
    assert ("each cell trained from 1 seed, the task (accuracy above 0.95) was solved in 1 of 1 by gru (accuracy 0.9995),"
            " in 0 of 1 by rnn (accuracy 0.1445), in 0 of 1 by lstm (accuracy 0.1440). The longest T solved in most seeds:"
            " gru T = 100 (1 of 1), lstm none, rnn none. A failure says") in line  # best first
    g = review.gradient_line(one)
    assert "is 0.01 or more in gru seed 1 (at initialisation it is below 1e-06 in every model)" in g  # 3.4e-7 < 1e-06, not "3e-07"
    assert "solved by gru seed 1: 1 of the 1 model at 0.01 or more and 0 of the 2 models below it solved the task" in g
    # every model solved and kept it: no failure sentence, no "0 of the 0"
    every = _van([("gru", 0, 1.0, 2.0, 1e-18), ("lstm", 0, 0.99, 0.5, 1e-6)])
    assert "A failure says" not in review.adding_line(every)
    g = review.gradient_line(every)
    assert "2 of the 2 models at 0.01 or more solved the task" in g and "below it" not in g and "below 1e-05 in every model" in g
    # none learned it: the ratio reaches 0.01 in no model; a zero near-end gradient at init is said, not printed as nan
    none = _van([("rnn", 0, 0.14, 1e-17, float("nan")), ("rnn", 1, 0.15, 2e-17, 0.0)])
    g = review.gradient_line(none)
    assert "reaches 0.01 in no model (at initialisation it is undefined in some model" in g
    assert "solved by no model: 0 of the 2 models below it solved the task" in g and "nan" not in g
    # a model half-way: named as partly learned, not as solved
    half = _van([("gru", 0, 0.499, 1.76, 4e-18), ("gru", 1, 0.99, 2.0, 3e-19)])
    assert "(gru seed 0 at accuracy 0.4990: not solved but well above the constant guess, the task partly learned)" in review.gradient_line(half)


def test_review_refuses_a_vanishing_report_from_an_earlier_version(tmp_path):
    import pytest

    from pipeline.errors import UserError
    from studies import review

    van = json.loads((ROOT / "reports/vanishing/result.json").read_text())
    rep = tmp_path / "reports"
    (rep / "vanishing").mkdir(parents=True)
    (rep / "hello").mkdir()
    (rep / "hello/result.json").write_text((ROOT / "reports/hello/result.json").read_text())
    one_seed = {k: v for k, v in van.items() if k not in ("adding_seeds", "gradient_ratio", "seeds")}  # before the seeds
    no_init = {**van, "gradient_ratio": [{k: v for k, v in r.items() if k != "far_to_near_init"} for r in van["gradient_ratio"]]}
    for old in (one_seed, no_init):
        (rep / "vanishing/result.json").write_text(json.dumps(old))
        with pytest.raises(UserError, match=r"vanishing/result.json: written by an earlier version of the study.*dvc repro studies/dvc.yaml:vanishing"):
            review.render(rep)
