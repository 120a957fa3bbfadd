"""Keep a UserError's traceback off the console of a flow run.

Prefect logs a failed task or flow with its traceback (`logger.exception`). For a UserError
(bad params, a failed stage whose own one-line error says what to fix) that buries the one
line that matters: the command prints it last (`error: ...`), and a served or worker run's
state message carries it (`Flow run encountered an exception: ...`). The records still reach the
Prefect API, so the UI keeps the whole story; only the console handlers drop them.
"""
from __future__ import annotations

import logging

from pipeline.errors import UserError


class DropUserErrorTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, UserError)


def quiet_user_errors() -> None:
    """Add the filter to the root logger's handlers (Prefect's console handler lives there)."""
    for h in logging.getLogger().handlers:
        if not any(isinstance(f, DropUserErrorTracebacks) for f in h.filters):
            h.addFilter(DropUserErrorTracebacks())
