"""Where a benchmark writes its JSON: $BENCH_OUT if set (bench/gpu_check.sh sets it to the
device call's $OUT), else bench/out/; written atomically (pipeline.atomic: stdlib only, so a
bare GPU box runs it)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def out_dir() -> Path:
    return Path(os.environ.get("BENCH_OUT") or ROOT / "bench/out")


def save(name: str, res) -> Path:
    """res as JSON in out_dir()/name; the path."""
    from pipeline.atomic import write_json

    path = out_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, res)
    return path
