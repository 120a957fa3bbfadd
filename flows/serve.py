"""Serve the pipeline flow as a scheduled deployment (a long-running process).

    python -m flows.serve                                  # nightly at 03:00 UTC
    python -m flows.serve --cron "*/30 * * * *" --name charlm-half-hourly --set train.max_steps=300

The process registers the deployment `charlm-pipeline/<name>` with the Prefect API
(PREFECT_API_URL; `prefect server start` or Prefect Cloud), then polls for its scheduled
and manually triggered runs (`prefect deployment run charlm-pipeline/<name>`) and runs
each in a subprocess here. For a work pool instead of this process, see prefect.yaml.
"""
from __future__ import annotations

import argparse

from flows.pipeline_flow import charlm_pipeline


def main(argv=None):
    from pipeline.config import parse_sets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="charlm-nightly")
    ap.add_argument("--cron", default="0 3 * * *", help="cron schedule (UTC); '' for no schedule")
    ap.add_argument("--corpus", default="tinyshakespeare")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--limit", type=int, default=1, help="flow runs at once")
    a = ap.parse_args(argv)
    charlm_pipeline.serve(
        name=a.name,
        cron=a.cron or None,
        parameters={"corpus": a.corpus, "preset": a.preset, "overrides": parse_sets(a.set)},
        limit=a.limit,
        tags=["charlm", a.corpus],
        description="Nightly: data (DVC) -> train -> evaluate -> sample, tracked in MLflow",
    )


if __name__ == "__main__":
    main()
