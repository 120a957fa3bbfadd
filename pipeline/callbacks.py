"""The train stage's Lightning callbacks that are not the model's: metrics to MLflow, and
the memory of an interrupt.

They live apart from pipeline/tracking.py so that the stages that only log files and
numbers to MLflow (evaluate, sample, the studies) do not import Lightning (about 3 s).
"""
from __future__ import annotations

import contextlib
import sys
import time

from lightning.pytorch.callbacks import Callback

from pipeline.tracking import hide_password


class MlflowCallback(Callback):
    """Metrics to an existing MLflow run, from global rank 0 only, in batches.

    Tracking never stops a training: when the store refuses a batch (after MLflow's own
    retries), one warning is printed, the metrics are kept, and only the end of training
    tries again. An interrupted or failed training still logs what it had (`on_exception`)."""

    def __init__(self, uri: str, run_id: str, log_every: int, flush_every: int = 50):
        self.uri, self.run_id, self.log_every, self.flush_every = uri, run_id, log_every, flush_every
        self._client = None
        self._pending = []  # (step, ms since the epoch, device tensor)
        self._metrics = []
        self.failed: str | None = None  # the first error of the store, once one was seen

    def _c(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(self.uri)
        return self._client

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        if trainer.is_global_zero and step % self.log_every == 0:
            self._pending.append((step, int(time.time() * 1000), outputs))  # the time of the step, not of the flush
            if len(self._pending) >= self.flush_every:
                self.flush()

    def on_validation_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        m = trainer.callback_metrics
        for k in ("val_loss", "val_bpc", "val_ppl"):
            if k in m:
                self._metrics.append(Metric(k, float(m[k]), now, trainer.global_step))
        self.flush()

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.flush(final=True)

    def on_exception(self, trainer, pl_module, exception):
        if trainer.is_global_zero:
            self.flush(final=True)  # Lightning ignores Ctrl-C while this runs: few retries matter here

    def flush(self, final: bool = False):
        """Send what is pending, without MLflow's minutes of retries: during training none
        (the points stay for a later flush), at the end (`final`) two, a few seconds apart.
        A dead store must not hold training, or Ctrl-C, for minutes. After a failure only the
        final flush tries again. A batch is put back on any failure or interrupt (the store
        drops a point it already holds, so a batch sent twice is not logged twice)."""
        from mlflow.entities import Metric

        from pipeline.tracking import error_line, few_retries

        for step, when, t in self._pending:
            self._metrics.append(Metric("train_loss", float(t["loss"] if isinstance(t, dict) else t), when, step))
        self._pending = []
        if self.failed and not final:
            return
        while self._metrics:
            batch, self._metrics = self._metrics[:900], self._metrics[900:]
            try:
                with few_retries(2 if final else 0):
                    self._c().log_batch(self.run_id, metrics=batch)
            except BaseException as e:  # the store is down or refuses: training goes on
                self._metrics = batch + self._metrics
                if not isinstance(e, Exception):
                    raise  # Ctrl-C, SIGTERM: on_exception sends the batch again
                first = self.failed is None
                self.failed = self.failed or error_line(e)
                if final:
                    print(f"warning: MLflow at {hide_password(self.uri)} refused the metrics ({self.failed}); "
                          f"{len(self._metrics)} points are not logged", file=sys.stderr)
                elif first:
                    print(f"warning: MLflow at {hide_password(self.uri)} refused the metrics ({self.failed}); training goes on, "
                          "and the end of training tries again", file=sys.stderr)
                return

    @property
    def unsent(self) -> int:
        """Metric points that never reached the store."""
        return len(self._metrics) + len(self._pending)


@contextlib.contextmanager
def interrupts_as_raised():
    """`with interrupts_as_raised() as keep:` around a Lightning fit given `keep` among its
    callbacks: Lightning's sys.exit(1) after Ctrl-C or SIGTERM becomes the interrupt again, so
    the command ends with the one line and the exit status (130, 143) every stage gives."""
    keep = KeepInterrupt()
    try:
        yield keep
    except SystemExit:
        if keep.interrupt is not None:
            raise keep.interrupt.with_traceback(None) from None
        raise


class KeepInterrupt(Callback):
    """Lightning answers Ctrl-C (or SIGTERM, which pipeline/errors.py raises as an interrupt)
    during fit with its own cleanup and then `sys.exit(1)`; this keeps the interrupt so that
    the stage can raise it again: its run is marked KILLED, and the one-line message and the
    exit code (130, 143) are the ones every stage gives."""

    def __init__(self):
        self.interrupt: KeyboardInterrupt | None = None

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, KeyboardInterrupt):
            self.interrupt = exception
