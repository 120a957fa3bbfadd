"""Atomic writes: a file appears under its final name complete, or not at all.

Each writer makes a temporary sibling (same folder, so the rename stays on one file
system), fills it, flushes it, and renames it over the final name. On any error the
temporary is removed and an earlier good output is left as it was; the temporaries of a
process killed outright are removed by the next writer of the same output.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


_TEMP_TAIL = re.compile(r"(\d+)\.[a-z0-9_]{8}(?:\.[A-Za-z0-9]+)?\.tmp")  # <pid>.<mkstemp's 8>[.suffix].tmp


def _prefix(final: Path) -> str:
    """Temporaries of `final` are named .<name>.<pid>.<random>.tmp: the pid tells a live writer's
    from one a killed process (SIGKILL, power loss) left behind."""
    return f".{final.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(final: Path) -> list[Path]:
    """Remove the temporaries of `final` left by processes that no longer run; return them."""
    gone = []
    for p in final.parent.glob(f".{glob.escape(final.name)}.*.*.tmp"):
        m = _TEMP_TAIL.fullmatch(p.name[len(final.name) + 2 :])  # not the temporaries of `<name>.5` and the like
        if m and not _alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
    return gone


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `final`; on success rename it to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep(final)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(final), suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temporary folder beside `final`; on success it replaces `final` whole."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep(final)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(final), suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(final, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(final, obj) -> None:
    write_text(final, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
