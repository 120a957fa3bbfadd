"""Process pools that stop with their parent: Ctrl-C, SIGTERM or an error in the parent ends
the workers at once, instead of waiting for their running tasks (a study's trial can run for
minutes)."""
from __future__ import annotations

import contextlib
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor


def _worker_signals() -> None:
    """Workers leave Ctrl-C to the parent (a worker stopped inside the pool's queue lock hangs
    the pool) and die at once on SIGTERM, which the parent sends when it stops early."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def stoppable_pool(n: int, method: str = "fork"):
    """A pool of `n` worker processes started by `method` ("fork" or "spawn") that does not
    outlive an interrupted or failed parent: on any exception in the block its workers are
    terminated and its queued tasks cancelled, then the exception goes on."""
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method), initializer=_worker_signals)
    try:
        yield pool
    except BaseException:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
