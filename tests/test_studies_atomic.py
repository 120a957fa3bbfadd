"""A study that fails half-way leaves the previous report as it was: the folder is replaced whole or not at all."""
from __future__ import annotations

import errno

import pytest

from tests.test_studies import params_for


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_failed_run_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    from studies import hello

    out = tmp_path / "reports/hello"
    hello.run(params_for(tmp_path, **{"tracking.enabled": False, "studies.hello.steps": 30}), out)
    before = _snapshot(out)
    assert set(before) == {"probabilities.csv", "probabilities.md", "hello.png", "result.json"}

    def disk_full(fig, path):  # the plot comes after the probability table: a disk that fills up there
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(hello, "save_png", disk_full)
    with pytest.raises(OSError, match="No space left"):
        hello.run(params_for(tmp_path, **{"tracking.enabled": False, "studies.hello.steps": 40}), out)  # other numbers than the report on disk
    assert _snapshot(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["hello"]  # the half-made folder is gone too

    monkeypatch.undo()
    (out / "stale.txt").write_text("from an older run\n")
    hello.run(params_for(tmp_path, **{"tracking.enabled": False, "studies.hello.steps": 40}), out)
    after = _snapshot(out)
    assert set(after) == set(before) and after["probabilities.csv"] != before["probabilities.csv"]  # replaced whole
