"""Keep a UserError's traceback off the console of a flow run.

Prefect logs a failed task or flow with its traceback (`logger.exception`). For a UserError
(bad params, a failed stage whose own one-line error says what to fix) that buries the one
line that matters: the command prints it last (`error: ...`), and a served or worker run's
state message carries it (`Flow run encountered an exception: ...`). Prefect's console
handler prints such a record without its traceback; the record reaches the Prefect API first
(the run loggers' own handler), so the UI keeps the whole story.
"""
from __future__ import annotations

import logging

import httpx

from pipeline.errors import UserError


class DropUserErrorTracebacks(logging.Filter):
    """Keeps the record, drops the traceback of a UserError from it, and that of a network
    error (httpx's TransportError: the Prefect API lost during a run, which the command then
    reports in one line; 60 lines of httpx's frames say no more than the record's message)."""

    def filter(self, record: logging.LogRecord) -> bool:  # every log record passes here
        if record.exc_info and isinstance(record.exc_info[1], (UserError, httpx.TransportError)):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_errors() -> None:
    """Add the filter to Prefect's console handlers on the root logger (once each)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for h in logging.getLogger().handlers:
        if isinstance(h, PrefectConsoleHandler) and not any(isinstance(f, DropUserErrorTracebacks) for f in h.filters):
            h.addFilter(DropUserErrorTracebacks())
