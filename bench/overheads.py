"""Benchmark: what MLflow tracking and the Prefect flow add to a training run, in seconds.

    python bench/overheads.py [--steps 60]

In a tiny project made as the tests make theirs (tests/pipeline_project.py: git + DVC in a
temporary folder, a 40,000-character corpus from an offline mirror folder, a 1x32 LSTM
trained for --steps steps), the data stages run once, then, each a fresh process as a user runs it:

- baseline: the three model stages bare, `python -m pipeline.train|evaluate|sample tiny`,
  train with `tracking.enabled=false` (MLflow not imported; evaluate and sample then have no
  run to log to, and skip it), best of two;
- the same with MLflow tracking on a sqlite store: the first run (the store is created)
  and the second;
- the Prefect flow `python -m flows.pipeline_flow --corpus tiny` (data tasks through
  `dvc repro`, then train, evaluate and sample in one process), tracking off: in ephemeral
  mode the first time (a fresh PREFECT_HOME) and again, then against a `prefect server` on
  127.0.0.1 (its start-up not counted), best of two; and the flow with tracking on, against
  the server, best of two (each checked to have logged its MLflow run);
- what ../shared/ANCHORS.md measured, in this run: cold `import` of torch, lightning,
  mlflow, prefect; a trivial Prefect flow in ephemeral mode; an MLflow run with one metric.

Every figure is wall-clock seconds on this machine, the added seconds against the baseline
of the same run. Only PREFECT_* and MLFLOW_* variables that the benchmark sets reach its
processes, so it touches no store or server of the user's. Prints a table; writes bench/out/overheads.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.out_json import out_dir, save  # noqa: E402

OUT = out_dir()

TRIVIAL_FLOW = "from prefect import flow\n@flow\ndef f():\n    return 1\nf()\n"
TRIVIAL_MLFLOW = (
    "import sys, mlflow\nmlflow.set_tracking_uri(sys.argv[1])\n"
    "with mlflow.start_run():\n    mlflow.log_metric('m', 1.0)\n"
)


def timed(argv: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(map(str, argv))} failed:\n{p.stderr[-3000:]}")
    return dt


STAGES = ("train", "evaluate", "sample")


def stages(proj: Path, env: dict, sets: list[str]) -> dict[str, float]:
    """The three model stages, each its own process, as `dvc repro` runs them: seconds each."""
    out = {}
    for stage in STAGES:
        extra = [a for s in sets for a in ("--set", s)] if stage == "train" else []
        out[stage] = timed([sys.executable, "-m", f"pipeline.{stage}", "tiny", *extra], proj, env)
    return out


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server(home: Path, env: dict):
    """A `prefect server` on 127.0.0.1 for this run: (process, API URL); stopped if it fails to start."""
    from tests.conftest import free_port, wait_http

    port = free_port()
    e = dict(env, PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    with open(home.parent / "server.log", "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=e, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{url}/health", proc, 180, "prefect server")
    except BaseException:
        stop(proc)
        raise
    return proc, url


def tracked_flow(flow: list[str], proj: Path, env: dict) -> float:
    """The flow with tracking, checked to have logged its run."""
    run_json = proj / "outputs/flow/models/tiny/run.json"
    run_json.unlink(missing_ok=True)
    dt = timed(flow, proj, env)
    if not (json.loads(run_json.read_text()).get("mlflow") or {}).get("run_id"):
        raise SystemExit("error: the flow with tracking logged no MLflow run; the figure would be wrong")
    return dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="training steps of the tiny model")
    a = ap.parse_args(argv)
    if a.steps < 1:
        print(f"error: --steps must be >= 1, got {a.steps}", file=sys.stderr)
        raise SystemExit(2)
    from tests.pipeline_project import tiny_project

    r: dict[str, float] = {}
    per: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        proj, penv = tiny_project(tmp, max_steps=a.steps, val_every=a.steps)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env.update(penv, PYTHONPATH=str(proj), PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
        env.pop("MLFLOW_TRACKING_URI")
        env_track = dict(env, MLFLOW_TRACKING_URI=penv["MLFLOW_TRACKING_URI"])
        dvc = str(Path(sys.executable).parent / "dvc")
        timed([dvc, "repro", "onehot@tiny"], proj, env)  # the data, once, not counted

        for mod in ("torch", "lightning", "mlflow", "prefect"):
            r[f"import {mod}"] = min(timed([sys.executable, "-c", f"import {mod}"], proj, env) for _ in range(2))
        per["baseline"] = min((stages(proj, env, ["tracking.enabled=false"]) for _ in range(2)), key=lambda d: sum(d.values()))
        per["tracking, first run"] = stages(proj, env_track, [])
        per["tracking, again"] = stages(proj, env_track, [])
        for k, d in per.items():
            r[k] = sum(d.values())
        (tmp / "mlflow-anchor").mkdir()
        anchor_uri = f"sqlite:///{tmp / 'mlflow-anchor' / 'mlflow.db'}"
        r["anchor: MLflow run, one metric, first"] = timed([sys.executable, "-c", TRIVIAL_MLFLOW, anchor_uri], proj, env)
        r["anchor: MLflow run, one metric, again"] = timed([sys.executable, "-c", TRIVIAL_MLFLOW, anchor_uri], proj, env)

        flow = [sys.executable, "-m", "flows.pipeline_flow", "--corpus", "tiny"]
        eph = dict(env, PREFECT_HOME=str(tmp / "prefect-ephemeral"))
        r["flow, ephemeral, first"] = timed([*flow, "--set", "tracking.enabled=false"], proj, eph)
        r["flow, ephemeral, again"] = timed([*flow, "--set", "tracking.enabled=false"], proj, eph)
        eph2 = dict(env, PREFECT_HOME=str(tmp / "prefect-anchor"))
        r["anchor: trivial flow, ephemeral, first"] = timed([sys.executable, "-c", TRIVIAL_FLOW], proj, eph2)
        r["anchor: trivial flow, ephemeral, again"] = timed([sys.executable, "-c", TRIVIAL_FLOW], proj, eph2)
        (tmp / "prefect-server").mkdir()
        server, url = start_server(tmp / "prefect-server" / "home", env)
        try:
            srv = dict(env, PREFECT_API_URL=url, PREFECT_HOME=str(tmp / "prefect-client"))
            r["flow, server"] = min(timed([*flow, "--set", "tracking.enabled=false"], proj, srv) for _ in range(2))
            r["flow + tracking, server"] = min(tracked_flow(flow, proj, dict(srv, MLFLOW_TRACKING_URI=penv["MLFLOW_TRACKING_URI"])) for _ in range(2))
            r["anchor: trivial flow, server"] = timed([sys.executable, "-c", TRIVIAL_FLOW], proj, srv)
        finally:
            stop(server)

    base = r["baseline"]
    rows = [("the three model stages bare, tracking off (baseline, best of 2)", base, None)]
    labels = {"flow, ephemeral, first": "flow, ephemeral, first (its data tasks: two no-op `dvc repro`)",
              "flow, server": "flow, server, best of 2 (train, evaluate, sample in one process)",
              "flow + tracking, server": "flow + tracking, server, best of 2"}
    for key in ("tracking, first run", "tracking, again", "flow, ephemeral, first", "flow, ephemeral, again", "flow, server", "flow + tracking, server"):
        rows.append((labels.get(key, key), r[key], r[key] - base))
    added = {st: per["tracking, again"][st] - per["baseline"][st] for st in STAGES}
    rows.insert(3, ("  of which train / evaluate / sample", None, " / ".join(f"{added[st]:+.1f}" for st in STAGES)))
    anchors = [k for k in r if k.startswith(("anchor", "import"))]
    print(f"| {a.steps} steps of a 1x32 LSTM, each figure a fresh process | seconds | added to the baseline |")
    print("|---|---:|---:|")
    for name, sec, more in rows:
        more = "" if more is None else more if isinstance(more, str) else f"{more:+.1f}"
        print(f"| {name} | {'' if sec is None else f'{sec:.1f}'} | {more} |")
    print("\n| what ../shared/ANCHORS.md measured, measured in this run | seconds |\n|---|---:|")
    for k in anchors:
        print(f"| {k} | {r[k]:.1f} |")
    save("overheads.json", {"steps": a.steps, "seconds": r, "per_stage": per, "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
