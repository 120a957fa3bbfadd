"""JSB Chorales (Boulanger-Lewandowski split) -> 88-key piano rolls.

The JSON holds {"train","valid","test"} -> chorales -> time steps -> sounding MIDI pitches
(21..108, the 88 keys of a piano). Each split becomes a (frames, 88) uint8 array with
chorales laid end to end, plus their lengths, so a model can reset its state between
chorales. Frames are quarter notes; an empty frame (a rest) is a row of zeros.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

LOWEST, KEYS = 21, 88
SPLITS = {"train": "train", "valid": "val", "test": "test"}


def rolls_from_json(obj, path: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    if not isinstance(obj, dict) or not set(SPLITS) <= set(obj):
        raise UserError(f"{path}: expected a JSON object with keys train, valid, test; is this the JSB Chorales file?")
    out = {}
    for key, split in SPLITS.items():
        chorales = obj[key]
        if not isinstance(chorales, list) or not all(
            isinstance(c, list) and all(isinstance(step, list) for step in c) for c in chorales
        ):
            raise UserError(
                f"{path}: {key}: expected a list of chorales, each a list of time steps, each a list of pitches; "
                "the file is corrupt or another format: fetch it again"
            )
        lengths = [len(c) for c in chorales]
        roll = np.zeros((sum(lengths), KEYS), dtype=np.uint8)
        row = 0
        for ci, chorale in enumerate(chorales):
            for step in chorale:
                for pitch in step:
                    whole = isinstance(pitch, int) or (isinstance(pitch, float) and pitch.is_integer())
                    if isinstance(pitch, bool) or not whole or not LOWEST <= pitch < LOWEST + KEYS:
                        raise UserError(
                            f"{path}: {key} chorale {ci} has pitch {pitch!r}, not a whole MIDI pitch of the piano's 21..108; the file is corrupt"
                        )
                    roll[row, int(pitch) - LOWEST] = 1
                row += 1
        out[split] = (roll, lengths)
    return out


def pianoroll(src: Path, out_dir: Path) -> dict:
    if not src.is_file():
        raise UserError(f"{src}: not found; run the download stage first (dvc repro download@<corpus>)")
    raw = src.read_bytes()
    if not raw:
        raise UserError(f"{src}: the corpus is empty (0 bytes); check its download")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{src}: not valid JSON ({e}); fetch the file again") from None
    rolls = rolls_from_json(obj, src)
    meta = {"kind": "music", "keys": KEYS, "lowest_pitch": LOWEST, "dtype": "uint8", "corpus_sha256": hashlib.sha256(raw).hexdigest(), "splits": {}}
    for split, (roll, lengths) in rolls.items():
        np.save(out_dir / f"{split}.npy", roll)
        meta["splits"][split] = {"frames": int(roll.shape[0]), "sequences": len(lengths), "lengths": lengths}
    (out_dir / "vocab.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta
