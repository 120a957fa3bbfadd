"""One-line errors for users: what went wrong and how to fix it, then a non-zero exit."""
from __future__ import annotations

import functools
import re
import signal
import sys
import threading

_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^\s:/]*:)[^\s@]+@")


def redact(text: str) -> str:
    """`text` with the password of every URI in it (scheme://user:password@host) as ***: the
    user may hold '@' (user@server), the password '/' (SQLAlchemy's parsing); a password with
    a space is left to `pipeline.tracking.hide_password`, which parses the URI itself."""
    return _PASSWORD.sub(r"\1***@", text)


class UserError(Exception):
    """A problem with the input (params, data, arguments) that the user can fix.

    The message is one line: the problem, then the fix. `cli` exits with `exit_code`.
    """

    exit_code = 2


class TransientFailure(UserError):
    """A failure that may pass by itself (the network, a busy server) and persisted through
    the retries here: exit code 75 (EX_TEMPFAIL of sysexits.h), so a scheduler knows that a
    later retry may succeed where a UserError (exit 2) needs the user's fix."""

    exit_code = 75
    retryable = True  # what a Prefect task's retry condition reads (flows/dvc_stage.py)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a plain `kill`, a timeout, a cancelled job), raised like Ctrl-C so that every
    `finally` runs: temporary outputs are removed and worker processes stopped."""


def _on_sigterm(signum, frame):
    raise Terminated()


def cli(main):
    """Wrap a `main(argv)` so a UserError prints `error: ...` on one line and exits with its
    `exit_code` (2; 75 for a TransientFailure), and Ctrl-C or SIGTERM print one line and exit
    130 or 143 after the cleanup has run."""

    @functools.wraps(main)
    def wrapper(argv=None):
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {redact(str(e))}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except KeyboardInterrupt as e:
            what, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
            print(
                f"error: {what}; a file or folder under its final name is the last complete one (under dvc repro, "
                "whose stage outputs are removed before the stage runs, `dvc checkout` brings the last ones back)",
                file=sys.stderr,
            )
            raise SystemExit(code) from None
        finally:
            if previous is not None:  # a caller in a long-lived process keeps its own handler
                signal.signal(signal.SIGTERM, previous)

    return wrapper
