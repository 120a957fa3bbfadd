"""The registry's `champion` alias: the registered version that scores best on the val split.

After evaluate scores a registered model (`charlm-<corpus>` version N), the version gets two
tags, its `eval_val_loss` and the `data_key` of the split it was scored on, and the alias
`champion` moves to it when

- no version holds the alias yet, or
- the champion was scored on other data (another corpus file, token level, vocabulary or
  split: a loss on other data is not comparable, and the pipeline now reads this data), or
- its eval_val_loss is lower than the champion's (a tie keeps the champion).

So `models:/charlm-<corpus>@champion` (flows.sample) is the best model trained so far on
today's data, whichever preset, cell or size trained it; `models:/charlm-<corpus>/latest` is
the last one. The alias is the pipeline's: an alias of your own choice takes another name.
"""
from __future__ import annotations

import hashlib
import json
import math

ALIAS = "champion"


def data_key(meta: dict) -> str:
    """What decides the val split a loss is measured on (data/onehot/<corpus>/meta.json):
    the corpus file's sha256, the token level and vocabulary size, the split sizes."""
    keys = ("corpus_sha256", "level", "vocab_size", "splits")
    blob = json.dumps({k: meta.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def registered_version(mlf: dict) -> tuple[str, str] | None:
    """(name, version) from run.json's `"registered": "charlm-x version N"`; None if not registered."""
    reg = (mlf or {}).get("registered")
    if not reg or " version " not in reg:
        return None
    name, version = reg.rsplit(" version ", 1)
    return name, version


def promote(uri: str, name: str, version: str, val_loss: float, key: str) -> str:
    """Tag version `version` of `name` with its score and data key, and move the alias to it
    if it beats the champion (see the module's docstring); a line saying what happened."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(uri)
    client.set_model_version_tag(name, version, "eval_val_loss", f"{val_loss:.5f}")
    client.set_model_version_tag(name, version, "data_key", key)
    try:
        champ = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:  # no version holds it
        champ = None
    if champ is not None and str(champ.version) == str(version):
        return f"{name} version {version} stays @{ALIAS} (val_loss {val_loss:.4f})"
    if champ is not None and champ.tags.get("data_key") == key:
        try:
            best = float(champ.tags.get("eval_val_loss", "nan"))
        except ValueError:
            best = math.nan
        if not math.isnan(best) and best <= val_loss:
            return f"{name} version {version} (val_loss {val_loss:.4f}) does not beat @{ALIAS}, version {champ.version} ({best:.4f})"
    why = ("the first scored" if champ is None else
           "the champion was scored on other data" if champ.tags.get("data_key") != key else
           f"it beats version {champ.version}")
    client.set_registered_model_alias(name, ALIAS, version)
    return f"{name} version {version} is now @{ALIAS} (val_loss {val_loss:.4f}; {why})"
