"""Snippets of the lecture's corpora for sequence classification: which corpus is this from?

Each corpus's char-level data (data/onehot/<corpus>, as the onehot stage writes it) has its
own alphabet; the classifier reads one shared alphabet, the union of theirs, so each
corpus's ids are mapped through a lookup table (only the windows drawn, never a whole split).

The baseline is a bag of characters, naive Bayes with add-one smoothing:

    log P(corpus | c_1..c_t) = log P(corpus) + sum_i log P(c_i | corpus) + const

It ignores order, so what the recurrent classifier gains beyond it is order and context.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_modules.vocab import Vocab
from pipeline.errors import UserError


@dataclass
class Corpora:
    names: list[str]
    alphabet: list[str]  # shared: id -> character
    splits: dict  # (corpus, split) -> the stored ids (memory-mapped)
    luts: dict  # corpus -> its id -> shared id

    def windows(self, k: int, split: str, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """n windows of `length` shared ids from corpus k's split, at random offsets."""
        ids = self.splits[(self.names[k], split)]
        starts = rng.integers(0, len(ids) - length + 1, n)
        return self.luts[self.names[k]][np.stack([ids[s: s + length] for s in starts])]

    def unigram_logp(self) -> np.ndarray:
        """(corpora, alphabet) log P(c | corpus) from each training split, add-one smoothed."""
        counts = np.ones((len(self.names), len(self.alphabet)))
        for k, name in enumerate(self.names):
            local = np.bincount(np.asarray(self.splits[(name, "train")]), minlength=len(self.luts[name]))
            np.add.at(counts[k], self.luts[name], local)
        return np.log(counts / counts.sum(1, keepdims=True))


def load(data_root: Path, names: list[str], length: int) -> Corpora:
    """Every corpus's train and val ids and its map into the shared alphabet; one-line errors."""
    vocabs = {}
    for name in names:
        meta_path = data_root / name / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{meta_path}: not found; run `dvc repro onehot@{name}` first (a text corpus of params.yaml `corpora`)")
        meta = json.loads(meta_path.read_text())
        if meta.get("kind", "text") != "text" or meta.get("level", "char") != "char":
            raise UserError(f"{meta_path}: {name} is not char-level text; list char-level text corpora in studies.tasks.classify_corpora")
        vocabs[name] = Vocab.load(data_root / name / "vocab.json")
    alphabet = sorted({t for v in vocabs.values() for t in v.tokens if isinstance(t, str) and t != "<unk>"})
    index = {c: i for i, c in enumerate(alphabet)}
    luts = {n: np.array([index.get(t, 0) for t in v.tokens], np.int64) for n, v in vocabs.items()}
    splits = {}
    for name in names:
        for split in ("train", "val"):
            ids = np.load(data_root / name / f"{split}.npy", mmap_mode="r")
            if len(ids) < length:
                raise UserError(f"{data_root / name / split}.npy: {len(ids)} characters, fewer than "
                                f"studies.tasks.classify_len={length}; lower classify_len")
            splits[(name, split)] = ids
    return Corpora(list(names), alphabet, splits, luts)


def naive_bayes_accuracy(logp: np.ndarray, x: np.ndarray, y: np.ndarray, prefixes: list[int]) -> list[float]:
    """Accuracy of the bag-of-characters classifier on each prefix length (uniform prior: balanced classes)."""
    scores = np.cumsum(logp[:, x], axis=2)  # (K, n, length): summed log-likelihood of each prefix
    return [float((scores[:, :, p - 1].argmax(0) == y).mean()) for p in prefixes]
