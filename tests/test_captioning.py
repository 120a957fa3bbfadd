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
from tests.conftest import one_line_error, run_module
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


def test_scenes_draw_every_shape_and_size_pair_alike_and_can_leave_one_shape_out():
    s = scenes(3000, two_objects=1.0, seed=5, exclude="large yellow triangle")
    phrases = [f"{o['size']} {o['colour']} {o['shape']}" for objs in s.objects for o in objs]
    assert "large yellow triangle" not in phrases and len(set(phrases)) == 23
    sizes = pd.Series(["+".join(sorted(o["size"] for o in objs)) for objs in s.objects]).value_counts(normalize=True)
    # placement is retried, not the shapes: two large ones (hardest to place) keep their 1/4
    assert sizes["large+large"] == pytest.approx(0.25, abs=0.03) and sizes["large+small"] == pytest.approx(0.5, abs=0.03)
    assert "large yellow triangle" in {f"{o['size']} {o['colour']} {o['shape']}" for objs in scenes(300, seed=6).objects for o in objs}


@pytest.mark.parametrize("kw, msg", [({"n": 0}, "at least 1"), ({"size": 16}, "image_size"), ({"size": 4000}, "image_size"),
                                     ({"exclude": "huge red circle"}, "holdout"),
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
    # 4 words against references of 3 and 5: the shorter is the closest on a tie, so no penalty
    assert corpus_bleu(["a b c d"], [["a b c", "a b c d e"]], n=1) == pytest.approx(1.0)
    # lengths add up over the corpus: c = 2 + 2, r = 3 + 3
    assert corpus_bleu(["a b", "c d"], [["a b x"], ["c d y"]], n=1) == pytest.approx(math.exp(1 - 6 / 4))
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


@pytest.mark.parametrize("cell, end_bias, feed", [("lstm", 0.0, "first"), ("gru", 1.0, "first"), ("lstm-nfg", 2.0, "first"),
                                                  ("lstm", 0.0, "every")])
def test_beam_one_is_greedy_and_a_wider_beam_finds_no_worse_captions(cell, end_bias, feed):
    from lightning_modules.captioner import END, PAD, START, Captioner

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
            logits = model(images[i:i + 1], torch.tensor([ids]))[0, -1]
            logits[[PAD, START]] = float("-inf")  # never generated
            nxt = int(logits.argmax())
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


def test_beam_search_keeps_a_finished_caption_that_live_ones_outscore_for_a_while():
    """A word-bigram 'decoder' (the hidden state is the one-hot of the last word): caption [A]
    (p 0.5 * 0.4 = 0.2) finishes at the second step while two live captions score 0.25; both end
    lower later (0.1, 0.025) or are cut off at max_len. The search must return [A]."""
    from torch import nn

    from lightning_modules.captioner import END, START, Captioner

    V, A, Bw, C = 6, 3, 4, 5
    P = torch.full((V, V), 1e-9)
    P[START, A] = P[START, Bw] = 0.5
    P[A, END], P[A, Bw], P[A, C] = 0.4, 0.3, 0.3
    P[Bw, C] = P[Bw, A] = 0.5
    P[C, END], P[C, A], P[C, Bw] = 0.1, 0.45, 0.45

    class Bigram(nn.Module):
        def init_state(self, b, device=None, dtype=None):
            return (torch.zeros(1, b, 1),)

        def forward(self, x, state=None):
            return x, state if state is not None else self.init_state(x.shape[0])

    m = Captioner(V, 24, embed=V, hidden=V, use_image=False).eval()
    m.rnn, m.embed = Bigram(), nn.Embedding.from_pretrained(torch.eye(V))
    m.blind = nn.Parameter(torch.zeros(V))
    with torch.no_grad():
        m.head.weight.copy_(torch.log(P / P.sum(1, keepdim=True)).T)
        m.head.bias.zero_()
    img = torch.zeros(1, 3, 24, 24, dtype=torch.uint8)
    for k in (2, 3, 5):
        caption, score = m.caption(img, beam=k, max_len=6)
        assert caption == [[A]] and math.exp(float(score)) == pytest.approx(0.2, rel=1e-4), (k, caption)


def test_captioning_study_reads_the_image(tmp_path):
    """Tiny sizes, single shapes: the captioner must beat the blind decoder by far; reports and
    the MLflow run land."""
    from studies import captioning

    out = tmp_path / "captioning"
    p = params_for(tmp_path, **{f"studies.captioning.{k}": v for k, v in {
        "train_images": 1200, "val_images": 200, "two_objects": 0.0, "embed": 32, "hidden": 48,
        "steps": 200, "val_every": 100, "beam": 2, "examples": 4, "feeds": ["every", "first"]}.items()})
    r = captioning.run(p, out)
    assert r["val_loss"] < 0.6 * r["blind_val_loss"], r
    assert r["exact"] > 0.3 and r["bleu4"] > r["blind_bleu4"], r
    m = pd.read_csv(out / "metrics.csv")
    assert list(m["decoding"]) == ["greedy", "beam 2"] * 2 + ["beam 2"]
    assert list(m["model"]) == [captioning.FEEDS["every"]] * 2 + [captioning.FEEDS["first"]] * 2 + [captioning.BLIND]
    # the validation scenes no training image showed: here (single shapes) the held-out large yellow triangle
    assert r["heldout_images"] > 0 and 0 <= r["exact_heldout"] <= 1
    loss = m["val_loss"].to_numpy()
    assert loss[0] == loss[1] and loss[2] == loss[3]  # decoding leaves the loss alone
    assert loss[0] < loss[4] and loss[2] < loss[4], loss  # both ways of feeding the image beat the blind decoder
    assert set(r["by_feed"]) == {"every", "first"} and r["val_loss"] == r["by_feed"]["every"]["val_loss"]
    ex = pd.read_csv(out / "examples.csv")
    assert len(ex) == 4 and set(ex.columns) == {"references", "caption", "right", "blind"}
    c = pd.read_csv(out / "curves.csv")  # every model's curve, validation every 100 steps
    assert set(c["model"]) == set(m["model"])
    assert sorted(c.dropna(subset=["val_loss"])["step"]) == [100, 100, 100, 200, 200, 200]
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
    ({"image_size": 16}, "studies.captioning.image_size: 24 to 128 pixels"),
    ({"cell": "lstmm"}, "studies.captioning.cell: must be one of rnn, gru"),
    ({"train_images": 10}, "studies.captioning.train_images: 10 is fewer than one batch"),
    ({"beam": 0}, "studies.captioning.beam: must be at least 1"),
    ({"feeds": ["middle"]}, "studies.captioning.feeds: a list of every and first"),
    ({"feeds": ["every", "every"]}, "studies.captioning.feeds: a list of every and first"),
    ({"holdout": "huge yellow triangle"}, "studies.captioning.holdout: 'huge yellow triangle' is not"),
    ({"examples": 0}, "studies.captioning.examples: must be at least 1"),
    ({"feeds": 3}, "studies.captioning.feeds: a list of every and first"),
    ({"image_size": 4000}, "studies.captioning.image_size: 24 to 128 pixels"),
])
def test_captioning_cli_refuses_bad_params_with_one_line(tmp_path, values, msg):
    out = tmp_path / "reports"
    p = run_module("studies.captioning", "--params", _params_file(tmp_path, "captioning", values), "--out", out)
    assert msg in one_line_error(p)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_captioning_on_a_gpu_without_one_is_a_one_line_error(tmp_path):
    out = tmp_path / "reports"
    p = run_module("studies.captioning", "--params", _params_file(tmp_path, "captioning", {"accelerator": "gpu"}), "--out", out)
    assert "studies.captioning.accelerator is gpu but no CUDA device is visible" in one_line_error(p)
    assert not out.exists()
