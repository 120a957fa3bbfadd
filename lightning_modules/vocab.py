"""The vocabulary written by the tokenize stage (vocab.json): text <-> ids.

Imports no torch, so the data stages can share the word pattern without loading it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

WORD_RE = re.compile(r"\w+|\s+|[^\w\s]")  # words, whitespace runs, single punctuation marks
UNK = "<unk>"


@dataclass
class Vocab:
    level: str  # char | byte | word
    tokens: list  # id -> token (str; int for byte level)
    unk: int | None = None

    def __post_init__(self):
        self.stoi = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        v = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(v["level"], v["tokens"], v.get("unk"))

    def to_dict(self) -> dict:
        return {"level": self.level, "tokens": list(self.tokens), "unk": self.unk}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        return cls(d["level"], list(d["tokens"]), d.get("unk"))

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, text: str) -> list:
        if self.level == "word":
            return WORD_RE.findall(text)
        if self.level == "byte":
            return list(text.encode("utf-8"))
        return list(text)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`. Characters (or bytes) outside the vocabulary are an error
        listing them; unknown words map to <unk>."""
        parts = self.split(text)
        if self.level == "word":
            return [self.stoi.get(t, self.unk if self.unk is not None else 0) for t in parts]
        missing = sorted({t for t in parts if t not in self.stoi}, key=str)
        if missing:
            shown = ", ".join(repr(m) if isinstance(m, str) else f"byte {m}" for m in missing[:20])
            raise ValueError(f"the prime text has {len(missing)} symbol(s) missing from the vocabulary: {shown}; remove them")
        return [self.stoi[t] for t in parts]

    def decode(self, ids) -> str:
        if self.level == "byte":
            return bytes(self.tokens[i] for i in ids).decode("utf-8", errors="replace")
        return "".join(self.tokens[i] for i in ids)
