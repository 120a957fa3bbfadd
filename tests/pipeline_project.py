"""A tiny but real project: git + DVC in tmp, a tiny corpus served by an offline mirror, tiny params."""
from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import make_project
from tests.lmdata import toy_text

TINY_TRAIN = {
    "hidden": 32, "layers": 1, "dropout": 0.0, "batch_size": 8, "seq_len": 32, "max_steps": 30, "val_every": 15,
    "warmup_steps": 0, "eval_batch": 4, "eval_len": 256, "log_every": 5, "progress_every": 10, "lr": 1e-2,
}


def tiny_project(root: Path, text: str | None = None, **train) -> tuple[Path, dict]:
    """(project dir, env) with corpus `tiny` in a mirror folder and lm_corpora [tiny]."""
    proj = root / "proj"
    mirror = root / "mirror"
    mirror.mkdir(parents=True)
    (mirror / "tiny.txt").write_text(text or toy_text(40_000), encoding="utf-8")
    make_project(proj)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["corpora"] = {"tiny": {"kind": "text", "url": "https://example.invalid/tiny.txt"}}
    p["lm_corpora"] = ["tiny"]
    p["train"].update(TINY_TRAIN, **train)
    p["sample"].update({"length": 200, "prime": "ROMEO:"})
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    # the dvc.yaml's top-level plot names the default corpus; point it at the tiny one
    dvc_yaml = (proj / "dvc.yaml").read_text().replace("plots/tinyshakespeare/", "plots/tiny/")
    (proj / "dvc.yaml").write_text(dvc_yaml)
    env = {"CORPUS_MIRROR": str(mirror), "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}", "PREFECT_HOME": str(root / "prefect")}
    return proj, env
