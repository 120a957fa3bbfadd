"""The Prefect API a flow command will talk to, checked before any work: a server that is
down, or a PREFECT_API_URL that names no Prefect API, is one line, not Prefect's retries and
a traceback of 60 lines or more."""
from __future__ import annotations

from pipeline.errors import TransientFailure, UserError


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
