"""One-line errors for users: what went wrong and how to fix it, then a non-zero exit."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem with the input (params, data, arguments) that the user can fix.

    The message is one line: the problem, then the fix.
    """


def cli(main):
    """Wrap a `main(argv)` so a UserError prints `error: ...` on one line and exits 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("error: interrupted; outputs under their final names are untouched", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
