"""Download stage against a real HTTP server on 127.0.0.1 (no network mocks)."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import yaml

from tests.conftest import ROOT, one_line_error, run_module


def write_params(dir: Path, corpora: dict, **sections) -> Path:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["corpora"] = corpora
    p["lm_corpora"] = []
    p["data"]["retries"] = 3
    for k, v in sections.items():
        p[k].update(v)
    (dir / "params.yaml").write_text(yaml.safe_dump(p))
    return dir


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 400).encode()
FAST = {"DOWNLOAD_BACKOFF_S": "0.05"}


def test_fetch_verifies_sha_and_writes_corpus(tmp_path, http_server):
    url, www, srv = http_server
    (www / "input.txt").write_bytes(TEXT)
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/input.txt", "sha256": sha(TEXT)}})
    run_module("pipeline.download", "t", cwd=tmp_path, check=True)
    assert (tmp_path / "data/raw/t/corpus.txt").read_bytes() == TEXT
    info = json.loads((tmp_path / "data/raw/t/source.json").read_text())
    assert info["fetched_sha256"] == sha(TEXT) and info["bytes"] == len(TEXT)
    # a second run takes the cached download instead of fetching again
    n = len(srv.requests)
    run_module("pipeline.download", "t", cwd=tmp_path, check=True)
    assert len(srv.requests) == n


def test_connection_cut_mid_transfer_resumes_with_range(tmp_path, http_server):
    url, www, srv = http_server
    (www / "input.txt").write_bytes(TEXT)
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/cut/input.txt", "sha256": sha(TEXT)}})
    p = run_module("pipeline.download", "t", cwd=tmp_path, env=FAST, check=True)
    assert (tmp_path / "data/raw/t/corpus.txt").read_bytes() == TEXT
    assert "retry" in p.stderr
    ranges = [r for path, r in srv.requests if path.startswith("/cut/")]
    assert ranges[0] is None and ranges[1] == f"bytes={len(TEXT) // 2}-"


def test_server_without_range_restarts_from_zero(tmp_path, http_server):
    url, www, srv = http_server
    (www / "input.txt").write_bytes(TEXT)
    part = tmp_path / "data/downloads/input.txt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not survive")
    (tmp_path / "data/downloads/input.txt.url").write_text(f"{url}/norange/input.txt\n")  # the same URL: resumed
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/norange/input.txt", "sha256": sha(TEXT)}})
    run_module("pipeline.download", "t", cwd=tmp_path, check=True)
    assert (tmp_path / "data/raw/t/corpus.txt").read_bytes() == TEXT


def test_server_down_through_every_retry_exits_75_so_a_scheduler_may_retry(tmp_path, http_server):
    url, www, srv = http_server
    (www / "input.txt").write_bytes(TEXT)
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/busy/input.txt"}}, data={"retries": 2})
    p = run_module("pipeline.download", "t", cwd=tmp_path, env=FAST)
    err = one_line_error(p)
    assert p.returncode == 75 and "failed 2 times" in err and "HTTP 503" in err, p.stderr
    assert len(srv.requests) == 2 and not (tmp_path / "data/raw/t").exists()


def test_http_404_is_one_line_error_and_leaves_nothing(tmp_path, http_server):
    url, www, srv = http_server
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/missing.txt"}})
    p = run_module("pipeline.download", "t", cwd=tmp_path, env=FAST)
    err = one_line_error(p)
    assert "HTTP 404" in err and "CORPUS_MIRROR" in err
    assert p.returncode == 2  # the user's to fix: no scheduler should retry it
    assert not (tmp_path / "data/raw/t").exists()
    assert len(srv.requests) == 1  # a 404 is not retried


def test_sha_mismatch_keeps_earlier_good_output(tmp_path, http_server):
    url, www, srv = http_server
    (www / "input.txt").write_bytes(TEXT)
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/input.txt", "sha256": sha(TEXT)}})
    run_module("pipeline.download", "t", cwd=tmp_path, check=True)
    good = (tmp_path / "data/raw/t/corpus.txt").read_bytes()
    (www / "other.txt").write_bytes(b"tampered " * 100)
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/other.txt", "sha256": sha(TEXT)}})
    err = one_line_error(run_module("pipeline.download", "t", cwd=tmp_path))
    assert "sha256 mismatch" in err
    assert (tmp_path / "data/raw/t/corpus.txt").read_bytes() == good
    assert not list((tmp_path / "data/downloads").glob("other.txt*"))  # no partial file kept


def _tar(members: dict[str, bytes], extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for ti in extra or []:
            tf.addfile(ti)
    return buf.getvalue()


def test_archive_members_concatenated_in_sorted_order(tmp_path, http_server):
    url, www, srv = http_server
    (www / "src.tar.gz").write_bytes(
        _tar({"top/b/z.c": b"int z;\n", "top/a.c": b"int a;\n", "top/README": b"skip me\n", "top/b/y.h": b"#define Y\n"})
    )
    write_params(tmp_path, {"c": {"kind": "text", "url": f"{url}/src.tar.gz", "include": ["*.c", "*.h"]}})
    run_module("pipeline.download", "c", cwd=tmp_path, check=True)
    assert (tmp_path / "data/raw/c/corpus.txt").read_bytes() == b"int a;\n#define Y\nint z;\n"
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("d/2.tex", "two\n")
        zf.writestr("d/1.tex", "one\n")
    (www / "src.zip").write_bytes(zbuf.getvalue())
    write_params(tmp_path, {"z": {"kind": "text", "url": f"{url}/src.zip", "include": ["*.tex"]}})
    run_module("pipeline.download", "z", cwd=tmp_path, check=True)
    assert (tmp_path / "data/raw/z/corpus.txt").read_text() == "one\ntwo\n"


def test_hostile_archives_are_refused(tmp_path, http_server):
    url, www, srv = http_server
    link = tarfile.TarInfo("top/evil.c")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    cases = {
        "dotdot.tar.gz": _tar({"top/ok.c": b"x", "../escape.c": b"y"}),
        "abs.tar.gz": _tar({"/tmp/abs.c": b"y"}),
        "link.tar.gz": _tar({"top/ok.c": b"x"}, extra=[link]),
    }
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("../../evil.c", "y")
    cases["dotdot.zip"] = zbuf.getvalue()
    for fname, data in cases.items():
        (www / fname).write_bytes(data)
        write_params(tmp_path, {"h": {"kind": "text", "url": f"{url}/{fname}", "include": ["*.c"]}})
        err = one_line_error(run_module("pipeline.download", "h", cwd=tmp_path))
        assert "unsafe member" in err, (fname, err)
        assert not (tmp_path / "data/raw/h").exists()
    assert not (tmp_path.parent / "escape.c").exists() and not (tmp_path / "escape.c").exists()


def test_unknown_corpus_and_bad_mirror(tmp_path, http_server):
    url, www, srv = http_server
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/input.txt", "mirror_file": "input.txt"}})
    err = one_line_error(run_module("pipeline.download", "nosuch", cwd=tmp_path))
    assert "unknown corpus 'nosuch'" in err and "t" in err
    (tmp_path / "mirror").mkdir()
    err = one_line_error(run_module("pipeline.download", "t", cwd=tmp_path, env={"CORPUS_MIRROR": str(tmp_path / "mirror")}))
    assert "has no file input.txt" in err and "unset CORPUS_MIRROR" in err
    err = one_line_error(run_module("pipeline.download", "t", cwd=tmp_path, env={"CORPUS_MIRROR": str(tmp_path / "nope")}))
    assert "does not exist" in err
    assert srv.requests == []  # a mirror run never touches the network


def test_mirror_sha_mismatch(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "input.txt").write_bytes(TEXT + b"x")
    write_params(tmp_path, {"t": {"kind": "text", "url": "https://example.invalid/input.txt", "sha256": sha(TEXT)}})
    err = one_line_error(run_module("pipeline.download", "t", cwd=tmp_path, env={"CORPUS_MIRROR": str(tmp_path / "mirror")}))
    assert "sha256 mismatch" in err


def test_bad_params_name_the_key(tmp_path):
    write_params(tmp_path, {"t": {"kind": "txt", "url": "https://example.invalid/a.txt"}})
    assert "corpora.t.kind" in one_line_error(run_module("pipeline.download", "t", cwd=tmp_path))
    write_params(tmp_path, {"t": {"kind": "text", "url": "https://example.invalid/a.txt", "sha": "x"}})
    assert "corpora.t.sha: unknown key" in one_line_error(run_module("pipeline.download", "t", cwd=tmp_path))
    write_params(tmp_path, {"t": {"kind": "text", "url": "https://example.invalid/a.txt"}}, data={"retries": -1})
    assert "data.retries: must be > 0" in one_line_error(run_module("pipeline.download", "t", cwd=tmp_path))


def test_cache_is_keyed_by_url(tmp_path, http_server):
    """A cached download (or a partial one) from another URL is never taken for this URL's file."""
    url, www, srv = http_server
    (www / "input.txt").write_bytes(TEXT)
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/input.txt"}})  # no sha256: nothing to check bytes by
    run_module("pipeline.download", "t", cwd=tmp_path, check=True)
    other = b"Other text entirely.\n" * 50
    (www / "input.txt").write_bytes(other)  # the same name served under a new URL
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/norange/input.txt"}})
    p = run_module("pipeline.download", "t", cwd=tmp_path, check=True)
    assert "fetching anew" in p.stderr
    assert (tmp_path / "data/raw/t/corpus.txt").read_bytes() == other
    assert srv.requests[-1][0] == "/norange/input.txt"
    # a partial transfer of unknown origin is not resumed either
    cache = tmp_path / "data/downloads"
    (cache / "input.txt").unlink()
    (cache / "input.txt.url").unlink()
    (cache / "input.txt.part").write_bytes(b"stale bytes from somewhere")
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/input.txt"}})
    run_module("pipeline.download", "t", cwd=tmp_path, check=True)
    assert (tmp_path / "data/raw/t/corpus.txt").read_bytes() == other
    assert srv.requests[-1] == ("/input.txt", None)  # from byte 0, no Range


def test_verified_cache_without_url_record_is_kept(tmp_path, http_server):
    url, www, srv = http_server
    cache = tmp_path / "data/downloads"
    cache.mkdir(parents=True)
    (cache / "input.txt").write_bytes(TEXT)  # as an older version of the stage left it
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/input.txt", "sha256": sha(TEXT)}})
    run_module("pipeline.download", "t", cwd=tmp_path, check=True)
    assert srv.requests == [] and (cache / "input.txt.url").read_text().strip() == f"{url}/input.txt"


def test_truncated_archive_is_dropped_from_the_cache(tmp_path, http_server):
    url, www, srv = http_server
    whole = _tar({f"top/{i}.c": (f"int v{i};\n" * 2000).encode() for i in range(8)})
    (www / "src.tar.gz").write_bytes(whole[: len(whole) // 2])
    write_params(tmp_path, {"c": {"kind": "text", "url": f"{url}/src.tar.gz", "include": ["*.c"]}})
    p = run_module("pipeline.download", "c", cwd=tmp_path)
    err = one_line_error(p)
    assert "not a readable tar file" in err and "data/downloads/src.tar.gz" in err and "run again" in err
    assert p.returncode == 75  # the next try fetches anew: a scheduler's retry may succeed
    assert not (tmp_path / "data/downloads/src.tar.gz").exists() and not (tmp_path / "data/raw/c").exists()
    (www / "src.tar.gz").write_bytes(whole)  # the server fixed: the next run fetches it anew
    run_module("pipeline.download", "c", cwd=tmp_path, check=True)
    assert (tmp_path / "data/raw/c/corpus.txt").read_text().count("int v") == 8 * 2000


def test_archive_name_ignores_query_and_include_needs_an_archive(tmp_path, http_server):
    url, www, srv = http_server
    (www / "src.tar.gz").write_bytes(_tar({"top/a.c": b"int a;\n", "top/README": b"skip\n"}))
    write_params(tmp_path, {"c": {"kind": "text", "url": f"{url}/src.tar.gz?download=1", "include": ["*.c"]}})
    run_module("pipeline.download", "c", cwd=tmp_path, check=True)
    assert (tmp_path / "data/raw/c/corpus.txt").read_bytes() == b"int a;\n"
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/input.txt", "include": ["*.c"]}})
    err = one_line_error(run_module("pipeline.download", "t", cwd=tmp_path))
    assert "corpora.t.include" in err and "remove include" in err


def test_tar_duplicate_members_and_hard_links(tmp_path, http_server):
    """Tar semantics: a later member of a name replaces the earlier one; a hard link is its target's bytes."""
    url, www, srv = http_server
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in (("top/a.c", b"v1\n"), ("top/a.c", b"v2\n"), ("top/b.c", b"B\n")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("top/c.c")
        link.type, link.linkname = tarfile.LNKTYPE, "top/b.c"
        tf.addfile(link)
    (www / "dup.tar.gz").write_bytes(buf.getvalue())
    write_params(tmp_path, {"c": {"kind": "text", "url": f"{url}/dup.tar.gz", "include": ["*.c"]}})
    run_module("pipeline.download", "c", cwd=tmp_path, check=True)
    assert (tmp_path / "data/raw/c/corpus.txt").read_bytes() == b"v2\nB\nB\n"
    assert json.loads((tmp_path / "data/raw/c/source.json").read_text())["members"] == 3


def test_source_json_says_where_the_bytes_came_from(tmp_path, http_server):
    url, www, srv = http_server
    (www / "input.txt").write_bytes(TEXT)
    write_params(tmp_path, {"t": {"kind": "text", "url": f"{url}/input.txt", "sha256": sha(TEXT)}})
    run_module("pipeline.download", "t", cwd=tmp_path, check=True)
    assert json.loads((tmp_path / "data/raw/t/source.json").read_text())["from"] == "url"
    run_module("pipeline.download", "t", cwd=tmp_path, env={"CORPUS_MIRROR": str(www)}, check=True)
    assert json.loads((tmp_path / "data/raw/t/source.json").read_text())["from"] == {"mirror": "input.txt"}


def test_more_bad_params_and_mirror(tmp_path):
    """Each a one-line error naming the key (and the params file the user gave)."""
    ok = {"kind": "text", "url": "https://example.invalid/a.txt"}
    cases = [
        ({"../evil": ok}, {}, "not usable as a folder name"),
        ({"t": {**ok, "mirror_file": "../../etc/passwd"}}, {}, "corpora.t.mirror_file: must be a plain file name"),
        ({"t": ok}, {"data": {"timeout_s": float("inf")}}, "data.timeout_s: must be a finite number"),
        ({"t": ok}, {"onehot": {"min_train_tokens": -5}}, "onehot.min_train_tokens: must be > 0"),
    ]
    for corpora, sections, want in cases:
        write_params(tmp_path, corpora, **sections)
        err = one_line_error(run_module("pipeline.download", "t", cwd=tmp_path))
        assert want in err, (want, err)
    write_params(tmp_path, {"t": ok}, data={"retries": 0})
    (tmp_path / "params.yaml").rename(tmp_path / "other.yaml")
    err = one_line_error(run_module("pipeline.download", "t", "--params", "other.yaml", cwd=tmp_path))
    assert err.startswith("error: other.yaml: data.retries: must be > 0"), err
    write_params(tmp_path, {"t": ok})
    (tmp_path / "afile").write_text("x")
    err = one_line_error(run_module("pipeline.download", "t", cwd=tmp_path, env={"CORPUS_MIRROR": str(tmp_path / "afile")}))
    assert "is a file, not a folder" in err
