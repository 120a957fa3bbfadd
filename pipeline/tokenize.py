"""Stage `tokenize@<corpus>`: text -> vocabulary + token id stream, streamed in chunks.

    python -m pipeline.tokenize tinyshakespeare     # data/raw/<c>/corpus.txt -> data/tokens/<c>/

Levels (params `tokenize.level`):
- `char`: Unicode code points, exact (no normalisation, CRLF kept). Ids follow code point
  order, so the vocabulary is `sorted(set(text))` as in char-rnn and nanoGPT.
- `byte`: raw bytes, for text in any encoding or none.
- `word`: words, single punctuation marks and whitespace runs as tokens; the vocabulary
  keeps the `max_vocab` most frequent tokens seen at least `min_count` times, the rest
  map to `<unk>` (id 0).

Outputs: `vocab.json` (token -> id, id -> token, counts) and `tokens.npy`, the stream of
ids in the smallest unsigned integer type that fits. Char and byte levels run in two
parallel passes (count, then map; see pipeline/charscan.py); invalid UTF-8 is an error
naming the byte offset, or U+FFFD with `errors: replace`. Memory stays flat whatever the
corpus size.

Music corpora (kind `music`) go through `pipeline.pianoroll` instead.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
from pathlib import Path

import numpy as np

from lightning_modules.vocab import UNK, WORD_RE  # no torch: vocab.py imports only re/json
from pipeline import charscan
from pipeline.atomic import atomic_dir
from pipeline.config import Params, TokenizeParams, load_params
from pipeline.errors import UserError, cli
from pipeline.npyio import NpyWriter, smallest_uint

RAW = Path("data/raw")
TOKENS = Path("data/tokens")


def _word_pieces(path: Path, tp: TokenizeParams, sha=None):
    """Decoded text pieces cut after whitespace, so no word is split between pieces."""
    tail = ""
    for off, piece in charscan.pieces(path, utf8=True):
        if sha is not None:
            sha.update(piece)
        charscan.check_text(piece, off, path)
        s = tail + charscan._decode(piece, off, tp.errors, path)
        m = max(s.rfind(" "), s.rfind("\n"))
        if m < 0:
            tail = s
            continue
        # keep the whole whitespace run together: cut before it starts
        k = m
        while k > 0 and s[k - 1].isspace():
            k -= 1
        if k == 0:
            tail = s
            continue
        yield s[:k]
        tail = s[k:]
    if tail:
        yield tail


def tokenize_words(path: Path, tp: TokenizeParams, out_dir: Path) -> dict:
    sha = hashlib.sha256()
    counter: collections.Counter = collections.Counter()
    for s in _word_pieces(path, tp, sha):
        counter.update(WORD_RE.findall(s))
    ranked = sorted(((c, t) for t, c in counter.items() if c >= tp.min_count), key=lambda ct: (-ct[0], ct[1]))
    kept = [t for _, t in ranked[: tp.max_vocab - 1]]
    tokens = [UNK] + kept
    stoi = {t: i for i, t in enumerate(tokens)}
    unk_count = sum(counter.values()) - sum(counter[t] for t in kept)
    counts = [unk_count] + [counter[t] for t in kept]
    total = sum(counter.values())
    dtype = smallest_uint(len(tokens))
    with NpyWriter(out_dir / "tokens.npy", dtype, (total,)) as w:
        for s in _word_pieces(path, tp):
            w.write(np.fromiter((stoi.get(t, 0) for t in WORD_RE.findall(s)), dtype=np.int64))
    return {"tokens": tokens, "counts": counts, "unk": 0, "sha256": sha.hexdigest(), "total": total, "dtype": dtype}


def tokenize_file(path: Path, tp: TokenizeParams, out_dir: Path) -> dict:
    """Tokenize `path` into out_dir/{vocab.json,tokens.npy}; return vocab.json's content."""
    if not path.is_file():
        raise UserError(f"{path}: not found; run the download stage first (dvc repro download@<corpus>)")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the corpus is empty (0 bytes); check its download and include globs in params.yaml")
    if tp.level == "word":
        r = tokenize_words(path, tp, out_dir)
    else:
        counts, seg_tokens, segs, sha = charscan.scan(path, tp.level, tp.errors)
        ids = np.flatnonzero(counts)
        dtype = smallest_uint(len(ids))
        total = int(counts.sum())
        charscan.write_ids(path, tp.level, tp.errors, ids, dtype, seg_tokens, segs, out_dir / "tokens.npy")
        tokens = [int(i) for i in ids] if tp.level == "byte" else [chr(i) for i in ids]
        r = {"tokens": tokens, "counts": [int(c) for c in counts[ids]], "unk": None, "sha256": sha, "total": total, "dtype": dtype}
    vocab = {
        "level": tp.level,
        "size": len(r["tokens"]),
        "dtype": r["dtype"].name,
        "tokens": r["tokens"],
        "stoi": {str(t): i for i, t in enumerate(r["tokens"])},
        "counts": r["counts"],
        "unk": r["unk"],
        "total_tokens": r["total"],
        "corpus_sha256": r["sha256"],
        "corpus_bytes": path.stat().st_size,
    }
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return vocab


def tokenize(name: str, params: Params, raw_dir: Path = RAW, out_root: Path = TOKENS) -> Path:
    corpus = params.corpus(name)
    with atomic_dir(out_root / name) as tmp:
        if corpus.kind == "music":
            from pipeline.pianoroll import pianoroll

            pianoroll(raw_dir / name / "corpus.json", tmp)
        else:
            tokenize_file(raw_dir / name / "corpus.txt", params.tokenize, tmp)
    return out_root / name


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default=str(RAW))
    ap.add_argument("--out", default=str(TOKENS))
    a = ap.parse_args(argv)
    out = tokenize(a.corpus, load_params(a.params), Path(a.raw), Path(a.out))
    v = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    if "size" in v:
        print(f"{a.corpus}: {v['total_tokens']:,} {v['level']} tokens, vocab {v['size']} -> {out}")
    else:
        print(f"{a.corpus}: piano roll -> {out}")


if __name__ == "__main__":
    main()
