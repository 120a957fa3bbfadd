"""`dvc repro` from a flow task: its failure as one line, and whether retrying may help.

A stage's module prints `error: <problem; fix>` and exits 2 when the user must fix
something (params, data), or 75 (EX_TEMPFAIL) when a transient failure (the network, a
busy server) outlasted its own retries. DVC adds `ERROR: failed to reproduce '<stage>':
failed to run: <cmd>, exited with <code>`. The flow retries a task only for the second kind
(and for DVC's lock held by another process); retrying a typo only delays its message.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.errors import TransientFailure, UserError

_EXITED = re.compile(r"exited with (-?\d+)")


class DvcFailed(UserError):
    """`dvc <args>` failed; `retryable` says whether running it again later may succeed."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.exit_code = TransientFailure.exit_code if retryable else UserError.exit_code

    def __reduce__(self):  # Prefect persists a failed run's exception: keep `retryable` through pickle
        return (type(self), (str(self), self.retryable))


class DvcCrashed(RuntimeError):
    """A stage died of a bug (a traceback, no `error:` line): not the user's input, not retried."""

    retryable = False


def failure(args: tuple[str, ...], returncode: int, stderr: str, stdout: str = "") -> Exception:
    """The exception for a failed `dvc <args>` run. A DvcFailed (one line) when the stage said
    what is wrong (`error: ...`, exit 2 or 75) or DVC did (its `ERROR` line, the stage exit code
    unknown); a DvcCrashed that keeps the end of stderr (the traceback) when the stage crashed."""
    lines = [l.strip() for l in (stderr + "\n" + stdout).splitlines() if l.strip()]
    stage = [l for l in lines if l.startswith("error: ")]
    dvc = [l for l in lines if l.startswith("ERROR")]
    code = next((int(m.group(1)) for l in reversed(dvc) if (m := _EXITED.search(l))), None)
    where = f"dvc {' '.join(args)}" + (f", stage exit {code}" if code is not None else "")
    if code is not None and not stage and code not in (UserError.exit_code, TransientFailure.exit_code):
        tail = "\n".join(stderr.rstrip().splitlines()[-40:])
        return DvcCrashed(f"{where}: the stage crashed; its output ends:\n{tail}")
    if stage:
        what = stage[-1][len("error: "):]
    elif dvc:
        what = dvc[-1].removeprefix("ERROR:").strip()
    else:
        what = lines[-1] if lines else f"exit code {returncode}"
    retryable = code == TransientFailure.exit_code or any("Unable to acquire lock" in l for l in dvc)
    return DvcFailed(f"{what} ({where})", retryable)


def run_dvc(*args: str) -> str:
    """Run `dvc <args>` here (the project root); stdout, or raise DvcFailed / DvcCrashed."""
    exe = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    try:
        p = subprocess.run([exe, *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise DvcFailed("dvc: not found on PATH nor beside this Python; install the project (make setup) or activate its venv") from None
    if p.returncode != 0:
        raise failure(args, p.returncode, p.stderr, p.stdout)
    return p.stdout


def _failure(state):
    """The exception of a failed task run's state, or None when it is not at hand."""
    if isinstance(state.data, BaseException):
        return state.data
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return None
    return exc if isinstance(exc, BaseException) else None


def retry_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only a failure that may pass by itself."""
    exc = _failure(state)
    if exc is None:  # the result is not at hand: keep the retry policy
        return True
    return getattr(exc, "retryable", not isinstance(exc, UserError))  # other surprises (an OSError...) retry


def retry_only_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn` for the in-process model tasks: retry a TransientFailure
    (a tracking store that does not answer) and nothing else; a crash in training would only
    train again to the same crash."""
    return bool(getattr(_failure(state), "retryable", False))
