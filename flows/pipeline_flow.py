"""Prefect flow: data (via DVC) -> train -> evaluate -> sample, with artifacts.

    python -m flows.pipeline_flow --corpus tinyshakespeare --set train.max_steps=300

The tasks call the same functions as the DVC stages. Data preparation goes through
`dvc repro download@<corpus>` and `dvc repro onehot@<corpus>`, so DVC's caching rule
decides what reruns; the download task alone retries, with exponential back-off. The
model stages write under outputs/flow/ (not the DVC-tracked models/, metrics/, samples/),
so a scheduled run never dirties the DVC workspace. Results: an MLflow run (and model
version) per flow run, a Markdown artifact with the samples and a table artifact with the
metrics in the Prefect UI.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

FLOW_OUT = Path("outputs/flow")


def _dvc(*args: str) -> str:
    exe = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    p = subprocess.run([exe, *args], capture_output=True, text=True)
    if p.returncode != 0:
        err = [l for l in (p.stderr + p.stdout).splitlines() if l.strip()]
        raise RuntimeError(f"dvc {' '.join(args)} failed: {err[-1] if err else p.returncode}")
    return p.stdout


def _params(params_path: str, preset: str | None, overrides: dict[str, Any] | None):
    from pipeline.config import load_params

    o = dict(overrides or {})
    if preset:
        o["preset"] = preset
    return load_params(params_path, o)


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5)
def download(corpus: str) -> str:
    """Fetch the corpus (DVC stage download@<corpus>); retried on failure."""
    return _dvc("repro", f"download@{corpus}")


@task
def prepare(corpus: str) -> str:
    """Tokenize and one-hot encode (DVC stages tokenize@, onehot@), cached by DVC."""
    return _dvc("repro", f"onehot@{corpus}")


@task
def train(corpus: str, params) -> dict:
    from pipeline.train import train as run

    return run(corpus, params, FLOW_OUT / "models", FLOW_OUT / "plots")


@task
def evaluate(corpus: str, params) -> dict:
    from pipeline.evaluate import evaluate as run

    return run(corpus, params, FLOW_OUT / "models", FLOW_OUT / "metrics")


@task
def sample(corpus: str, params) -> str:
    from pipeline.sample import sample as run

    return run(corpus, params, FLOW_OUT / "models", FLOW_OUT / "samples").read_text(encoding="utf-8")


@flow(name="charlm-pipeline", log_prints=True)
def charlm_pipeline(
    corpus: str = "tinyshakespeare",
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    params_path: str = "params.yaml",
) -> dict:
    """Train, evaluate and sample a character language model on `corpus`.

    overrides: params as {"section.key": value}, e.g. {"train.cell": "gru", "train.max_steps": 300}.
    """
    logger = get_run_logger()
    params = _params(params_path, preset, overrides)
    params.corpus(corpus)  # unknown corpus: fail before any work
    download(corpus)
    prepare(corpus)
    summary = train(corpus, params)
    metrics = evaluate(corpus, params)
    text = sample(corpus, params)
    logger.info("val_loss %.4f nats/token after %d steps", metrics["val_loss"], summary["steps"])
    rows = [{"metric": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float))]
    rows.append({"metric": "best_val_loss (training)", "value": summary["best_val_loss"]})
    create_table_artifact(rows, key=f"metrics-{corpus.replace('_', '-')}", description=f"Evaluation of the {corpus} model")
    mlf = summary.get("mlflow") or {}
    create_markdown_artifact(
        f"# Samples: {corpus}\n\nModel: {params.train.cell} {params.train.layers}x{params.train.hidden}, "
        f"val_loss {metrics['val_loss']:.4f} nats/token; MLflow run `{mlf.get('run_id')}` "
        f"({mlf.get('registered') or 'not registered'})\n\n```text\n{text[:3000]}\n```\n",
        key=f"samples-{corpus.replace('_', '-')}",
        description=f"Samples from the {corpus} model",
    )
    return {"summary": {k: v for k, v in summary.items() if k != "train"}, "metrics": metrics}


def main(argv=None):
    from pipeline.errors import UserError

    ap = argparse.ArgumentParser(description="Run the train -> evaluate -> sample flow once, here.")
    ap.add_argument("--corpus", default="tinyshakespeare")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    a = ap.parse_args(argv)
    from pipeline.config import parse_sets

    try:
        charlm_pipeline(a.corpus, a.preset, parse_sets(a.set))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    main()
