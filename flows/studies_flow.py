"""Prefect flow for the lecture's studies: each study a task calling the same function as its
DVC stage (studies/dvc.yaml), then the review page; tables and plots land in reports/.

    python -m flows.studies_flow --study hello --study vanishing
    python -m flows.studies_flow --preset full            # all studies, the GPU-sized preset

A Markdown artifact per study carries its main table into the Prefect UI; every study logs
to its own MLflow experiment (study-<name>). The flow prepares no data: the studies that
read a corpus (bptt, variants, variants_full_jsb, variants_chung, generators, tasks) need its stages run
first (`dvc repro onehot@<corpus>`), and say so in one line otherwise.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.api import check_api, mark_finished, run_here, watched
from flows.console import quiet_user_errors
from flows.pipeline_flow import artifact_key
from pipeline.errors import UserError, cli

# name -> (module in studies/, its params overrides, report folder, main table), as in studies/dvc.yaml
SPECS = {
    "hello": ("hello", {}, "hello", "probabilities.md"),
    "vanishing": ("vanishing", {}, "vanishing", "adding.md"),
    "bptt": ("bptt", {}, "bptt", "tradeoff.md"),
    "variants": ("variants", {}, "variants", "summary_jsb.md"),
    "variants_full_jsb": ("variants", {"studies.preset": "full", "studies.variants.tasks": ["jsb"],
                                       "studies.variants.variants": ["V", "GRU", "RNN"]}, "variants_full", "summary_jsb.md"),
    "variants_chung": ("variants", {"studies.preset": "full", "studies.variants.tasks": ["jsb"], "studies.variants.variants": ["V", "GRU", "RNN"],
                                    "studies.variants.width": "params"}, "variants_chung", "summary_jsb.md"),
    "generators": ("generators", {}, "generators", "models.md"),
    "captioning": ("captioning", {}, "captioning", "metrics.md"),
    "tasks": ("tasks", {}, "tasks", "forecast.md"),
}
STUDIES = tuple(SPECS)


def study_overrides(name: str, preset: str | None) -> dict:
    return {**({"studies.preset": preset} if preset else {}), **SPECS[name][1]}


@task
def run_study(name: str, preset: str | None, params_path: str) -> str:
    import importlib

    from pipeline.config import load_params

    module, _, folder, table_name = SPECS[name]
    out = Path("reports") / folder
    importlib.import_module(f"studies.{module}").run(load_params(params_path, study_overrides(name, preset)), out)
    table = out / table_name
    text = table.read_text() if table.is_file() else "(no table)"
    create_markdown_artifact(f"# Study: {name}\n\n{text}\n", key=artifact_key("study", name), description=f"The {name} study's table")
    return text


@task
def review() -> str:
    from studies.review import OUT, render

    from pipeline.atomic import write_text

    write_text(OUT, render())
    return str(OUT)


def check(studies: list[str], preset: str | None, params_path: str) -> None:
    """Unknown studies, a preset that params.yaml lacks, a study's bad settings: one line before
    any work (what a study checks only as it runs, against its data, comes later)."""
    import importlib

    from pipeline.config import load_params
    from studies.common import study_params

    unknown = [s for s in studies if s not in SPECS]
    if unknown:
        raise UserError(f"unknown studies {unknown}; choose from {', '.join(STUDIES)}")
    for name in studies:
        module = SPECS[name][0]
        cls = getattr(importlib.import_module(f"studies.{module}"), f"{module.capitalize()}Params")
        study_params(load_params(params_path, study_overrides(name, preset)), module, cls)


@flow(name="rnn-studies", log_prints=True)
@watched
def studies_flow(studies: list[str] | None = None, preset: str | None = None, params_path: str = "params.yaml") -> list[str]:
    quiet_user_errors()  # in the process that runs the flow: here, or a worker's
    chosen = list(studies or STUDIES)
    check(chosen, preset, params_path)
    for name in chosen:
        run_study(name, preset, params_path)
    if set(chosen) == set(STUDIES) or all((Path("reports") / SPECS[s][2] / "result.json").is_file() for s in STUDIES):
        review()
    mark_finished()
    return chosen


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--study", action="append", choices=STUDIES, help="repeatable; default all")
    ap.add_argument("--preset", default=None, help="studies preset, e.g. full")
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args(argv)
    check(a.study or list(STUDIES), a.preset, a.params)
    check_api()
    run_here(studies_flow, a.study, a.preset, a.params, left="the studies' reports under reports/, their runs in MLflow")


if __name__ == "__main__":
    main()
