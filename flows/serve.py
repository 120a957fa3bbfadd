"""Serve the pipeline flow as a scheduled deployment (a long-running process).

    python -m flows.serve                                  # nightly at 03:00 UTC
    python -m flows.serve --cron "*/30 * * * *" --name charlm-half-hourly --set train.max_steps=300

The process registers the deployment `charlm-pipeline/<name>` (default `charlm-served`) with
the Prefect API (PREFECT_API_URL; `prefect server start` or Prefect Cloud), then polls for
its scheduled and manually triggered runs (`prefect deployment run charlm-pipeline/<name>`)
and runs each in a subprocess here. For a work pool instead of this process, see
prefect.yaml; its deployments have other names, so the two routes never overwrite each
other's deployment, but serve one or the other: both schedules would train at once.
The corpus, preset and overrides are checked here, before anything is registered.
"""
from __future__ import annotations

import argparse

from flows.api import check_api
from flows.pipeline_flow import charlm_pipeline, check, flow_params
from pipeline.errors import UserError, cli


def cron_schedule(cron: str) -> str | None:
    """`cron` if Prefect accepts it ('' for no schedule -> None); else a one-line UserError."""
    if not cron:
        return None
    from prefect.client.schemas.schedules import CronSchedule

    bad = f"--cron {cron!r}: not a cron schedule; give five fields, e.g. '0 3 * * *' (03:00 UTC daily)"
    if not cron.startswith("@") and len(cron.split()) != 5:  # croniter reads a sixth field as seconds: every second
        raise UserError(bad)
    try:
        CronSchedule(cron=cron, timezone="UTC")
    except ValueError:
        raise UserError(bad) from None
    return cron


def check_name(name: str) -> str:
    """A deployment name Prefect serves: not empty (it would take the flow's name), no '/' or '%'."""
    if not name.strip() or any(c in name for c in "/%"):
        raise UserError(f"--name {name!r}: a deployment name must be non-empty, without '/' or '%', e.g. charlm-served")
    return name


@cli
def main(argv=None):
    from pipeline.config import parse_sets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="charlm-served")
    ap.add_argument("--cron", default="0 3 * * *", help="cron schedule (UTC); '' for no schedule")
    ap.add_argument("--corpus", default="tinyshakespeare")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--limit", type=int, default=1, help="flow runs at once (they share outputs/flow/: keep 1)")
    a = ap.parse_args(argv)
    if a.limit < 1:
        raise UserError(f"--limit must be >= 1, got {a.limit}")
    check_name(a.name)
    cron = cron_schedule(a.cron)
    overrides = parse_sets(a.set)
    check(a.corpus, flow_params("params.yaml", a.preset, overrides, cli=True))
    check_api()
    charlm_pipeline.serve(
        name=a.name,
        cron=cron,
        parameters={"corpus": a.corpus, "preset": a.preset, "overrides": overrides},
        limit=a.limit,
        tags=["charlm", a.corpus],
        description="Nightly: data (DVC) -> train -> evaluate -> sample, tracked in MLflow",
    )


if __name__ == "__main__":
    main()
