"""Prefect flow for the lecture's studies: each study a task calling the same function as its
DVC stage (studies/dvc.yaml), then the review page; tables and plots land in reports/.

    python -m flows.studies_flow --study hello --study vanishing
    python -m flows.studies_flow --preset full            # all studies, the GPU-sized preset

A Markdown artifact per study carries its main table into the Prefect UI; every study logs
to its own MLflow experiment (study-<name>).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

STUDIES = ("hello", "vanishing", "bptt", "variants", "generators", "captioning", "tasks")
TABLES = {"hello": "probabilities.md", "vanishing": "adding.md", "bptt": "tradeoff.md", "variants": "summary_jsb.md",
          "generators": "models.md", "captioning": "metrics.md", "tasks": "forecast.md"}


@task
def run_study(name: str, preset: str | None, params_path: str) -> str:
    import importlib

    from pipeline.config import load_params

    params = load_params(params_path, {"studies.preset": preset} if preset else None)
    importlib.import_module(f"studies.{name}").run(params)
    table = Path("reports") / name / TABLES[name]
    text = table.read_text() if table.is_file() else "(no table)"
    create_markdown_artifact(f"# Study: {name}\n\n{text}\n", key=f"study-{name}", description=f"The {name} study's table")
    return text


@task
def review() -> str:
    from studies.review import OUT, render

    from pipeline.atomic import write_text

    write_text(OUT, render())
    return str(OUT)


@flow(name="rnn-studies", log_prints=True)
def studies_flow(studies: list[str] | None = None, preset: str | None = None, params_path: str = "params.yaml") -> list[str]:
    chosen = list(studies or STUDIES)
    unknown = [s for s in chosen if s not in STUDIES]
    if unknown:
        raise ValueError(f"unknown studies {unknown}; choose from {', '.join(STUDIES)}")
    for name in chosen:
        run_study(name, preset, params_path)
    if set(chosen) == set(STUDIES) or all((Path("reports") / s / "result.json").is_file() for s in STUDIES):
        review()
    return chosen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", action="append", choices=STUDIES, help="repeatable; default all")
    ap.add_argument("--preset", default=None, help="studies preset, e.g. full")
    a = ap.parse_args(argv)
    studies_flow(a.study, a.preset)


if __name__ == "__main__":
    main()
