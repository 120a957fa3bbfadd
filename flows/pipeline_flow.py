"""Prefect flow: data (via DVC) -> train -> evaluate -> sample, with artifacts.

    python -m flows.pipeline_flow --corpus tinyshakespeare --set train.max_steps=300

The tasks call the same functions as the DVC stages. Data preparation goes through
`dvc repro download@<corpus>` and `dvc repro onehot@<corpus>`, so DVC's caching rule
decides what reruns, and the data come from params.yaml whatever the flow is given: its
overrides may set train, sample, tracking and preset, not the data sections. Tasks retry,
with exponential back-off, only a failure that may pass by itself: the download stage's exit
75 (the network), not a bad URL or params (exit 2); and a tracking store that does not answer
in train, evaluate or sample (TransientFailure), never a crash of training. The
model stages write under outputs/flow/ (not the DVC-tracked models/, metrics/, samples/),
so a scheduled run never dirties the DVC workspace. Results: an MLflow run (and model
version) per flow run, a Markdown artifact with the samples and a table artifact with the
metrics in the Prefect UI.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from flows.api import check_api, mark_finished, run_here, watched
from flows.console import quiet_user_errors
from flows.dvc_stage import retry_only_transient, retry_transient, run_dvc
from pipeline.errors import UserError, cli

FLOW_OUT = Path("outputs/flow")
RETRY_BACKOFF_S = float(os.environ.get("FLOW_RETRY_BACKOFF_S", "10"))  # download retries after ~10, 20, 40 s
# What `dvc repro` prepares the data with comes from params.yaml here, whatever the flow is given.
DATA_SECTIONS = ("data", "corpora", "tokenize", "onehot")


def flow_params(params_path: str, preset: str | None, overrides: dict[str, Any] | None, cli: bool = False):
    """The params a flow run trains with: `params_path` with the preset and the overrides.
    A bad value is named as the user gave it: `--preset` / `--set key` on a command line
    (`cli`), the flow's `preset` / `overrides` parameter for a deployment's run."""
    from pipeline.config import PARAMS, load_params

    o = dict(overrides or {})
    bad = sorted(k for k in o if k.split(".")[0] in DATA_SECTIONS)
    if bad:
        raise UserError(
            f"overrides {', '.join(bad)}: the flow prepares data with `dvc repro`, which reads {PARAMS}; "
            "change them there, and keep overrides to train, sample, tracking and preset"
        )
    if preset:
        o["preset"] = preset
    def given_as(key: str) -> str:
        if key == "preset" and preset:
            return "--preset" if cli else "the preset parameter"
        return f"--set {key}" if cli else f"overrides {key}"

    params = load_params(params_path, o, given_as)
    if Path(params_path).resolve() != Path(PARAMS).resolve():
        if not Path(PARAMS).is_file():
            raise UserError(f"{PARAMS}: not found here; the flow prepares data with `dvc repro`, which reads it: run from the project root")
        project = load_params(PARAMS)
        differ = [s for s in DATA_SECTIONS if getattr(params, s) != getattr(project, s)]  # as parsed: defaults count
        if differ:
            raise UserError(
                f"{params_path}: {', '.join(differ)} differ from {PARAMS}, which `dvc repro` prepares the data with; "
                f"make them equal, or give the flow {PARAMS}"
            )
    return params


def check(corpus: str, params) -> None:
    """What would fail only after the data stages: a corpus that is not text, a missing GPU."""
    from pipeline.train import check_device

    c = params.corpus(corpus)
    if c.kind != "text":
        texts = ", ".join(k for k, v in params.corpora.items() if v.kind == "text")
        raise UserError(f"corpus {corpus!r} is {c.kind}, and the flow trains a character model of text; choose one of {texts}")
    check_device(params.train.accelerator)


def artifact_key(prefix: str, corpus: str) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes only."""
    return f"{prefix}-" + (re.sub(r"[^a-z0-9-]+", "-", corpus.lower()).strip("-") or "corpus")


# the DVC tasks: retried only when the failure may pass by itself (the network, DVC's lock held
# by another process), not for a bad URL or params
DVC_RETRIES = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=RETRY_BACKOFF_S), retry_jitter_factor=0.5,
                   retry_condition_fn=retry_transient)


@task(**DVC_RETRIES)
def download(corpus: str) -> str:
    """Fetch the corpus (DVC stage download@<corpus>); retried only when the failure may pass
    by itself (the network, after the stage's own retries), not for a bad URL or params."""
    return run_dvc("repro", f"download@{corpus}")


# train, evaluate, sample: retried only when the tracking store did not answer (TransientFailure,
# raised before training starts, or after evaluate/sample wrote their output)
MODEL_RETRIES = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=RETRY_BACKOFF_S), retry_jitter_factor=0.5,
                     retry_condition_fn=retry_only_transient)


@task(**DVC_RETRIES)
def prepare(corpus: str) -> str:
    """Tokenize and one-hot encode (DVC stages tokenize@, onehot@), cached by DVC; retried as
    download is (DVC's lock held by a `dvc repro` of the user's)."""
    return run_dvc("repro", f"onehot@{corpus}")


@task(**MODEL_RETRIES)
def train(corpus: str, params) -> dict:
    from pipeline.train import train as run

    return run(corpus, params, FLOW_OUT / "models", FLOW_OUT / "plots")


@task(**MODEL_RETRIES)
def evaluate(corpus: str, params) -> dict:
    from pipeline.evaluate import evaluate as run

    return run(corpus, params, FLOW_OUT / "models", FLOW_OUT / "metrics")


@task(**MODEL_RETRIES)
def sample(corpus: str, params) -> str:
    from pipeline.sample import sample as run

    return run(corpus, params, FLOW_OUT / "models", FLOW_OUT / "samples").read_text(encoding="utf-8")


@flow(name="charlm-pipeline", log_prints=True)
@watched
def charlm_pipeline(
    corpus: str = "tinyshakespeare",
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    params_path: str = "params.yaml",
) -> dict:
    """Train, evaluate and sample a character language model on `corpus`.

    overrides: params as {"section.key": value}, e.g. {"train.cell": "gru", "train.max_steps": 300}.
    """
    quiet_user_errors()  # in the process that runs the flow: here, a served deployment's or a worker's
    logger = get_run_logger()
    params = flow_params(params_path, preset, overrides)
    check(corpus, params)  # fail before any work
    download(corpus)
    prepare(corpus)
    summary = train(corpus, params)
    metrics = evaluate(corpus, params)
    text = sample(corpus, params)
    mark_finished()  # what follows only publishes to Prefect
    logger.info("val_loss %.4f nats/token after %d steps", metrics["val_loss"], summary["steps"])
    rows = [{"metric": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float))]
    rows.append({"metric": "best_val_loss (training)", "value": summary["best_val_loss"]})
    create_table_artifact(rows, key=artifact_key("metrics", corpus), description=f"Evaluation of the {corpus} model")
    mlf = summary.get("mlflow") or {}
    create_markdown_artifact(
        f"# Samples: {corpus}\n\nModel: {params.train.cell} {params.train.layers}x{params.train.hidden}, "
        f"val_loss {metrics['val_loss']:.4f} nats/token; MLflow run `{mlf.get('run_id')}` "
        f"({mlf.get('registered') or 'not registered'})\n\n```text\n{text[:3000]}\n```\n",
        key=artifact_key("samples", corpus),
        description=f"Samples from the {corpus} model",
    )
    return {"summary": {k: v for k, v in summary.items() if k != "train"}, "metrics": metrics}


@cli
def main(argv=None):
    from pipeline.config import parse_sets

    ap = argparse.ArgumentParser(description="Run the train -> evaluate -> sample flow once, here.")
    ap.add_argument("--corpus", default="tinyshakespeare")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--params", default="params.yaml", help="its data sections must equal params.yaml's (dvc repro reads that)")
    a = ap.parse_args(argv)
    overrides = parse_sets(a.set)
    check(a.corpus, flow_params(a.params, a.preset, overrides, cli=True))  # one line now, not after the flow's start-up
    check_api()
    run_here(charlm_pipeline, a.corpus, a.preset, overrides, a.params,
             left=f"the model, metrics and sample under {FLOW_OUT}/, the run in MLflow")


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    main()
