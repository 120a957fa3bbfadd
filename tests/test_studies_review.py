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
    # vanishing, 3 seeds: the GRU solves T = 100 in 2 of them, and the far/near ratio is read model by model
    assert "A constant guess of 0.5 solves 0.1536 of the sequences" in page
    assert ("At T = 100, each cell trained from 3 seeds, the task (accuracy above 0.95) was solved by gru in 2 of 3 (accuracy 0.990, 1.000,"
            " 0.499), rnn in 0 of 3 (accuracy 0.141, 0.144, 0.145), lstm in 0 of 3 (accuracy 0.140, 0.144, 0.144)") in page
    assert ("the far/near ratio after training is 0.01 or more in gru seeds 0, 1, 2 (at initialisation it is at most 4e-07 in every model),"
            " and the task at T = 100 is solved by gru seeds 0, 1: 2 of the 3 models at 0.01 or more (gru seed 2 at accuracy 0.499: not"
            " solved but well above the constant guess, the task partly learned) and 0 of the 6 below it solved the task") in page
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


def test_review_reads_a_one_seed_vanishing_run_and_refuses_one_from_before_the_seeds(tmp_path):
    import pytest

    from pipeline.errors import UserError
    from studies import review

    van = json.loads((ROOT / "reports/vanishing/result.json").read_text())
    one = {**van, "seeds": [1], "adding_seeds": [r for r in van["adding_seeds"] if r["seed"] == 1],
           "gradient_ratio": [r for r in van["gradient_ratio"] if r["seed"] == 1],
           "adding": [{**r, "seeds": 1, "seeds solved (acc > 0.95)": int(any(q["solved"] for q in van["adding_seeds"]
                                                                              if q["seed"] == 1 and q["T"] == r["T"] and q["cell"] == r["cell"]))}
                      for r in van["adding"]]}
    line = review.adding_line(one)
    assert "each cell trained from 1 seed, the task" in line and "seeds," not in line
    for r in one["adding_seeds"]:
        if r["T"] == 100:
            assert f"{r['cell']} in {int(r['solved'])} of 1 (accuracy {r['accuracy']:.3f})" in line
    g = review.gradient_line(one)
    assert "the task at T = 100 is solved by" in g and g.count("seed ") >= 1 and "seeds " not in g
    # a report from before the seeds: one line that says what to rerun, not a KeyError
    rep = tmp_path / "reports"
    (rep / "vanishing").mkdir(parents=True)
    old = {k: v for k, v in van.items() if k not in ("adding_seeds", "gradient_ratio", "seeds")}
    (rep / "vanishing/result.json").write_text(json.dumps(old))
    (rep / "hello").mkdir()
    (rep / "hello/result.json").write_text((ROOT / "reports/hello/result.json").read_text())
    with pytest.raises(UserError, match=r"vanishing/result.json: written before the study ran from several seeds.*dvc repro studies/dvc.yaml:vanishing"):
        review.render(rep)
