"""Tiny corpora for model tests, made by the real data-stage functions."""
from __future__ import annotations

import json
import random
from pathlib import Path

from pipeline.config import OnehotParams, TokenizeParams
from pipeline.onehot import split_stream
from pipeline.tokenize import tokenize_file


def toy_text(n_chars: int = 60_000, seed: int = 0) -> str:
    """Play-like text with learnable structure: speaker lines and a small word list."""
    rnd = random.Random(seed)
    names = ["ROMEO", "JULIET", "NURSE", "FRIAR"]
    words = "the and to of my love thou art night day sweet fair death hath come go".split()
    out, n = [], 0
    while n < n_chars:
        line = f"{rnd.choice(names)}:\n" + " ".join(rnd.choice(words) for _ in range(rnd.randint(4, 9))) + ".\n\n"
        out.append(line)
        n += len(line)
    return "".join(out)[:n_chars]


def make_corpus(dir: Path, text: str | None = None, train_frac: float = 0.9, val_frac: float = 0.1) -> Path:
    """dir/{train,val,test}.npy + meta.json + vocab.json, as the onehot stage writes them."""
    dir.mkdir(parents=True, exist_ok=True)
    src = dir / "corpus.txt"
    src.write_text(text if text is not None else toy_text(), encoding="utf-8")
    tok = dir / "tok"
    tok.mkdir(exist_ok=True)
    v = tokenize_file(src, TokenizeParams(), tok)
    lengths = split_stream(tok / "tokens.npy", dir, OnehotParams(train_frac=train_frac, val_frac=val_frac, min_train_tokens=1))
    (dir / "vocab.json").write_text((tok / "vocab.json").read_text(encoding="utf-8"), encoding="utf-8")
    meta = {"kind": "text", "vocab_size": v["size"], "dtype": v["dtype"], "splits": lengths, "corpus_sha256": v["corpus_sha256"], "level": "char"}
    (dir / "meta.json").write_text(json.dumps(meta))
    return dir
