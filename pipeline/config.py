"""params.yaml, validated once into typed objects.

Every stage calls `load_params()`; an unknown key, a required key left out or a bad value
is a `UserError` naming the file and the key path (e.g. `params.yaml: train.hidden: must be
> 0, got -3`). A key left out that has a default takes it (the dataclass field's default).
Sections are plain frozen dataclasses, so a typo cannot hide.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PARAMS = "params.yaml"


@dataclass(frozen=True)
class DataParams:
    mirror: str | None = None
    retries: int = 5
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Corpus:
    kind: str
    url: str
    mirror_file: str | None = None
    sha256: str | None = None
    mirror_sha256: str | None = None
    include: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        """The file name to look for in a mirror folder (and of the cached download): `mirror_file`,
        else the last part of the URL's path (its query string left out)."""
        return self.mirror_file or urllib.parse.urlparse(self.url).path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_archive(self) -> bool:
        return self.file_name.endswith((".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar", ".zip"))


@dataclass(frozen=True)
class TokenizeParams:
    level: str = "char"
    errors: str = "strict"
    max_vocab: int = 50000
    min_count: int = 1


@dataclass(frozen=True)
class OnehotParams:
    train_frac: float = 0.9
    val_frac: float = 0.1
    min_train_tokens: int = 1024


@dataclass(frozen=True)
class TrainParams:
    """Model, optimisation and trainer settings of the language model (see lightning_modules/train.py)."""

    cell: str = "lstm"
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    io_dropout: float = 0.0
    weight_drop: float = 0.0
    input: str = "embedding"
    bptt: str = "full"
    seq_len: int = 128
    k1: int = 64
    k2: int = 64
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 0
    decay_frac: float = 1.0
    weight_decay: float = 0.01
    clip: float = 1.0
    max_steps: int = 1000
    max_seconds: float | None = None
    val_every: int = 250
    eval_batch: int = 16
    eval_len: int = 512
    seed: int = 1337
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    log_every: int = 10
    progress_every: int = 100

    def validate(self, path: str) -> None:
        if self.bptt == "tbptt" and self.k1 > self.k2:
            raise UserError(f"{PARAMS}: {path}.k1: truncated BPTT needs k1 <= k2, got k1={self.k1}, k2={self.k2}")
        for key in ("dropout", "io_dropout", "weight_drop"):
            if not 0 <= getattr(self, key) < 1:
                raise UserError(f"{PARAMS}: {path}.{key}: must be in [0, 1), got {getattr(self, key)}")
        if not 0 <= self.min_lr_frac <= 1:
            raise UserError(f"{PARAMS}: {path}.min_lr_frac: must be in [0, 1], got {self.min_lr_frac}")
        if not 0 < self.decay_frac <= 1:
            raise UserError(
                f"{PARAMS}: {path}.decay_frac: must be in (0, 1] (1: cosine over the whole run), got {self.decay_frac}"
            )
        if self.max_seconds is None and self.max_steps <= self.warmup_steps:
            raise UserError(
                f"{PARAMS}: {path}.max_steps: {self.max_steps} steps leave none after {path}.warmup_steps={self.warmup_steps}; "
                f"raise max_steps or lower warmup_steps (e.g. --set {path}.warmup_steps={max(0, self.max_steps // 10)})"
            )
        decay_steps = self.decay_frac * (self.max_steps - self.warmup_steps)
        if self.max_seconds is None and decay_steps < 1:
            raise UserError(
                f"{PARAMS}: {path}.decay_frac: {self.decay_frac} x (max_steps - warmup_steps) = {decay_steps:.2g} steps"
                " of decay, the lr would never come down; raise decay_frac or max_steps"
            )
        world = self.devices * self.num_nodes
        if self.batch_size % world or self.eval_batch % world:
            raise UserError(f"{PARAMS}: {path}.batch_size/eval_batch: must divide by devices x num_nodes = {world}")

    def to_fit(self) -> dict:
        """The settings as lightning_modules.train.fit takes them."""
        d = dataclasses.asdict(self)
        return d


@dataclass(frozen=True)
class SampleParams:
    length: int = 2000
    temperature: float = 0.8
    top_k: int = 0
    prime: str = ""
    seed: int = 1234
    n: int = 1
    argmax: bool = False  # greedy decoding: temperature, top_k and seed unused


@dataclass(frozen=True)
class TrackingParams:
    enabled: bool = True
    uri: str | None = None  # default: sqlite:///<project>/mlflow.db; env MLFLOW_TRACKING_URI wins
    register: bool = True


from lightning_modules.names import CELLS  # noqa: E402  (no torch: a list of names)

CHOICES = {
    "kind": ("text", "music"),
    "level": ("char", "byte", "word"),
    "errors": ("strict", "replace"),
    "cell": CELLS,
    "input": ("embedding", "onehot"),
    "bptt": ("full", "tbptt"),
    "accelerator": ("cpu", "gpu", "cuda", "mps", "auto"),
    "strategy": ("auto", "ddp", "ddp_spawn", "fsdp", "deepspeed"),
    "precision": ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"),
}
POSITIVE = {
    "retries", "timeout_s", "max_vocab", "min_count", "hidden", "layers", "seq_len", "k1", "k2", "batch_size", "lr",
    "max_steps", "max_seconds", "val_every", "eval_batch", "eval_len", "devices", "num_nodes", "log_every", "length", "n",
    "min_train_tokens",
}
NON_NEGATIVE = {"warmup_steps", "weight_decay", "clip", "top_k", "progress_every", "seed"}
MIN_TEMPERATURE = 1e-3  # = lightning_modules.sampling.MIN_TEMPERATURE (this module imports no torch)


def _check_value(path: str, name: str, value, typ):
    """Coerce/validate one value against its annotation; raise UserError naming `path`."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None:
            return None
        typ = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise UserError(f"{PARAMS}: {path}: must be a list, got {value!r}")
        return tuple(_check_value(f"{path}[{i}]", name, v, args[0]) for i, v in enumerate(value))
    if typ is bool:
        if not isinstance(value, bool):
            raise UserError(f"{PARAMS}: {path}: must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{PARAMS}: {path}: must be an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{PARAMS}: {path}: must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"{PARAMS}: {path}: must be a finite number, got {value!r}")
    elif typ is str:
        if not isinstance(value, str):
            raise UserError(f"{PARAMS}: {path}: must be a string, got {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise UserError(f"{PARAMS}: {path}: must be one of {', '.join(CHOICES[name])}, got {value!r}")
    if name in POSITIVE and value <= 0:
        raise UserError(f"{PARAMS}: {path}: must be > 0, got {value!r}")
    if name in NON_NEGATIVE and value < 0:
        raise UserError(f"{PARAMS}: {path}: must be >= 0, got {value!r}")
    return value


def build(cls, raw, path: str, choices: dict | None = None):
    """Build dataclass `cls` from mapping `raw`, rejecting unknown keys by their path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{PARAMS}: {path}: must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise UserError(f"{PARAMS}: {path}.{key}: unknown key (known: {', '.join(known)}); fix the spelling or remove it")
    values = {}
    for name, f in known.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{PARAMS}: {path}.{name}: missing; add it")
            continue
        values[name] = _check_value(f"{path}.{name}", name, raw[name], hints[name])
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check:
        check(path)
    return obj


@dataclass(frozen=True)
class Params:
    data: DataParams
    corpora: dict[str, Corpus]
    tokenize: TokenizeParams
    onehot: OnehotParams
    train: TrainParams = field(default_factory=TrainParams)
    sample: SampleParams = field(default_factory=SampleParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    lm_corpora: tuple[str, ...] = ()
    preset: str = "cpu"
    raw: dict = field(repr=False, default_factory=dict)
    overrides: dict = field(repr=False, default_factory=dict)  # what --set (or a flow) gave: it wins over any preset

    def corpus(self, name: str) -> Corpus:
        if name not in self.corpora:
            raise UserError(f"unknown corpus {name!r}; declared in {PARAMS}: {', '.join(self.corpora)}")
        return self.corpora[name]

    def mirror(self) -> Path | None:
        """The offline mirror folder: env CORPUS_MIRROR, else data.mirror, else None."""
        m = os.environ.get("CORPUS_MIRROR") or self.data.mirror
        return Path(m).expanduser() if m else None


CORPUS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SECTIONS = {"data", "corpora", "tokenize", "onehot", "train", "sample", "tracking", "lm_corpora", "preset", "presets", "studies"}


def _apply_preset(raw: dict) -> dict:
    """`preset: NAME` overlays presets.NAME (a mapping of sections) on the sections."""
    name = raw.get("preset", "cpu")
    presets = raw.get("presets") or {}
    if not isinstance(presets, dict):
        raise UserError(f"{PARAMS}: presets: must be a mapping of preset name -> sections")
    if name in (None, "cpu") and "cpu" not in presets:
        return raw
    if name not in presets:
        raise UserError(f"{PARAMS}: preset: unknown preset {name!r} (known: {', '.join(['cpu', *presets])}); fix it or add presets.{name}")
    out = dict(raw)
    for section, values in (presets[name] or {}).items():
        if section not in ("train", "sample", "tracking", "lm_corpora"):
            raise UserError(f"{PARAMS}: presets.{name}.{section}: a preset may set train, sample, tracking or lm_corpora")
        if isinstance(values, dict):
            out[section] = {**(raw.get(section) or {}), **values}
        else:
            out[section] = values
    return out


def parse(raw: dict, overrides: dict | None = None) -> Params:
    """Validate raw params.yaml; `preset` overlays its sections, then `overrides` win over both
    (`--set preset=gpu --set train.batch_size=512` trains the gpu preset at batch 512)."""
    if not isinstance(raw, dict):
        raise UserError(f"{PARAMS}: must be a mapping of sections")
    raw = copy.deepcopy(raw)  # the caller's mapping stays as it was
    known = SECTIONS
    for key in raw:
        if key not in known:
            raise UserError(f"{PARAMS}: {key}: unknown section (known: {', '.join(sorted(known))}); fix the spelling or remove it")
    raw = _apply_preset(raw)
    for key, value in (overrides or {}).items():
        if key != "preset":
            set_key(raw, key, value)
    corpora_raw = raw.get("corpora") or {}
    if not isinstance(corpora_raw, dict) or not corpora_raw:
        raise UserError(f"{PARAMS}: corpora: declare at least one corpus")
    corpora = {}
    for name, spec in corpora_raw.items():
        if not isinstance(name, str) or not CORPUS_NAME.fullmatch(name):
            raise UserError(
                f"{PARAMS}: corpora: name {name!r} is not usable as a folder name; use letters, digits, _ and - (e.g. my_corpus)"
            )
        c = build(Corpus, spec, f"corpora.{name}")
        for key in ("sha256", "mirror_sha256"):
            v = getattr(c, key)
            if v is not None and (len(v) != 64 or any(ch not in "0123456789abcdef" for ch in v)):
                raise UserError(f"{PARAMS}: corpora.{name}.{key}: must be 64 lowercase hex digits, got {v!r}")
        if not c.url.startswith(("https://", "http://")):
            raise UserError(f"{PARAMS}: corpora.{name}.url: must be an http(s) URL, got {c.url!r}")
        if not c.file_name or c.file_name in (".", "..") or "/" in c.file_name or "\\" in c.file_name:
            raise UserError(
                f"{PARAMS}: corpora.{name}.mirror_file: must be a plain file name (no folders), got {c.file_name!r}; "
                "set mirror_file, or give a url that ends in a file name"
            )
        if c.include and not c.is_archive:
            raise UserError(
                f"{PARAMS}: corpora.{name}.include: only an archive (.tar.*, .tgz, .zip) has members to include, "
                f"and {c.file_name!r} is not one; remove include, or name the archive with mirror_file"
            )
        corpora[name] = c
    p = Params(
        data=build(DataParams, raw.get("data"), "data"),
        corpora=corpora,
        tokenize=build(TokenizeParams, raw.get("tokenize"), "tokenize"),
        onehot=build(OnehotParams, raw.get("onehot"), "onehot"),
        train=build(TrainParams, raw.get("train"), "train"),
        sample=build(SampleParams, raw.get("sample"), "sample"),
        tracking=build(TrackingParams, raw.get("tracking"), "tracking"),
        lm_corpora=_check_value("lm_corpora", "lm_corpora", raw.get("lm_corpora") or [], tuple[str, ...]),
        preset=str(raw.get("preset", "cpu")),
        raw=raw,
        overrides=dict(overrides or {}),
    )
    for c in p.lm_corpora:
        if c not in corpora or corpora[c].kind != "text":
            raise UserError(f"{PARAMS}: lm_corpora: {c!r} is not a declared text corpus (text corpora: {', '.join(k for k, v in corpora.items() if v.kind == 'text')})")
    if not p.sample.argmax and not p.sample.temperature >= MIN_TEMPERATURE:  # greedy decoding ignores it
        raise UserError(f"{PARAMS}: sample.temperature: must be >= {MIN_TEMPERATURE}, got {p.sample.temperature!r}; "
                        "for greedy decoding set sample.argmax: true")
    oh = p.onehot
    if not (0 < oh.train_frac <= 1 and 0 <= oh.val_frac < 1 and oh.train_frac + oh.val_frac <= 1 + 1e-9):
        raise UserError(
            f"{PARAMS}: onehot.train_frac/val_frac: need 0 < train_frac, 0 <= val_frac and a sum <= 1, "
            f"got {oh.train_frac} and {oh.val_frac}"
        )
    return p


def set_key(raw: dict, key: str, value) -> None:
    """raw[section][...][leaf] = value for a dotted key (top-level keys like `preset` too).
    A mapping given for a section is merged into it, key by key ({"train": {"cell": "gru"}}
    is train.cell=gru), never put in place of the whole section (its other keys would fall
    back to the code's defaults without a word)."""
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        if not isinstance(node.setdefault(p, {}), dict):
            raise UserError(f"override {key}: {p} is not a section")
        node = node[p]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for k, v in value.items():
            set_key(node[leaf], str(k), v)
        return
    node[leaf] = value


def as_given(msg: str, overrides: dict | None, given_as=None) -> str | None:
    """A `params.yaml: <key>: <problem>` message about a value the user overrode (or a section
    of it given whole), named as the user gave it: `given_as(key)`, by default `--set key`;
    None for any other message."""
    if not msg.startswith(f"{PARAMS}: "):
        return None
    dotted, _, what = msg[len(PARAMS) + 2:].partition(": ")
    if what and any(dotted == k or dotted.startswith(k + ".") for k in overrides or {}):
        return f"{given_as(dotted) if given_as else f'--set {dotted}'}: {what}"
    return None


def load_params(path: str | os.PathLike = PARAMS, overrides: dict | None = None, given_as=None) -> Params:
    """params.yaml, with optional {"section.key": value} overrides applied before validation.
    A bad override is named as the user gave it: `given_as(key)`, by default `--set key`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found; run from the project root" + (" or pass --params" if path.name == PARAMS else ""))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    raw = raw or {}
    for key, value in (overrides or {}).items():
        set_key(raw, key, value)  # before the preset too: `preset` itself may be overridden
    try:
        return parse(raw, overrides)
    except UserError as e:
        msg = str(e)
        given = as_given(msg, overrides, given_as)
        if given:
            raise UserError(given) from None
        if path.name != PARAMS and msg.startswith(f"{PARAMS}: "):  # name the file the user gave
            raise UserError(f"{path}: {msg[len(PARAMS) + 2:]}") from None
        raise


_EXP_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _text_keys() -> set[str]:
    """The section.key names whose value is text (`sample.prime`, `train.cell`, ...)."""
    sections = {"data": DataParams, "tokenize": TokenizeParams, "train": TrainParams, "sample": SampleParams, "tracking": TrackingParams}
    out = set()
    for section, cls in sections.items():
        for name, typ in typing.get_type_hints(cls).items():
            if typ is str or (typing.get_origin(typ) in (typing.Union, types.UnionType) and str in typing.get_args(typ)):
                out.add(f"{section}.{name}")
    return out


def parse_sets(sets: list[str]) -> dict:
    """["train.cell=gru", ...] -> {"train.cell": "gru", ...} (values parsed as YAML).

    A key whose value is text keeps the text as typed (`sample.prime=1e3` primes with "1e3",
    `sample.prime=a #b` with "a #b"); only `null` or `~` means none there, and quotes are
    taken off. Elsewhere `3e-3` is the number (YAML 1.1 reads a mantissa without a dot as
    a string)."""
    text = _text_keys()
    out = {}
    for s in sets:
        if "=" not in s:
            raise UserError(f"--set {s!r}: expected section.key=value, e.g. train.cell=gru")
        key, value = s.split("=", 1)
        leaf = key.split(".")[-2:] if key.startswith("presets.") else key.split(".")
        if ".".join(leaf) in text:
            out[key] = _text_value(value)
            continue
        try:
            v = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UserError(f"--set {s!r}: not a YAML value ({str(e).splitlines()[0]}); quote it") from None
        if isinstance(v, str) and _EXP_NUMBER.fullmatch(v.strip()):
            v = float(v)
        out[key] = v
    return out


def _text_value(value: str) -> str | None:
    """A text key's value as typed: `null`/`~` is none, '...' or "..." loses its quotes."""
    v = value.strip()
    if v in ("null", "~"):
        return None
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        try:
            q = yaml.safe_load(v)
        except yaml.YAMLError:
            return value
        return q if isinstance(q, str) else value
    return value
