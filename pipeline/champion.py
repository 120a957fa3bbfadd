"""The registry's `champion` alias: the registered version that scores best on the val split.

After evaluate scores a registered model (`charlm-<corpus>` version N), the version gets two
tags, its `eval_val_loss` and the `score_key` of what that loss was measured on (the corpus
file, token level, vocabulary and split sizes, and the evaluation's streams: `eval_batch`
streams, each from a zero state, read `eval_len` tokens at a time). The alias `champion`
then goes to the version with the lowest eval_val_loss among all versions with this
score_key (a tie keeps the holder): losses measured on other data, or by other streams, are
not compared, and the pipeline now reads this data.

So `models:/charlm-<corpus>@champion` (flows.sample) is the best model trained so far on
today's data, whichever preset, cell or size trained it; `models:/charlm-<corpus>/latest` is
the last one. The alias is the pipeline's: an alias of your own choice takes another name.
"""
from __future__ import annotations

import hashlib
import json
import math

ALIAS = "champion"


def score_key(meta: dict, eval_batch: int, eval_len: int) -> str:
    """What a val_loss is measured on: the split (data/onehot/<corpus>/meta.json: the corpus
    file's sha256, the token level, vocabulary size and split sizes) and the evaluation's
    streams."""
    keys = ("corpus_sha256", "level", "vocab_size", "splits")
    blob = json.dumps({**{k: meta.get(k) for k in keys}, "eval_batch": eval_batch, "eval_len": eval_len}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def registered_version(mlf: dict) -> tuple[str, str] | None:
    """(name, version) from run.json's `"registered": "charlm-x version N"`; None if not registered."""
    reg = (mlf or {}).get("registered")
    if not reg or " version " not in reg:
        return None
    name, version = reg.rsplit(" version ", 1)
    return name, version


def _loss(v) -> float:
    try:
        return float(v.tags.get("eval_val_loss", "nan"))
    except ValueError:
        return math.nan


def promote(uri: str, name: str, version: str, val_loss: float, key: str) -> str:
    """Tag version `version` of `name` with its score and key, and put the alias on the best
    version scored with that key (see the module's docstring); a line saying what happened."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    client.set_model_version_tag(name, version, "eval_val_loss", f"{val_loss:.5f}")
    client.set_model_version_tag(name, version, "score_key", key)
    if math.isnan(val_loss):  # a diverged model is tagged, and competes with no one
        return f"{name} version {version}: val_loss is NaN; @{ALIAS} left as it was"
    holder = client.get_registered_model(name).aliases.get(ALIAS)
    holder = str(holder) if holder is not None else None
    scored = {str(v.version): _loss(v) for v in client.search_model_versions(f"name='{name}'") if v.tags.get("score_key") == key}
    scored = {v: loss for v, loss in scored.items() if not math.isnan(loss)}
    best = min(scored.values())
    tied = sorted((v for v, loss in scored.items() if loss == best), key=int)
    target = holder if holder in tied else tied[0]
    said = f"{name} version {version}: val_loss {val_loss:.4f}; @{ALIAS}"
    of = f"({best:.4f}, the best of {len(scored)} version{'s' if len(scored) != 1 else ''} scored on this data)"
    if target == holder:
        return f"{said} stays on version {holder} {of}"
    client.set_registered_model_alias(name, ALIAS, target)
    return f"{said} {f'from version {holder}' if holder else 'set'} -> version {target} {of}"
