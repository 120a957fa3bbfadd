"""The CPU benchmarks of bench/ run end to end in their quick forms, on a tiny corpus: a
benchmark that nobody runs rots (bench/data_stages.py failed for weeks after params.yaml's
checks grew, and nothing said so). Each writes its JSON to BENCH_OUT, never over the
user's bench/out. The figures of a quick run mean nothing; what is checked is that the
script runs, prints its table and writes results that hold together."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import PY, ROOT


def bench(script: str, *args, out, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENCH_OUT": str(out)}
    return subprocess.run([PY, str(ROOT / "bench" / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ran(p: subprocess.CompletedProcess, out, name: str) -> dict:
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "|---" in p.stdout, p.stdout[-2000:]  # the table
    return json.loads((out / name).read_text())


@pytest.mark.parametrize("script, args, name", [
    ("train_step.py", ["--quick", "--data", "{corpus}"], "train_step_cpu.json"),
    ("time_budget.py", ["--quick", "--data", "{corpus}"], "time_budget_cpu.json"),
    ("regularizers.py", ["--quick", "--data", "{corpus}"], "regularizers_cpu.json"),
])
def test_training_benchmarks_run(script, args, name, corpus, tmp_path):
    users = ROOT / "bench/out" / name
    before = users.stat().st_mtime_ns if users.exists() else None
    res = ran(bench(script, *[a.format(corpus=corpus) for a in args], out=tmp_path), tmp_path, name)
    if script == "train_step.py":
        assert res["plain_chars_per_s"] > 0 and res["project_chars_per_s"] > 0
        assert res["ratio_project_to_plain"] == pytest.approx(res["project_chars_per_s"] / res["plain_chars_per_s"], rel=0.01)
    elif script == "time_budget.py":  # the time-budgeted runs stop by the clock, near their budget
        assert all(0 < res[k]["train_s"] <= res["seconds"] * 1.5 for k in ("cut", "budget", "wsd"))
    else:  # every regulariser run learned something
        assert all(r["best_val_loss"] < r["curve"][0][1] for r in res["runs"].values())
    assert (users.stat().st_mtime_ns if users.exists() else None) == before  # the user's results untouched


def test_cell_speed_checks_every_cell_against_the_autograd_loop(tmp_path):
    res = ran(bench("cell_speed.py", "--quick", "--rounds", "1", out=tmp_path), tmp_path, "cell_speed_cpu.json")
    diffs = res["max_abs_diff_to_loop"]
    assert {"lstm", "lstm-v", "lstm-fgr", "gru-lecture"} <= set(diffs)
    assert max(diffs.values()) < 1e-4, diffs


def test_graph_fit_trains_the_same_without_a_gpu(corpus, tmp_path):
    """On a CPU there are no CUDA graphs: both runs take the same path, to the same loss."""
    res = ran(bench("graph_fit.py", "--quick", "--data", corpus, out=tmp_path), tmp_path, "graph_fit_cpu.json")
    assert res["val_loss_difference"] == 0.0 and res["runs"]["0"]["val_loss"] > 0


def test_sample_and_bf16_benchmarks_run(tmp_path):
    res = ran(bench("sample_speed.py", "--length", 20, out=tmp_path), tmp_path, "sample_cpu.json")
    b1 = res["batch1"]
    assert b1["fast_chars_per_s"] > 0 and b1["eager_no_onednn_chars_per_s"] > 0  # both baselines on a CPU
    res = ran(bench("bf16_cpu.py", "--repeats", 1, out=tmp_path), tmp_path, "bf16_cpu.json")
    assert res["auto_takes"] in ("32-true", "bf16-mixed") and res["rows"]


def test_data_stages_benchmark_runs_and_names_a_missing_source(tmp_path):
    src = tmp_path / "src.c"
    src.write_text("int main(void) { return 0; }\n" * 200)
    work = tmp_path / "work"
    res = ran(bench("data_stages.py", "--gb", 0.0002, "--source", src, "--work", work, "--no-dvc", out=tmp_path),
              tmp_path, "data_stages.json")
    n = len(src.read_text())
    assert res["tokens"] == -(-200_000 // n) * n  # whole copies of the source up to the size asked for
    assert res["vocab"] == len(set(src.read_text()))  # char level: one id per distinct character
    assert res["noop_dvc_repro_s"] is None
    assert not (work / "data/tokens").exists() and not (work / "data/onehot").exists()  # removed without --keep
    p = bench("data_stages.py", "--source", tmp_path / "missing.txt", out=tmp_path)
    assert p.returncode != 0 and p.stderr.strip().startswith("error: ") and "missing.txt" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_failing_stage_is_one_line(tmp_path):
    """A stage the benchmark starts that fails (here: a corpus with invalid UTF-8 under
    tokenize.errors: strict) is one line naming the stage and its own error."""
    src = tmp_path / "bad.txt"
    src.write_bytes(b"ok text\n\xff\xfe broken\n" * 100)
    p = bench("data_stages.py", "--gb", 0.0001, "--source", src, "--work", tmp_path / "w", "--no-dvc", out=tmp_path)
    assert p.returncode != 0, p.stdout
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "pipeline.tokenize big" in err and "UTF-8" in err, err


@pytest.mark.slow
def test_overheads_benchmark_runs(tmp_path):
    """About 4 minutes (MLflow stores, Prefect in ephemeral mode and as a server): `make test-all`."""
    res = ran(bench("overheads.py", "--steps", 5, out=tmp_path, timeout=1200), tmp_path, "overheads.json")
    sec = res["seconds"]
    assert sec["baseline"] > 0 and sec["tracking, again"] > 0
    assert set(res["per_stage"]["baseline"]) == {"train", "evaluate", "sample"}
