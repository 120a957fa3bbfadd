"""Ctrl-C, SIGTERM and SIGKILL in the middle of a stage: one line, the right exit status,
no worker left running, no temporary left behind, the last complete output kept."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, ctrl_c_default

POOL = """
import sys, time
from pipeline.errors import cli
from pipeline.pools import stoppable_pool

@cli
def main(argv=None):
    with stoppable_pool(2, sys.argv[1]) as pool:
        futures = [pool.submit(time.sleep, 120) for _ in range(2)]
        time.sleep(0.5 if sys.argv[1] == "fork" else 3)  # spawned workers start a new interpreter first
        print(" ".join(map(str, pool._processes)), flush=True)
        for f in futures:
            f.result()

main()
"""

WRITER = """
import sys, time
from pathlib import Path
from pipeline.atomic import atomic_dir
from pipeline.errors import cli

@cli
def main(argv=None):
    with atomic_dir(Path(sys.argv[1])) as tmp:
        (tmp / "half.npy").write_bytes(b"x" * 1000)
        print(tmp, flush=True)
        time.sleep(120)

main()
"""


def start(code: str, *args, cwd=ROOT, script: Path | None = None):
    """Run `code` (written to `script` first if given: a spawned worker then imports it) in a
    new process group, with SIGINT at its default as under a terminal."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if script is not None:
        script.write_text(textwrap.dedent(code))
    cmd = [str(script)] if script is not None else ["-c", textwrap.dedent(code)]
    return subprocess.Popen(
        [sys.executable, *cmd, *map(str, args)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=ctrl_c_default,
    )


def stop_with(p, sig, group: bool = True) -> int:
    """Send `sig` to p's process group (Ctrl-C at a terminal) or to p alone (a plain `kill`);
    its exit status. The group is killed if p has not ended within 30 s."""
    (os.killpg if group else os.kill)(p.pid, sig)
    try:
        return p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def gone(pid: int, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("method", ["fork", "spawn"])  # fork: the data stages' scans; spawn: the studies' trials
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_pool_workers_stop_with_the_stage(how, method):
    """Ctrl-C reaches the whole process group; SIGTERM only the parent (a plain `kill`). Either
    way the stage exits with one line and its workers do not outlive it (they ignore Ctrl-C:
    a worker stopped inside the pool's queue lock used to hang the stage), nor does the stage
    wait for their running tasks (the studies' pools used to: minutes, for a trial)."""
    p = start(POOL, method)
    pids = [int(x) for x in p.stdout.readline().split()]
    assert len(pids) == 2
    rc = stop_with(p, signal.SIGINT) if how == "ctrl-c" else stop_with(p, signal.SIGTERM, group=False)
    err = p.stderr.read()
    assert rc == (130 if how == "ctrl-c" else 143), err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "dvc checkout" in err, err
    for pid in pids:
        assert gone(pid), f"worker {pid} outlived the stage"


EARLY = """
import sys, time
from pipeline.errors import cli
from pipeline.pools import stoppable_pool

if __name__ != "__main__":  # a spawned worker imports the parent's main file first: a study's imports torch
    time.sleep(3)

@cli
def main(argv=None):
    with stoppable_pool(2, "spawn") as pool:
        futures = [pool.submit(time.sleep, 120) for _ in range(2)]
        print(" ".join(map(str, pool._processes)), flush=True)
        try:
            for f in futures:
                f.result()
        except KeyboardInterrupt:
            time.sleep(1.5)  # a busy parent: what the workers print of their own Ctrl-C has time to show
            raise

if __name__ == "__main__":
    main()
"""

SCRATCH = """
import sys, tempfile, time
from pipeline.errors import cli
from pipeline.pools import stoppable_pool

@cli
def main(argv=None):
    with stoppable_pool(1, sys.argv[1]) as pool:
        print(pool.submit(tempfile.mkdtemp, prefix="trial-").result(), flush=True)  # a trial's checkpoint folder
        if sys.argv[2] == "stop":
            pool.submit(time.sleep, 120).result()

main()
"""


def test_ctrl_c_while_spawned_workers_start_prints_one_line(tmp_path):
    """A Ctrl-C in the first seconds of a study, while its spawned workers still import their
    modules (before they can ignore SIGINT), printed each worker's KeyboardInterrupt traceback
    under the stage's one error line. They now start with SIGINT blocked, and drop it."""
    p = start(EARLY, script=tmp_path / "early.py")
    pids = [int(x) for x in p.stdout.readline().split()]
    assert len(pids) == 2
    rc = stop_with(p, signal.SIGINT)  # the workers are in their 3 s import
    err = p.stderr.read()
    assert rc == 130, err
    assert len(err.splitlines()) == 1 and err.startswith("error: interrupted"), err
    for pid in pids:
        assert gone(pid), f"worker {pid} outlived the stage"


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("end", ["done", "stop"])
def test_pool_workers_temporaries_go_with_the_pool(method, end):
    """A worker's temporary files live in the pool's scratch folder, which the parent removes
    when the pool ends: a trial terminated inside its `TemporaryDirectory` (Ctrl-C) leaves no
    checkpoint folder behind in the system's temporary directory."""
    p = start(SCRATCH, method, end)
    made = Path(p.stdout.readline().strip())
    assert made.name.startswith("trial-") and made.parent.name.startswith("pool-"), made
    if end == "stop":
        assert made.is_dir()
        rc = stop_with(p, signal.SIGINT)
    else:
        rc = p.wait(timeout=30)
    assert rc == (130 if end == "stop" else 0), p.stderr.read()
    assert not made.exists() and not made.parent.exists()


def test_an_interrupted_pool_leaves_ctrl_c_unblocked():
    """submit() blocks SIGINT while it starts workers. A Ctrl-C that another thread takes can
    raise in the main thread before submit unblocks it again; the pool restores the mask it
    found, so the process can still be stopped with Ctrl-C (a flow or notebook that goes on)."""
    from pipeline.pools import stoppable_pool

    before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    assert signal.SIGINT not in before
    with pytest.raises(KeyboardInterrupt):
        with stoppable_pool(1, "spawn") as pool:
            assert pool.submit(abs, -3).result(timeout=60) == 3
            assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, ())  # submit unblocked it
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # as a submit cut short leaves it
            raise KeyboardInterrupt
    assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == before


def test_sigterm_removes_the_temporary_and_keeps_the_last_output(tmp_path):
    final = tmp_path / "tokens"
    final.mkdir()
    (final / "ids.npy").write_bytes(b"good")
    p = start(WRITER, final)
    tmp = Path(p.stdout.readline().strip())
    assert tmp.is_dir() and tmp.parent == tmp_path
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143
    assert not tmp.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tokens"] and (final / "ids.npy").read_bytes() == b"good"


def test_a_killed_writers_temporary_is_swept_by_the_next_writer(tmp_path):
    from pipeline.atomic import atomic_dir, atomic_path

    final = tmp_path / "tokens"
    p = start(WRITER, final)
    tmp = Path(p.stdout.readline().strip())
    p.kill()  # SIGKILL: no cleanup can run
    p.wait(timeout=30)
    assert tmp.is_dir()
    other = tmp_path / f".tokens.5.{os.getpid()}.abcdefgh.tmp"  # the live temporary of `tokens.5`: not ours
    other.mkdir()
    live = tmp_path / f".tokens.{os.getpid()}.abcdefgh.tmp"  # a live writer's (this process)
    live.mkdir()
    with atomic_dir(final) as t:
        (t / "ids.npy").write_bytes(b"new")
    assert not tmp.exists() and other.exists() and live.exists()
    assert (final / "ids.npy").read_bytes() == b"new"
    # files too: a killed writer's temporary file beside `final`
    f = tmp_path / "out.json"
    dead = _dead_pid()
    stale = tmp_path / f".out.json.{dead}.abcdefgh.tmp"
    stale.write_text("half")
    with atomic_path(f) as t:
        t.write_text("{}")
    assert not stale.exists() and f.read_text() == "{}"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


FIT = """
import time
import lightning as L
import torch
from pipeline.callbacks import interrupts_as_raised
from pipeline.errors import cli


class Slow(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def training_step(self, batch, i):
        if i == 0:
            print("training", flush=True)
        time.sleep(0.05)
        return self.w(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@cli
def main(argv=None):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4000, 2)), batch_size=2)
    with interrupts_as_raised() as keep:
        L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, callbacks=[keep]).fit(Slow(), data)

main()
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_lightning_fit_interrupted_ends_as_every_stage_does(sig, code):
    """The studies that train with Lightning (generators, captioning, bptt): Ctrl-C or SIGTERM
    ends them with the one line and 130 / 143, not Lightning's own exit 1."""
    p = start(FIT)
    assert p.stdout.readline().strip() == "training", p.stderr.read()[-2000:]
    assert stop_with(p, sig, group=sig == signal.SIGINT) == code
    err = p.stderr.read()
    assert len([l for l in err.splitlines() if l.startswith("error:")]) == 1 and "Traceback" not in err, err[-2000:]
