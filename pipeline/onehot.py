"""Stage `onehot@<corpus>`: token stream -> train/val/test index arrays + meta.json.

    python -m pipeline.onehot tinyshakespeare       # data/tokens/<c>/ -> data/onehot/<c>/

A one-hot vector is stored as the index of its hot position, in the smallest unsigned
type that fits (uint8 for up to 256 tokens). The dense matrix (positions x vocab) is
formed on the device, one batch at a time, by `lightning_modules.onehot.onehot`: stored
densely as float32, the 1.18 GB Linux tree with its ~100-symbol vocabulary would take
about 1.18e9 x 100 x 4 bytes = 470 GB; as uint8 indices it takes 1.18 GB.

Splits are contiguous: the first `train_frac` of the stream is train, the next
`val_frac` is val, the rest is test (default 0.9 / 0.1 / empty: nanoGPT's split, so
figures compare with published ones). Music corpora keep their published split.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from pipeline.atomic import atomic_dir
from pipeline.config import OnehotParams, Params, load_params
from pipeline.errors import UserError, cli
from numpy.lib import format as npformat

from pipeline.npyio import npy_header, read_header

TOKENS = Path("data/tokens")
ONEHOT = Path("data/onehot")
SPLITS = ("train", "val", "test")


def split_bounds(n: int, op: OnehotParams) -> dict[str, tuple[int, int]]:
    """Contiguous [start, end) per split: nanoGPT's `n = int(0.9 * len(data))` rule."""
    a = int(n * op.train_frac)
    b = min(n, a + int(n * op.val_frac)) if op.train_frac + op.val_frac < 1 else n
    return {"train": (0, a), "val": (a, b), "test": (b, n)}


def _copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Copy `count` bytes from src at `offset` to dst's current position, in the kernel."""
    while count > 0:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(count, 1 << 30), offset)
        except OSError:  # file systems without copy_file_range
            n = os.write(dst_fd, os.pread(src_fd, min(count, 16 << 20), offset))
        if n <= 0:
            raise OSError(f"short copy at offset {offset}")
        offset += n
        count -= n


def split_stream(src: Path, out_dir: Path, op: OnehotParams) -> dict:
    """Write each split's slice of `src` (a 1-D .npy) as its own .npy, copied in the kernel."""
    shape, dtype = npy_header(src)
    with open(src, "rb") as f:
        read_header(f)
        data_at = f.tell()
    bounds = split_bounds(shape[0], op)
    src_fd = os.open(src, os.O_RDONLY)
    try:
        for s, (b, e) in bounds.items():
            with open(out_dir / f"{s}.npy", "wb") as out:
                npformat.write_array_header_1_0(out, {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": (e - b,)})
                out.flush()
                _copy_range(src_fd, out.fileno(), data_at + b * dtype.itemsize, (e - b) * dtype.itemsize)
    finally:
        os.close(src_fd)
    return {s: e - b for s, (b, e) in bounds.items()}


def onehot(name: str, params: Params, tokens_root: Path = TOKENS, out_root: Path = ONEHOT) -> Path:
    corpus = params.corpus(name)
    src = tokens_root / name
    if not (src / "vocab.json").is_file():
        raise UserError(f"{src}/vocab.json: not found; run the tokenize stage first (dvc repro tokenize@{name})")
    vocab = json.loads((src / "vocab.json").read_text(encoding="utf-8"))
    with atomic_dir(out_root / name) as tmp:
        if corpus.kind == "music":
            for s in SPLITS:
                shutil.copyfile(src / f"{s}.npy", tmp / f"{s}.npy")
            meta = dict(vocab, corpus=name)
        else:
            lengths = split_stream(src / "tokens.npy", tmp, params.onehot)
            op = params.onehot
            if lengths["train"] < op.min_train_tokens:
                raise UserError(
                    f"corpus {name}: the train split has {lengths['train']:,} tokens, fewer than onehot.min_train_tokens="
                    f"{op.min_train_tokens:,} (a few training windows); use a longer corpus or lower onehot.min_train_tokens"
                )
            meta = {
                "kind": "text",
                "corpus": name,
                "level": vocab["level"],
                "vocab_size": vocab["size"],
                "dtype": vocab["dtype"],
                "splits": lengths,
                "fractions": {"train": op.train_frac, "val": op.val_frac},
                "corpus_sha256": vocab["corpus_sha256"],
                "corpus_bytes": vocab["corpus_bytes"],
            }
        shutil.copyfile(src / "vocab.json", tmp / "vocab.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out_root / name


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tokens", default=str(TOKENS))
    ap.add_argument("--out", default=str(ONEHOT))
    a = ap.parse_args(argv)
    out = onehot(a.corpus, load_params(a.params), Path(a.tokens), Path(a.out))
    meta = json.loads((out / "meta.json").read_text())
    if meta["kind"] == "text":
        s = meta["splits"]
        print(f"{a.corpus}: vocab {meta['vocab_size']} ({meta['dtype']}), train {s['train']:,}, val {s['val']:,}, test {s['test']:,} -> {out}")
    else:
        print(f"{a.corpus}: " + ", ".join(f"{k} {v['frames']:,} frames" for k, v in meta["splits"].items()) + f" -> {out}")


if __name__ == "__main__":
    main()
