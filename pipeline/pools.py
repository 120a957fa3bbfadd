"""Process pools that stop with their parent: Ctrl-C, SIGTERM or an error in the parent ends
the workers at once, instead of waiting for their running tasks (a study's trial can run for
minutes), and leaves none of their temporary files behind."""
from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import signal
import tempfile
from concurrent.futures import ProcessPoolExecutor


def _worker_setup(scratch: str) -> None:
    """Workers leave Ctrl-C to the parent (a worker stopped inside the pool's queue lock hangs
    the pool) and die at once on SIGTERM, which the parent sends when it stops early. Their
    temporary files go to the pool's scratch folder, which the parent removes, so a worker
    killed inside a `TemporaryDirectory` leaves nothing behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since the parent started it (below)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    tempfile.tempdir = scratch


class _Pool(ProcessPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):
        """Workers start inside submit. They start with Ctrl-C blocked, so that one pressed while a
        spawned worker still imports its modules (seconds, before `_worker_setup` runs) stays
        pending there and is dropped, instead of printing the worker's traceback. In the parent
        it is only held for the call, then raised as usual."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # the mask as it is: nothing changed if this raises
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            return super().submit(fn, *args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # sets it, then raises the Ctrl-C it held, if any


@contextlib.contextmanager
def stoppable_pool(n: int, method: str = "fork"):
    """A pool of `n` worker processes started by `method` ("fork" or "spawn") that does not
    outlive an interrupted or failed parent: on any exception in the block its workers are
    terminated and its queued tasks cancelled, then the exception goes on. Either way the
    workers' temporary files are removed when the block ends."""
    entry_mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    scratch = tempfile.mkdtemp(prefix="pool-")
    try:
        pool = _Pool(n, mp_context=multiprocessing.get_context(method), initializer=_worker_setup, initargs=(scratch,))
        try:
            yield pool
        except BaseException:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        # a Ctrl-C taken by another thread can raise in the main thread anywhere, even inside
        # submit's `finally` before it unblocks SIGINT: the pool never leaves Ctrl-C blocked
        signal.pthread_sigmask(signal.SIG_SETMASK, entry_mask)
