"""Shared fixtures: a real HTTP server on 127.0.0.1, a real git+DVC project in tmp_path."""
from __future__ import annotations

import atexit
import contextlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tests choose their own MLflow stores and Prefect homes: never the project's (which the
# Makefile exports for `make run`).
for _var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "CORPUS_MIRROR"):
    os.environ.pop(_var, None)
# The LSTM CPU kernels compile into a folder of this test run, not the user's cache.
os.environ["LSTM_CPU_CACHE"] = tempfile.mkdtemp(prefix="lstm_cpu_cache_")
atexit.register(shutil.rmtree, os.environ["LSTM_CPU_CACHE"], True)
SHARED_CORPORA = ROOT.parent / "shared" / "corpora"
PY = sys.executable


def ctrl_c_default() -> None:
    """`preexec_fn` for a child that a test sends Ctrl-C: SIGINT at its default, as under a
    terminal. A process started in the background by a shell without job control (`cmd &`
    in a script, some CI runners) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt, so the Ctrl-C tests would measure the launcher, not the code."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_module(module: str, *args, cwd=ROOT, env=None, check=False, timeout=600):
    """Run `python -m module args` like a user; return CompletedProcess (text)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("CORPUS_MIRROR", None)
    if env:
        e.update(env)
    p = subprocess.run([PY, "-m", module, *map(str, args)], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def one_line_error(p) -> str:
    """Assert a failed run printed exactly one `error:` line and return it."""
    assert p.returncode != 0, f"expected failure, got 0:\n{p.stdout}\n{p.stderr}"
    lines = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    return lines[0]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves files from `root` with Range support; special paths misbehave on purpose.

    /cut/<name>: the first request sends half the body then drops the connection.
    /norange/<name>: ignores Range headers (always 200, the whole body).
    /busy/<name>: 503 every time (a server that stays down).
    /missing...: 404.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        parts = self.path.strip("/").split("/")
        if parts[0] == "busy":
            self.send_error(503, "Service Unavailable")
            return
        mode = parts[0] if parts[0] in ("cut", "norange") else "plain"
        name = parts[-1].split("?", 1)[0]  # a query string names no file
        f = srv.root / name
        if not f.is_file():
            self.send_error(404, "Not Found")
            return
        body = f.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and mode != "norange":
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        data = body[start:]
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if mode == "cut" and not srv.cut_done.get(name):
            srv.cut_done[name] = True
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(data)


@pytest.fixture
def http_server(tmp_path):
    """A file server on 127.0.0.1 serving tmp_path/www; yields (base_url, root, server)."""
    root = tmp_path / "www"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.requests, srv.cut_done = root, [], {}
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", root, srv
    srv.shutdown()
    srv.server_close()


PROJECT_FILES = ["pipeline", "lightning_modules", "flows", "studies", "dvc.yaml", "params.yaml", ".dvcignore"]


def make_project(dest: Path) -> Path:
    """Copy the project's code into `dest`, then `git init` + `dvc init` there."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            # the studies' own pipeline (studies/dvc.yaml) stays out: these projects test the main one
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "dvc.yaml", "dvc.lock"))
        elif src.exists():
            shutil.copy(src, dest / name)
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")
    env = dict(os.environ, **GIT_ID)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True, env=env)
    subprocess.run([str(Path(PY).parent / "dvc"), "init", "-q"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=dest, check=True, env=env)
    return dest


GIT_ID = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}


def dvc(project: Path, *args, env=None, timeout=900):
    e = dict(os.environ, **GIT_ID)
    e["PATH"] = str(Path(PY).parent) + os.pathsep + e["PATH"]
    e.pop("CORPUS_MIRROR", None)
    if env:
        e.update(env)
    return subprocess.run([str(Path(PY).parent / "dvc"), *args], cwd=project, env=e, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def need_mirror():
    if not (SHARED_CORPORA / "tinyshakespeare.txt").is_file():
        pytest.skip("../shared/corpora (the offline corpus mirror) is absent: the real-corpus tests need it")
    return SHARED_CORPORA


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, wait: float = 20) -> None:
    """Terminate `proc`; kill it if it is still there after `wait` seconds."""
    proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(url: str, proc, timeout: float, what: str) -> None:
    import time
    import urllib.request

    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer {url} within {timeout} s")


@contextlib.contextmanager
def _server(cmd: list[str], health: str, what: str, log_path: Path, **popen):
    """`cmd` started in a process group of its own (its workers with it), waited for until
    `health` answers; yields kill: kill() stops the whole group at once (a server that dies).
    Stopped on leaving in any case."""
    import signal

    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen)

    def kill(sig=signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)

    try:
        wait_http(health, proc, 120, what)
        yield kill
    finally:
        kill(signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a worker that outlived its parent
        log.close()


@contextlib.contextmanager
def mlflow_server(folder: Path):
    """A real `mlflow server` on 127.0.0.1 with its store and artifacts in `folder`; yields
    (uri, kill): kill() stops it at once, workers included (a server that dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"http://127.0.0.1:{free_port()}"
    cmd = [str(Path(PY).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1], "--workers", "1"]
    with _server(cmd, f"{uri}/health", "mlflow server", folder / "log", cwd=folder) as kill:
        yield uri, kill


@contextlib.contextmanager
def prefect_server(home: Path):
    """A real `prefect server` on 127.0.0.1 with its home in `home`; yields (api url, kill):
    kill() stops it at once, its children included (a server that dies)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = [str(Path(PY).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/api"
    with _server(cmd, f"{url}/health", "prefect server", home / "server.log", env=env) as kill:
        yield url, kill


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real Prefect API server on 127.0.0.1 for the whole test session."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as (url, _):
        yield url


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny play-like corpus made by the real data-stage functions (tests/lmdata.py)."""
    from tests.lmdata import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"))
