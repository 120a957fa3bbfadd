"""Image captioning (slide 19): the scenes, BLEU, beam search, and the study on tiny sizes."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from studies.bleu import corpus_bleu
from studies.shapes import COLOURS, captions, relation, scenes
from tests.conftest import ROOT, one_line_error, run_module
from tests.test_studies import _params_file, params_for


def test_scenes_are_deterministic_and_their_captions_describe_the_pixels():
    a, b = scenes(60, seed=1, noise=0.0), scenes(60, seed=1, noise=0.0)
    assert np.array_equal(a.images, b.images) and a.refs == b.refs
    assert not np.array_equal(scenes(60, seed=2, noise=0.0).images, a.images)
    assert {len(r) for r in a.refs} == {1, 2}
    for img, refs, objs in zip(a.images, a.refs, a.objects):
        assert refs == captions(objs)
        for o in objs:  # the shape's centre pixel has the colour its caption names (jitter <= 20)
            px = img[:, int(o["y"]), int(o["x"])].astype(int)
            assert np.abs(px - np.array(COLOURS[o["colour"]])).max() <= 20, (refs, px)
            assert f"{o['size']} {o['colour']} {o['shape']}" in refs[0]
        if len(objs) == 2:
            rel = relation(*objs)
            dx, dy = objs[0]["x"] - objs[1]["x"], objs[0]["y"] - objs[1]["y"]
            assert rel == ("left of" if dx < 0 else "right of") if abs(dx) > abs(dy) else rel == ("above" if dy < 0 else "below")
            assert f" {rel} " in refs[0]


@pytest.mark.parametrize("kw, msg", [({"n": 0}, "at least 1"), ({"size": 16}, "image_size"),
                                     ({"two_objects": 1.5}, "two_objects"), ({"noise": -0.1}, "noise")])
def test_scenes_refuse_bad_settings(kw, msg):
    args = {"n": 4, **kw}
    with pytest.raises(UserError, match=msg):
        scenes(**args)


def test_bleu_against_hand_computed_values():
    assert corpus_bleu(["the cat is on the mat"], [["the cat is on the mat"]]) == pytest.approx(1.0)
    # clipped precisions 5/7, 4/6, 2/5, 1/4; the closest reference has the hypothesis's 7 words: BP = 1
    got = corpus_bleu(["the cat the cat on the mat"], [["the cat is on the mat", "there is a cat on the mat"]])
    assert got == pytest.approx((5 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)
    # every n-gram right but 2 words against 6: the brevity penalty exp(1 - 6/2)
    assert corpus_bleu(["the cat"], [["the cat is on the mat"]], n=2) == pytest.approx(math.exp(-2))
    assert corpus_bleu(["a b c d"], [["w x y z"]]) == 0.0
    with pytest.raises(ValueError, match="one list of references per hypothesis"):
        corpus_bleu(["a"], [])


def _teacher_forced_logp(model, images, seqs, max_len):
    """Sum of log p of each caption's words (and <end>, where it ended) by a plain forward pass."""
    from lightning_modules.captioner import END, START

    out = []
    for i, seq in enumerate(seqs):
        target = seq + [END] if len(seq) < max_len else seq
        ids = torch.tensor([[START] + target])
        logp = F.log_softmax(model(images[i:i + 1], ids[:, :-1]), -1)[0]
        out.append(float(logp[torch.arange(len(target)), torch.tensor(target)].sum()))
    return torch.tensor(out)


@pytest.mark.parametrize("cell, end_bias, feed", [("lstm", 2.0, "first"), ("gru", 1.0, "first"), ("lstm-nfg", 2.0, "first"),
                                                  ("lstm", 0.0, "every")])
def test_beam_one_is_greedy_and_a_wider_beam_finds_no_worse_captions(cell, end_bias, feed):
    from lightning_modules.captioner import END, START, Captioner

    torch.manual_seed(0)
    V, max_len = 9, 7
    model = Captioner(V, 24, embed=16, hidden=24, cell=cell, feed=feed).eval()
    with torch.no_grad():  # sharper, image-dependent outputs; <end> likely enough that some captions end
        model.head.weight.mul_(12)
        model.head.bias[END] += end_bias
    torch.manual_seed(1)
    images = torch.randint(0, 256, (12, 3, 24, 24), dtype=torch.uint8)
    greedy, g_score = model.caption(images, beam=1, max_len=max_len)
    for i in range(len(images)):  # the plain greedy loop: the argmax of a forward pass on the prefix
        ids = [START]
        while len(ids) <= max_len:
            nxt = int(model(images[i:i + 1], torch.tensor([ids]))[0, -1].argmax())
            if nxt == END:
                break
            ids.append(nxt)
        assert greedy[i] == ids[1:]
    with torch.no_grad():
        assert torch.allclose(g_score, _teacher_forced_logp(model, images, greedy, max_len), atol=1e-4)
        wide, w_score = model.caption(images, beam=4, max_len=max_len)
        assert torch.allclose(w_score, _teacher_forced_logp(model, images, wide, max_len), atol=1e-4)
    assert (w_score >= g_score - 1e-5).all() and (w_score > g_score + 1e-3).any()
    assert {len(c) < max_len for c in greedy + wide} == {True, False}  # ended and cut-off captions both scored
    with pytest.raises(ValueError, match="beam must be at least 1"):
        model.caption(images, beam=0)
    with pytest.raises(ValueError, match="feed must be 'first'"):
        Captioner(V, 24, feed="middle")


def test_captioning_study_reads_the_image(tmp_path):
    """Tiny sizes, single shapes: the captioner must beat the blind decoder by far; reports and
    the MLflow run land."""
    from studies import captioning

    out = tmp_path / "captioning"
    p = params_for(tmp_path, **{f"studies.captioning.{k}": v for k, v in {
        "train_images": 1200, "val_images": 200, "two_objects": 0.0, "embed": 32, "hidden": 48,
        "steps": 200, "val_every": 100, "beam": 2, "examples": 4, "feeds": ["every"]}.items()})
    r = captioning.run(p, out)
    assert r["val_loss"] < 0.6 * r["blind_val_loss"], r
    assert r["exact"] > 0.3 and r["bleu4"] > r["blind_bleu4"], r
    m = pd.read_csv(out / "metrics.csv")
    assert list(m["decoding"]) == ["greedy", "beam 2", "beam 2"]
    assert list(m["model"]) == ["CNN + LSTM (image at every step)"] * 2 + ["LSTM alone (blind)"]
    assert r["heldout_images"] > 0 and 0 <= r["exact_heldout"] <= 1  # the held-out large yellow triangles
    assert m["val_loss"].iloc[0] == m["val_loss"].iloc[1] < m["val_loss"].iloc[2]  # decoding leaves the loss alone
    ex = pd.read_csv(out / "examples.csv")
    assert len(ex) == 4 and set(ex.columns) == {"references", "caption", "right", "blind"}
    c = pd.read_csv(out / "curves.csv")  # every model's curve, validation every 100 steps
    assert set(c["model"]) == set(m["model"])
    assert sorted(c.dropna(subset=["val_loss"])["step"]) == [100, 100, 200, 200]
    for f in ("metrics.md", "examples.md", "examples.png", "curves.png"):
        assert (out / f).stat().st_size > 0
    assert json.loads((out / "result.json").read_text())["vocabulary"][:3] == ["<pad>", "<start>", "<end>"]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("study-captioning")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["bleu4"] == pytest.approx(r["bleu4"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.md", "examples.png", "result.json"}


@pytest.mark.parametrize("values, msg", [
    ({"image_size": 16}, "studies.captioning.image_size: at least 24"),
    ({"cell": "lstmm"}, "studies.captioning.cell: must be one of rnn, gru"),
    ({"train_images": 10}, "studies.captioning.train_images: 10 is fewer than one batch"),
    ({"beam": 0}, "studies.captioning.beam: must be at least 1"),
    ({"feeds": ["middle"]}, "studies.captioning.feeds: a list of every and first"),
    ({"feeds": ["every", "every"]}, "studies.captioning.feeds: a list of every and first"),
    ({"holdout": "huge yellow triangle"}, "studies.captioning.holdout: 'huge yellow triangle' is not"),
])
def test_captioning_cli_refuses_bad_params_with_one_line(tmp_path, values, msg):
    out = tmp_path / "reports"
    p = run_module("studies.captioning", "--params", _params_file(tmp_path, "captioning", values), "--out", out)
    assert msg in one_line_error(p)
    assert not out.exists()
