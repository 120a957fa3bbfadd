"""A training's log kept to what a user can act on (no torch or Lightning import here: the
studies' stages that import it need not depend on the training code)."""
from __future__ import annotations

import logging
import warnings


class _NoAdvert(logging.Filter):
    """Lightning 2.6 prints an advertisement for a cloud logger at the start of every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


_NO_ADVERT = _NoAdvert()


def quiet_lightning() -> None:
    """Keep a training's log to what a user can act on: drop Lightning's cloud-logger
    advertisement and the deprecation warning its pytree code raises under torch >= 2.10
    (Lightning's code, not ours; nothing here to change). Lightning's own lines (devices,
    parameters, checkpoints) stay."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NO_ADVERT)  # once: addFilter skips a repeat
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
