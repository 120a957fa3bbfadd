"""Study `captioning` (slide 19): a CNN encoder feeding an LSTM decoder writes captions.

    python -m studies.captioning      # -> reports/captioning/{metrics,examples,curves}.{csv,md}, examples.png, curves.png, result.json

The images are synthetic scenes of one or two coloured shapes (studies/shapes.py), each with
every caption true of it ("a small blue square left of a large red circle" and "a large red
circle right of a small blue square"). The training set never shows one shape (`holdout`,
"large yellow triangle"); the validation set does. Models trained on the same data with
Lightning (lightning_modules/caption_module.py), one per entry of `feeds`:
- `every`: CNN(I) beside the word at every step (m-RNN, LRCN);
- `first`: CNN(I) as the input before <start> and never again (Show and Tell);
- and the blind baseline: the decoder of the first, a learned vector in place of the image.
Scored on held-out images: val_loss in nats per word, BLEU-4 against all references, the
share of captions exactly right (greedy and beam search), and that share on the validation
scenes no training image showed (the held-out shape, or a new combination).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lightning_modules.captioner import END, PAD, SPECIALS, START
from pipeline.atomic import atomic_dir
from pipeline.config import load_params, parse_sets
from pipeline.errors import UserError, cli
from studies.bleu import corpus_bleu
from studies.common import REPORTS, check_report_dir, log_study, pyplot, save_png, study_params, write_result, write_table
from studies.shapes import check_holdout, scenes

FEEDS = {"every": "CNN + LSTM (image at every step)", "first": "CNN + LSTM (image first: Show and Tell)"}
BLIND = "LSTM alone (blind)"


def labels(cell: str) -> tuple[dict, str]:
    """The table's model names with the cell the study trains (FEEDS and BLIND name the LSTM)."""
    name = cell.upper()
    return {f: v.replace("LSTM", name) for f, v in FEEDS.items()}, BLIND.replace("LSTM", name)


@dataclass(frozen=True)
class CaptioningParams:
    train_images: int = 8000
    val_images: int = 1000
    image_size: int = 32
    two_objects: float = 0.7
    noise: float = 0.08
    holdout: str | None = "large yellow triangle"
    cell: str = "lstm"
    feeds: list[str] = field(default_factory=lambda: ["every", "first"])
    embed: int = 64
    hidden: int = 128
    layers: int = 1
    batch_size: int = 64
    lr: float = 3.0e-3
    steps: int = 1500
    val_every: int = 250
    beam: int = 3
    examples: int = 8
    seed: int = 0
    accelerator: str = "cpu"


def check(hp: CaptioningParams) -> None:
    """What params.yaml's validation (pipeline/config.py: cell, accelerator, types) leaves to the study."""
    for key in ("steps", "val_every", "beam", "embed", "hidden", "layers", "batch_size", "val_images", "examples"):
        if getattr(hp, key) < 1:
            raise UserError(f"studies.captioning.{key}: must be at least 1, got {getattr(hp, key)}")
    if hp.train_images < hp.batch_size:
        raise UserError(f"studies.captioning.train_images: {hp.train_images} is fewer than one batch "
                        f"(batch_size {hp.batch_size}); raise it or lower the batch size")
    feeds = hp.feeds if isinstance(hp.feeds, list) else [None]
    if any(f not in FEEDS for f in feeds) or not feeds or len(set(feeds)) < len(feeds):
        raise UserError(f"studies.captioning.feeds: a list of {' and '.join(FEEDS)} (first: the image as the input before "
                        f"<start>, every: beside every word), got {hp.feeds!r}")
    check_holdout(hp.holdout)
    if hp.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"studies.captioning.accelerator is {hp.accelerator} but no CUDA device is visible; "
                        "--set studies.captioning.accelerator=cpu (or auto)")


class Words:
    """The caption vocabulary: <pad> <start> <end>, then the words of the training captions."""

    def __init__(self, captions: list[str]):
        self.itos = list(SPECIALS) + sorted({w for c in captions for w in c.split()})
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def encode(self, refs: list[list[str]], length: int) -> np.ndarray:
        """(n, R, length) ids: <start> words <end> <pad>...; R = the most references of any image."""
        R = max(len(r) for r in refs)
        out = np.full((len(refs), R, length), PAD, np.int64)
        for i, rs in enumerate(refs):
            for j in range(R):
                words = rs[j if j < len(rs) else 0].split()
                ids = [START] + [self.stoi[w] for w in words] + [END]
                if len(ids) > length:
                    raise ValueError(f"caption of {len(words)} words is longer than {length - 2}")
                out[i, j, : len(ids)] = ids
        return out

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.itos[i] for i in ids)


def train_one(hp: CaptioningParams, words: Words, train, val, use_image: bool, feed: str):
    import lightning as L

    from lightning_modules.caption_module import CaptionModule, loader
    from lightning_modules.quiet import quiet_lightning

    quiet_lightning()
    L.seed_everything(hp.seed, verbose=False)
    module = CaptionModule(len(words.itos), hp.image_size, hp.embed, hp.hidden, hp.layers, hp.cell,
                           use_image=use_image, feed=feed, lr=hp.lr, max_steps=hp.steps)
    from pipeline.callbacks import interrupts_as_raised

    with tempfile.TemporaryDirectory() as tmp, interrupts_as_raised() as keep:  # Ctrl-C: one line, exit 130
        trainer = L.Trainer(max_steps=hp.steps, accelerator=hp.accelerator, devices=1, precision="32-true",
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp,
                            val_check_interval=min(hp.val_every, hp.steps), check_val_every_n_epoch=None, callbacks=[keep])
        t0 = time.perf_counter()
        trainer.fit(module, loader(*train, hp.batch_size, True, hp.seed), loader(*val, 250, False))
        seconds = time.perf_counter() - t0
    return module.model.cpu().eval(), module.history, seconds


@torch.no_grad()
def evaluate(model, images: np.ndarray, ref_ids: np.ndarray, refs: list[list[str]], words: Words, beam: int,
             unseen: np.ndarray) -> tuple[dict, list[str]]:
    imgs, ids = torch.as_tensor(images), torch.as_tensor(ref_ids)
    total, hyps = 0.0, []
    for s in range(0, len(imgs), 250):
        im, r = imgs[s:s + 250], ids[s:s + 250]
        B, R, N = r.shape
        total += float(model.loss(im.repeat_interleave(R, 0), r.reshape(B * R, N))) * B
        hyps += [words.decode(c) for c in model.caption(im, beam=beam, max_len=N)[0]]
    right = np.array([h in rs for h, rs in zip(hyps, refs)])
    loss = total / len(imgs)
    return {"val_loss": loss, "perplexity": float(np.exp(loss)), "bleu4": corpus_bleu(hyps, refs),
            "exact": float(right.mean()), "exact_heldout": float(right[unseen].mean()) if unseen.any() else None,
            "heldout_images": int(unseen.sum())}, hyps


def _curves(histories: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, (name, hist) in enumerate(histories.items()):
        colour = f"C{i}"
        h = pd.DataFrame(hist)
        tr = h.dropna(subset=["train_loss"]) if "train_loss" in h else h.iloc[:0]
        va = h.dropna(subset=["val_loss"]) if "val_loss" in h else h.iloc[:0]
        ax.plot(tr["step"], tr["train_loss"], color=colour, alpha=0.4, label=f"{name}: train")
        ax.plot(va["step"], va["val_loss"], "o-", color=colour, label=f"{name}: validation")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats per word)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _examples_png(images: np.ndarray, refs, hyps, blind, path: Path) -> Path:
    plt = pyplot()
    n = len(images)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, rs, h, b in zip(axes.flat, images, refs, hyps, blind):
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
        mark = "right" if h in rs else "WRONG"
        ax.set_title(f"{_wrap(h)}\n({mark}; blind: {_wrap(b)})", fontsize=7)
    return save_png(fig, path)


def _wrap(text: str, width: int = 34) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])


def run(params, out_dir: Path = REPORTS / "captioning") -> dict:
    hp = study_params(params, "captioning", CaptioningParams)
    check_report_dir(out_dir)  # before any work
    check(hp)
    t0 = time.perf_counter()
    tr = scenes(hp.train_images, hp.image_size, hp.two_objects, hp.noise, seed=hp.seed, exclude=hp.holdout)
    va = scenes(hp.val_images, hp.image_size, hp.two_objects, hp.noise, seed=hp.seed + 1_000_003)
    words = Words([c for rs in tr.refs for c in rs])
    missing = sorted({w for rs in va.refs for c in rs for w in c.split()} - set(words.stoi))
    if missing:
        raise UserError(f"studies.captioning.train_images: {hp.train_images} images never show the words {missing}; raise it")
    length = 2 + max(len(c.split()) for rs in tr.refs + va.refs for c in rs)
    train = (tr.images, words.encode(tr.refs, length))
    val = (va.images, words.encode(va.refs, length))
    # held out: validation scenes no training image showed (the held-out shape, or a new combination)
    seen = {frozenset(rs) for rs in tr.refs}
    unseen = np.array([frozenset(rs) not in seen for rs in va.refs])

    rows, hyps, histories, seconds = [], {}, {}, {}
    feeds, blind_name = labels(hp.cell)
    runs = [(feeds[f], True, f) for f in hp.feeds] + [(blind_name, False, hp.feeds[0])]
    for name, use_image, feed in runs:
        model, histories[name], seconds[name] = train_one(hp, words, train, val, use_image, feed)
        for beam in ((1, hp.beam) if use_image and hp.beam > 1 else (hp.beam,)):
            m, hyps[(name, beam)] = evaluate(model, *val, va.refs, words, beam, unseen)
            rows.append({"model": name, "decoding": "greedy" if beam == 1 else f"beam {beam}", **m, "train_s": seconds[name]})
    table = pd.DataFrame(rows)
    main = feeds[hp.feeds[0]]
    k = min(hp.examples, hp.val_images)
    best, blind = hyps[(main, hp.beam)], hyps[(blind_name, hp.beam)]
    ex = pd.DataFrame({"references": [" / ".join(r) for r in va.refs[:k]], "caption": best[:k],
                       "right": [h in r for h, r in zip(best[:k], va.refs[:k])], "blind": blind[:k]})
    last = table.groupby("model", sort=False).last()   # each model at the widest beam
    by_feed = {f: {c: None if pd.isna(last.loc[feeds[f], c]) else float(last.loc[feeds[f], c])
                   for c in ("val_loss", "bleu4", "exact", "exact_heldout")} for f in hp.feeds}
    result = {"params": asdict(hp), "vocabulary": words.itos, "max_caption_words": length - 2, "model": main,
              **by_feed[hp.feeds[0]], "blind_val_loss": float(last.loc[blind_name, "val_loss"]),
              "blind_bleu4": float(last.loc[blind_name, "bleu4"]), "heldout_images": int(unseen.sum()),
              "by_feed": by_feed, "train_s": seconds, "seconds": time.perf_counter() - t0}
    # the report is made in a folder beside out_dir that replaces it whole at the end: a run that
    # fails half-way leaves the last complete report, not some of its files
    with atomic_dir(out_dir) as out:
        write_table(table, out, "metrics")
        write_table(ex, out, "examples")
        _examples_png(va.images[:k], va.refs[:k], best[:k], blind[:k], out / "examples.png")
        _curves(histories, out / "curves.png")
        write_table(pd.DataFrame([{"model": name, **row} for name, hist in histories.items() for row in hist]), out, "curves")
        write_result(out, result)
    metrics = {k2: v for k2, v in result.items() if isinstance(v, float)}
    metrics.update({f"{f}_{k2}": v for f, d in by_feed.items() for k2, v in d.items() if v is not None})
    log_study(params, "captioning", f"{hp.cell}-{hp.hidden}", hp, metrics,
              [out_dir / f for f in ("metrics.csv", "metrics.md", "examples.md", "examples.csv", "curves.csv", "examples.png",
                                     "curves.png", "result.json")])
    return result


def _share(x: float | None) -> str:
    return "(none)" if x is None else f"{x:.1%}"


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a param (repeatable), e.g. studies.captioning.steps=300")
    ap.add_argument("--out", default=str(REPORTS / "captioning"), help="report folder (default reports/captioning)")
    a = ap.parse_args(argv)
    r = run(load_params(a.params, parse_sets(a.set)), Path(a.out))
    print(f"captioning: val_loss {r['val_loss']:.4f} nats/word (blind {r['blind_val_loss']:.4f}), BLEU-4 {r['bleu4']:.3f} "
          f"(blind {r['blind_bleu4']:.3f}), exactly right {r['exact']:.1%}, on the {r['heldout_images']} validation scenes "
          f"no training image showed {_share(r['exact_heldout'])} ({r['model']}) -> {a.out}")


if __name__ == "__main__":
    main()
