"""The Prefect API a flow command will talk to, checked before any work: a server that is
down, or a PREFECT_API_URL that names no Prefect API, is one line, not Prefect's retries and
a traceback of 60 lines or more."""
from __future__ import annotations

import functools
import os
import sys

from pipeline.errors import TransientFailure, UserError, redact


def check_api(timeout: float = 10.0) -> None:
    """PREFECT_API_URL unset: the run starts a server of its own (nothing to check). Set: its
    /health must answer `true` (a login wall, 401/403, counts as an API: Prefect Cloud). Down
    or 5xx: a TransientFailure (exit 75: may pass by itself); anything else (the UI's address
    without /api, another service): a UserError (exit 2)."""
    import httpx
    from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, PREFECT_API_URL

    from pipeline.tracking import error_line

    url = PREFECT_API_URL.value()
    if not url:
        return
    fix = "start one (prefect server start --host 127.0.0.1), or point PREFECT_API_URL at one (its address ending in /api)"
    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=timeout, verify=not PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value())
    except httpx.HTTPError as e:
        raise TransientFailure(f"no Prefect API answers at {url} ({error_line(e, 160)}); {fix}") from None
    if r.status_code >= 500:
        raise TransientFailure(f"the Prefect API at {url} answers HTTP {r.status_code}; {fix}")
    if r.status_code in (401, 403):
        return
    try:
        ok = r.status_code == 200 and r.json() is True
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"PREFECT_API_URL {url} answers (HTTP {r.status_code}), but not as a Prefect API; "
                        "give the server's API address, ending in /api, e.g. http://127.0.0.1:4200/api")


_finished: set[str] = set()
_raised: dict[str, BaseException] = {}


def _flow_name() -> str:
    """The name of the flow whose body is running (Prefect's run context)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow.name if ctx else ""


def mark_finished() -> None:
    """Called in a flow's body once its own work is done: what follows only publishes to
    Prefect (artifacts, the final state), which a lost API stops."""
    _finished.add(_flow_name())


def watched(fn):
    """Decorator of a flow's body (under @flow): keeps the exception the body raised, if any,
    for run_here. When the body fails and the API is gone too, Prefect's attempt to record
    the failure raises httpx's error in its place; run_here then reports the body's own."""

    @functools.wraps(fn)
    def body(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            _raised[_flow_name()] = e
            raise

    return body


def _to_api(e: Exception, url: str) -> bool:
    """`e` (httpx's) was raised on a request to the API at `url` (scheme, host and port as
    httpx normalises them, the path under the API's)."""
    import httpx

    try:
        target = e.request.url  # httpx sets the request on every error it raises
    except (AttributeError, RuntimeError):
        return False
    base = httpx.URL(url)
    path = base.path.rstrip("/")
    return ((target.scheme, target.host, target.port) == (base.scheme, base.host, base.port)
            and (target.path == path or target.path.startswith(path + "/")))


def api_lost(e: BaseException, url: str | None, flow_name: str, left: str) -> TransientFailure | None:
    """The one-line failure for a network error `e` (httpx's TransportError: refused, reset,
    timed out) on a request to the API at `url`, saying whether the flow's body had finished
    (`left`: what it leaves behind); None for any other error (an HTTP answer of the API, an
    error not httpx's, a request elsewhere), which stays as it was."""
    import httpx

    from pipeline.tracking import error_line

    if not url or not isinstance(e, httpx.TransportError) or not _to_api(e, url):
        return None
    if flow_name in _finished:
        what = f"the flow's work had finished ({left}), but Prefect has not recorded its end (it shows the run as Running)"
    else:
        what = "the flow stopped there; what its tasks had finished is kept"
    return TransientFailure(f"the Prefect API at {url} stopped answering during the run ({error_line(e, 160)}); "
                            f"{what}; start the server again, then rerun")


def run_here(flow_obj, *args, left: str):
    """Run `flow_obj(*args)` in this process, the API checked before (check_api).

    The API can still stop answering during the run (the server stopped or restarted, its
    machine gone). The tasks go on (Prefect 3 reports their states as events, dropped with a
    warning); the flow's artifacts and its own state cannot be set, and Prefect's client
    retries for minutes, then raises httpx's error in two tracebacks and exit 1. That becomes
    one line and exit 75 (EX_TEMPFAIL, as a TransientFailure: a rerun once the server is back
    may pass), which says whether the flow's body had finished before the API was lost
    (`api_lost`).

    The process then ends at once (os._exit): Prefect's exit handlers would spend 7 s per
    unsent event failing to reach the API, with an ERROR line each, after the one line. Nothing
    is cut short: the tasks ran one after another and are over, their outputs written
    atomically and their MLflow runs ended; only atexit handlers are skipped (Prefect's, whose
    events cannot be sent). A caller of the flow command's main() in its own process ends too.
    If the body itself had failed (`watched`), its error is raised instead, as without the API."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    _finished.discard(flow_obj.name)
    _raised.pop(flow_obj.name, None)
    try:
        return flow_obj(*args)
    except Exception as e:
        lost = api_lost(e, url, flow_obj.name, left)
        if lost is None:
            raise
        own = _raised.get(flow_obj.name)
        if own is not None and own is not e and api_lost(own, url, flow_obj.name, left) is None:
            raise own from None  # the body failed of its own: its error (a UserError's one line), not the lost API's
        print(f"error: {redact(str(lost))}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(lost.exit_code)
