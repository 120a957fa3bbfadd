"""Study `generators` (slides 15-18): character- and word-level text generators on the lecture's corpora.

    python -m studies.generators      # -> reports/generators/{models,samples}.{csv,md}, <corpus>-<level>.txt, curves.png, result.json

The lecture's generators (char-rnn) read one token at a time as a one-of-k vector and give
the distribution of the next one, then sample from it and feed the sample back in:

    h_t = LSTM(W_xh onehot(x_t), h_{t-1}),   p(x_{t+1} | x_<=t) = softmax(W_hy h_t + b_y),
    x_{t+1} ~ p^(1/T) / sum p^(1/T)          (temperature T)

Here the same model (`hidden`, `layers`, `cell`) trains for the same number of seconds
(`seconds`, a time budget: lightning_modules/budget.py) on each of `corpora` at char level
(Shakespeare's plays, the Stacks project's LaTeX, Linux's C), and on each of `word_corpora`
at word level too (words, single punctuation marks and whitespace runs as tokens,
pipeline/tokenize.py, every word kept). A word model's loss per token and a char model's
loss per character are not on one scale, so both are scored in bits per character of the
same kind of validation text:

    bpc = sum_t -ln p(x_t | x_<t) / (n_chars ln 2)

summed over the tokens scored and divided by the characters those tokens spell. Each model
is scored on the first `val_chars` characters of its corpus's validation split (the last
10%), and writes a sample of `sample_chars` characters after its corpus's prime (`primes`).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lightning_modules.vocab import Vocab
from pipeline.atomic import atomic_dir, write_text
from pipeline.config import TokenizeParams, load_params, parse_sets
from pipeline.errors import UserError, cli
from studies.common import REPORTS, check_report_dir, log_study, pyplot, save_png, study_params, write_result, write_table

EVAL_BATCH = 16  # validation streams (lightning_modules/train.py fit's eval_batch, passed explicitly)


@dataclass(frozen=True)
class GeneratorsParams:
    corpora: tuple[str, ...] = ("tinyshakespeare", "stacks", "linux")
    word_corpora: tuple[str, ...] = ("tinyshakespeare",)
    primes: dict = field(default_factory=lambda: {"tinyshakespeare": "ROMEO:", "stacks": "\\begin{lemma}", "linux": "static int"})
    cell: str = "lstm"
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3.0e-3
    warmup_steps: int = 50
    decay_frac: float = 0.2
    seconds: float = 180.0
    val_every: int = 250
    word_val_every: int = 40  # word-level steps are about 7x slower: validate as often in seconds
    val_chars: int = 200_000
    word_max_vocab: int = 50_000
    sample_chars: int = 1500
    temperature: float = 0.8
    precision: str = "auto"
    accelerator: str = "cpu"
    seed: int = 1337


def check(hp: GeneratorsParams) -> None:
    """What params.yaml's validation (cell, precision, accelerator, types, positives) leaves to the study."""
    if not hp.corpora and not hp.word_corpora:
        raise UserError("studies.generators: corpora and word_corpora are both empty; list at least one corpus")
    for key in ("corpora", "word_corpora"):
        twice = sorted({c for c in getattr(hp, key) if getattr(hp, key).count(c) > 1})
        if twice:
            raise UserError(f"studies.generators.{key}: {twice[0]} is listed twice; list each corpus once")
    if not isinstance(hp.primes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hp.primes.items()):
        raise UserError(f"studies.generators.primes: a mapping of corpus name to prime text, got {hp.primes!r}")
    for key in ("seconds", "word_val_every", "val_chars", "sample_chars", "word_max_vocab", "temperature"):
        if not getattr(hp, key) > 0:
            raise UserError(f"studies.generators.{key}: must be > 0, got {getattr(hp, key)}")
    if hp.accelerator in ("gpu", "cuda") and not torch.cuda.is_available() or hp.accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"studies.generators.accelerator is {hp.accelerator} but no such device is visible here; "
                        "--set studies.generators.accelerator=cpu (or auto)")
    if not 0 <= hp.dropout < 1 or not 0 < hp.decay_frac <= 1:
        raise UserError(f"studies.generators: dropout must be in [0, 1) and decay_frac in (0, 1], got {hp.dropout} and {hp.decay_frac}")


def token_chars(vocab: dict) -> np.ndarray:
    """Characters each token id spells (1 for a char; the word's length for a word)."""
    if vocab["level"] == "char":
        return np.ones(len(vocab["tokens"]), np.int64)
    if vocab["level"] == "word":
        return np.array([len(t) for t in vocab["tokens"]], np.int64)
    raise UserError(f"level {vocab['level']!r}: the study compares char and word levels only")


def word_data(raw: Path, params, hp: GeneratorsParams, dst: Path) -> Path:
    """The corpus tokenized at word level and split as the onehot stage splits it, in dst."""
    from pipeline.onehot import split_stream
    from pipeline.tokenize import tokenize_file

    tp = TokenizeParams(level="word", errors=params.tokenize.errors, max_vocab=hp.word_max_vocab, min_count=1)
    tok = dst / "tokens"
    tok.mkdir(parents=True)
    v = tokenize_file(raw, tp, tok)
    if v["counts"][0]:
        raise UserError(f"{raw}: more distinct words than studies.generators.word_max_vocab={hp.word_max_vocab:,} ({v['counts'][0]:,} "
                        "tokens would be <unk>, which spells no characters, so bits/char would mean nothing); raise it")
    out = dst / "onehot"
    out.mkdir()
    lengths = split_stream(tok / "tokens.npy", out, params.onehot)
    shutil.copyfile(tok / "vocab.json", out / "vocab.json")
    (out / "meta.json").write_text(json.dumps({"kind": "text", "level": "word", "vocab_size": v["size"], "dtype": v["dtype"], "splits": lengths}))
    shutil.rmtree(tok)
    return out


def capped(src: Path, dst: Path, val_chars: int, label: str = "") -> tuple[Path, dict]:
    """A copy of the data folder whose val split is the longest prefix spelling <= val_chars characters."""
    meta = json.loads((src / "meta.json").read_text())
    vocab = json.loads((src / "vocab.json").read_text(encoding="utf-8"))
    lens = token_chars(vocab)
    val = np.load(src / "val.npy")
    if len(val) < 2:
        raise UserError(f"{src}: the validation split has {len(val)} tokens; a study needs a validation split (onehot.val_frac > 0)")
    n = int(np.searchsorted(np.cumsum(lens[val.astype(np.int64)]), val_chars, side="right"))
    if n < EVAL_BATCH + 1:
        raise UserError(f"studies.generators.val_chars={val_chars:,} leaves {n} validation tokens{label}, fewer than the "
                        f"{EVAL_BATCH + 1} its {EVAL_BATCH} validation streams need; raise val_chars")
    dst.mkdir(parents=True)
    (dst / "train.npy").symlink_to((src / "train.npy").resolve())
    np.save(dst / "val.npy", val[:n])
    shutil.copyfile(src / "vocab.json", dst / "vocab.json")
    (dst / "meta.json").write_text(json.dumps({**meta, "splits": {"train": meta["splits"]["train"], "val": n, "test": 0}}))
    train = np.load(src / "train.npy", mmap_mode="r")
    step = max(1, len(train) // 1_000_000)  # chars per token of the training text, from up to 1M tokens
    return dst, {"vocab": len(vocab["tokens"]), "lens": lens, "train_chars_per_token": float(lens[np.asarray(train[::step], np.int64)].mean())}


def scored_chars(data_dir: Path, lens: np.ndarray, eval_batch: int) -> int:
    """Characters spelled by the tokens validation scores: data[1 : B L + 1] (lightning_modules/data.py Streams)."""
    val = np.load(data_dir / "val.npy").astype(np.int64)
    per = (len(val) - 1) // eval_batch
    return int(lens[val[1 : eval_batch * per + 1]].sum())


def sample(ckpt: Path, prime: str, chars: int, chars_per_token: float, hp: GeneratorsParams) -> str:
    """`chars` characters after `prime` (a word model draws enough tokens, then the text is cut)."""
    from lightning_modules.checkpoint import load_checkpoint
    from lightning_modules.sampling import generate

    model, vocab, _ = load_checkpoint(ckpt)
    tokens = chars if vocab.level == "char" else int(chars / chars_per_token * 1.5) + 16
    try:
        text = generate(model, vocab, prime, tokens, temperature=hp.temperature, seed=hp.seed)[0]
    except ValueError as e:
        raise UserError(f"studies.generators.primes: {e}") from None
    return text[: len(prime) + chars]


def train_one(corpus: str, level: str, data: Path, info: dict, hp: GeneratorsParams, work: Path) -> dict:
    """Train on `data` (made by `capped`, with its `info`) for hp.seconds; score; the report's row."""
    from lightning_modules.train import fit
    from pipeline.callbacks import interrupts_as_raised
    from pipeline.curves import CurveRecorder

    cfg = dict(cell=hp.cell, hidden=hp.hidden, layers=hp.layers, dropout=hp.dropout, batch_size=hp.batch_size, seq_len=hp.seq_len,
               lr=hp.lr, warmup_steps=hp.warmup_steps, decay_frac=hp.decay_frac, max_steps=100_000, max_seconds=hp.seconds,
               val_every=hp.val_every if level == "char" else hp.word_val_every, eval_batch=EVAL_BATCH, precision=hp.precision,
               accelerator=hp.accelerator, seed=hp.seed, progress_every=0)
    curves = CurveRecorder(work / "curves", log_every=10)
    with interrupts_as_raised() as keep:  # Ctrl-C: the study's one line and exit 130, not Lightning's exit 1
        res = fit(cfg, data, work / "model", callbacks=[curves, keep])
    chars = scored_chars(data, info["lens"], EVAL_BATCH)
    n_tokens = EVAL_BATCH * ((json.loads((data / "meta.json").read_text())["splits"]["val"] - 1) // EVAL_BATCH)
    to_bpc = n_tokens / chars / math.log(2)  # nats per token -> bits per character
    params = sum(p.numel() for p in res["module"].model.parameters())
    return {
        "corpus": corpus, "level": level, "vocab": info["vocab"], "parameters": params, "precision": res["precision"],
        "steps": res["steps"], "train_s": round(curves.train_seconds(), 1), "wall_s": round(res["train_seconds"], 1),
        "train_chars": int(res["steps"] * hp.batch_size * hp.seq_len * info["train_chars_per_token"]),
        "val_chars": chars, "val_nats_per_token": round(res["best_val_loss"], 4), "val_bpc": round(res["best_val_loss"] * to_bpc, 4),
        "chars_per_token": round(info["train_chars_per_token"], 3),
        "_curve": [(t, loss * to_bpc) for _, loss, _, _, t in curves.val],
        "_ckpt": Path(res["best_ckpt"]),
    }


def run(params, out_dir: Path = REPORTS / "generators", data_root: Path = Path("data/onehot"), raw_root: Path = Path("data/raw")) -> dict:
    hp = study_params(params, "generators", GeneratorsParams)
    check_report_dir(out_dir)  # before any work
    check(hp)
    plan = [(c, "char") for c in hp.corpora] + [(c, "word") for c in hp.word_corpora]
    for corpus, level in plan:  # every input is there before the first model trains
        need = data_root / corpus / "meta.json" if level == "char" else raw_root / corpus / "corpus.txt"
        if not need.is_file():
            stage = f"onehot@{corpus}" if level == "char" else f"download@{corpus}"
            raise UserError(f"{need}: not found; run `dvc repro {stage}` first (a text corpus of params.yaml `corpora`)")
        meta = json.loads(need.read_text()) if level == "char" else {}
        if level == "char" and meta.get("kind", "text") != "text":
            raise UserError(f"studies.generators.corpora: {corpus} is not a text corpus ({need}); list text corpora only")
        if level == "char" and meta.get("level", "char") != "char":
            raise UserError(f"{need}: tokenized at {meta['level']} level, but studies.generators.corpora trains char-level models "
                            f"(the study makes its own word-level data: list {corpus} in word_corpora); set tokenize.level: char "
                            f"and run `dvc repro onehot@{corpus}`")
        if level == "char" and hp.primes.get(corpus):  # a prime the model cannot read fails now, not after training
            try:
                Vocab.load(data_root / corpus / "vocab.json").encode(hp.primes[corpus])
            except ValueError as e:
                raise UserError(f"studies.generators.primes.{corpus}: {e}") from None
    t0 = time.perf_counter()
    rows, samples = [], {}
    # the report is made in a folder beside out_dir that replaces it whole at the end: a run
    # stopped half-way leaves the last complete report, not some of its files
    with tempfile.TemporaryDirectory(prefix="generators-") as tmp, atomic_dir(out_dir) as out:
        # the word-level data too is made before any model trains: a corpus with too many words fails now
        # and so is each model's capped validation split: too few validation characters fail now
        ready = {}
        for c, lvl in plan:
            src = data_root / c if lvl == "char" else word_data(raw_root / c / "corpus.txt", params, hp, Path(tmp) / f"{c}-word-tokens")
            ready[(c, lvl)] = capped(src, Path(tmp) / f"{c}-{lvl}-data", hp.val_chars, f" of {c} at {lvl} level")
        for corpus, level in plan:
            row = train_one(corpus, level, *ready[(corpus, level)], hp, Path(tmp) / f"{corpus}-{level}")
            prime = hp.primes.get(corpus, "")
            text = sample(row.pop("_ckpt"), prime, hp.sample_chars, row["chars_per_token"], hp)
            samples[(corpus, level)] = text
            path = out / f"{corpus}-{level}.txt"
            write_text(path, text if text.endswith("\n") else text + "\n")
            rows.append(row)
            print(f"{corpus:16s} {level:4s} vocab {row['vocab']:6,d}  {row['steps']:5d} steps in {row['train_s']:6.1f} s  "
                  f"val {row['val_bpc']:.4f} bits/char ({row['val_nats_per_token']:.4f} nats/token)", flush=True)
            log_study(params, "generators", f"{corpus}-{level}", {**asdict(hp), "corpus": corpus, "level": level},
                      {k: v for k, v in row.items() if not k.startswith("_")}, [path])
        table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
        write_table(table, out, "models")
        md = "".join(f"## {c}, {lvl} level (val {r['val_bpc']:.3f} bits/char)\n\n```text\n{samples[(c, lvl)]}\n```\n\n"
                     for (c, lvl), r in zip(samples, rows))
        write_text(out / "samples.md", md)
        _curves(rows, hp, out / "curves.png")
        result = {"params": asdict(hp), "models": table.to_dict("records"), "seconds": round(time.perf_counter() - t0, 1)}
        write_result(out, result)
    files = ["models.md", "models.csv", "samples.md", "curves.png", "result.json"] + [f"{c}-{lvl}.txt" for c, lvl in plan]
    log_study(params, "generators", "report", hp, {}, [out_dir / f for f in files])
    return result


def _curves(rows: list[dict], hp: GeneratorsParams, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        if r["_curve"]:
            t, b = zip(*r["_curve"])
            ax.plot(t, b, "o-" if r["level"] == "char" else "s--", label=f"{r['corpus']}, {r['level']} level")
    ax.set_xlabel("training seconds (validation left out)")
    ax.set_ylabel("validation bits per character")
    ax.set_title(f"{hp.layers}x{hp.hidden} {hp.cell.upper()}, {hp.seconds:g} s of training each")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a param (repeatable), e.g. studies.generators.seconds=60")
    ap.add_argument("--out", default=str(REPORTS / "generators"), help="report folder (default reports/generators)")
    a = ap.parse_args(argv)
    r = run(load_params(a.params, parse_sets(a.set)), Path(a.out))
    for m in r["models"]:
        print(f"{m['corpus']}, {m['level']} level: {m['val_bpc']:.4f} bits/char after {m['steps']} steps ({m['train_s']} s)")
    print(f"samples and tables -> {a.out}")


if __name__ == "__main__":
    main()
