"""Stage `download@<corpus>`: fetch a corpus and leave it as one file under data/raw/<corpus>/.

    python -m pipeline.download tinyshakespeare            # from the URL in params.yaml
    CORPUS_MIRROR=../shared/corpora python -m pipeline.download linux   # offline copy

Fetching: HTTPS with a progress bar, retries with exponential back-off on transient
failures (connection errors, cuts, 5xx, 429), resume with an HTTP Range request when the
server allows it, sha256 verification where params declare one. The fetched file is kept
in data/downloads/ (a cache, not a DVC output) so a later run neither downloads it again
nor loses a half-finished transfer. The cache remembers the URL its bytes came from
(`<file>.url` beside it): a changed URL fetches anew, never reuses the old bytes.

Archives (.tar.*, .zip) are checked member by member before anything is written: absolute
paths, `..` and links leaving the folder are refused (tarfile's `data` filter). Members
matching the corpus's include globs are concatenated in sorted path order into
`corpus.txt`. Every output is written atomically: no partial file under a final name.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from pipeline.atomic import atomic_dir, atomic_path
from pipeline.config import Corpus, Params, load_params
from pipeline.errors import TransientFailure, UserError, cli

RAW = Path("data/raw")
DOWNLOADS = Path("data/downloads")
CHUNK = 1 << 20
BACKOFF_S = float(os.environ.get("DOWNLOAD_BACKOFF_S", "1.0"))


class TransientError(Exception):
    """A failure worth retrying: the connection dropped, timed out, or the server is busy."""


class UnreadableArchive(UserError):
    """The archive cannot be read: truncated, corrupt, or not the format its name says."""


def one_line(text) -> str:
    """An exception's text on one line (tarfile's and zipfile's may span several)."""
    return " ".join(str(text).split())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK * 8):
            h.update(chunk)
    return h.hexdigest()


def _progress(total: int | None, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=desc, file=sys.stderr, disable=None)


def _get_once(url: str, part: Path, timeout: float) -> None:
    """One HTTP attempt, appending to `part` from its current size (Range resume)."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "rnn-workflow/1", "Accept-Encoding": "identity"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # asked past the end: the part file is already whole
            return
        if e.code in (408, 429) or e.code >= 500:
            raise TransientError(f"HTTP {e.code}") from None
        raise UserError(
            f"HTTP {e.code} ({e.reason}) for {url}; check the corpus url in params.yaml, or work offline with CORPUS_MIRROR=<folder>"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise TransientError(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        if status == 206:
            mode, start = "ab", have
        else:  # 200: the server ignored Range; start again from zero
            mode, start = "wb", 0
        expected = int(length) if length is not None else None
        got = 0
        with open(part, mode) as out, _progress(
            (start + expected) if expected is not None else None, start, part.name.removesuffix(".part")
        ) as bar:
            try:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise TransientError(f"transfer cut after {start + got} bytes ({type(e).__name__})") from None
        if expected is not None and got < expected:
            raise TransientError(f"transfer cut after {start + got} of {start + expected} bytes")


def part_file(dest: Path) -> Path:
    """The partial transfer of a cached download, resumed by the next attempt."""
    return dest.with_name(dest.name + ".part")


def url_record(dest: Path) -> Path:
    """The file beside a cached download that names the URL its bytes (and its .part) came from."""
    return dest.with_name(dest.name + ".url")


def forget(dest: Path) -> None:
    """Drop a cached download, its partial transfer and its URL record."""
    for p in (dest, part_file(dest), url_record(dest)):
        p.unlink(missing_ok=True)


def fetch(url: str, dest: Path, sha256: str | None, retries: int = 5, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` (atomically, via `dest`.part), resuming and retrying.

    The cache is keyed by URL: `dest` or a `.part` fetched from another URL (or of unknown
    origin) is dropped, not reused."""
    record = url_record(dest)
    cached_url = record.read_text(encoding="utf-8").strip() if record.is_file() else None
    if cached_url is None and sha256 is not None and dest.exists() and sha256_file(dest) == sha256:
        cached_url = url  # a cache from before the URL record, and verified: keep it
        with atomic_path(record) as tmp:
            tmp.write_text(url + "\n", encoding="utf-8")
    if cached_url != url:
        if dest.exists() or part_file(dest).exists():
            print(f"download {url}: the cached {dest} came from {cached_url or 'an unknown URL'}; fetching anew", file=sys.stderr)
        forget(dest)
    elif dest.exists() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(record) as tmp:
        tmp.write_text(url + "\n", encoding="utf-8")
    part = part_file(dest)
    last = None
    for attempt in range(retries):
        try:
            _get_once(url, part, timeout)
            break
        except TransientError as e:
            last = e
            if attempt + 1 < retries:
                wait = BACKOFF_S * 2**attempt
                print(f"download {url}: {e}; retry {attempt + 1}/{retries - 1} in {wait:.1f} s", file=sys.stderr)
                time.sleep(wait)
    else:
        raise TransientFailure(
            f"download of {url} failed {retries} times (last: {last}); check the network and run again "
            f"(it resumes), or work offline with CORPUS_MIRROR=<folder>"
        )
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256:
            forget(dest)
            raise UserError(
                f"sha256 mismatch for {url}: expected {sha256}, got {got}; the file changed upstream or is corrupt "
                f"(update the corpus sha256 in params.yaml only if you trust the new file)"
            )
    os.replace(part, dest)
    return dest


def from_mirror(mirror: Path, corpus: Corpus, name: str) -> Path:
    """The corpus file in an offline mirror folder, checked against its sha256."""
    if not mirror.is_dir():
        what = "is a file, not a folder" if mirror.exists() else "does not exist"
        raise UserError(f"mirror folder {mirror} {what}; fix CORPUS_MIRROR / data.mirror or unset it to download")
    src = mirror / corpus.file_name
    if not src.is_file():
        raise UserError(
            f"mirror folder {mirror} has no file {corpus.file_name} (corpus {name}); copy it there, "
            f"or unset CORPUS_MIRROR / data.mirror to download from {corpus.url}"
        )
    expected = corpus.mirror_sha256 or corpus.sha256  # mirror_sha256 when the copy differs from the URL's file
    if expected is not None:
        got = sha256_file(src)
        if got != expected:
            raise UserError(
                f"sha256 mismatch for {src}: expected {expected}, got {got}; the mirror copy is corrupt or another "
                f"version: replace it with the file named in params.yaml"
            )
    return src


def _unsafe(name: str, why: str, archive: Path) -> UserError:
    return UserError(
        f"archive {archive.name}: unsafe member {name!r} ({why}); refusing to extract it: the archive is corrupt or hostile, fetch it again from a trusted source"
    )


def _match(path: str, include: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(PurePosixPath(path).name, g) for g in include)


def _extract_tar(archive: Path, tmp: Path, include: tuple[str, ...]) -> list[str]:
    names = []
    try:
        with tarfile.open(archive, "r:*") as tf:
            seen = set()
            for m in tf:
                if m.name.startswith(("/", "\\")) or PurePosixPath(m.name).is_absolute():
                    raise _unsafe(m.name, "absolute path", archive)
                try:
                    tarfile.data_filter(m, str(tmp))
                except tarfile.FilterError as e:
                    raise _unsafe(m.name, str(e), archive) from None
                if (m.isfile() or m.islnk()) and _match(m.name, include):
                    # a later member of the same name replaces the earlier one, as tar itself does;
                    # a hard link is extracted as a copy of its target's bytes
                    tf.extract(m, tmp, filter="data")
                    if m.name not in seen:
                        seen.add(m.name)
                        names.append(m.name)
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, UserError):
            raise
        raise UnreadableArchive(f"archive {archive} is not a readable tar file ({one_line(e)})") from None
    return names


def _extract_zip(archive: Path, tmp: Path, include: tuple[str, ...]) -> list[str]:
    names = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                p = PurePosixPath(info.filename.replace("\\", "/"))
                if p.is_absolute() or info.filename.startswith(("/", "\\")) or (len(info.filename) > 1 and info.filename[1] == ":"):
                    raise _unsafe(info.filename, "absolute path", archive)
                if ".." in p.parts:
                    raise _unsafe(info.filename, "'..' leaves the destination", archive)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise _unsafe(info.filename, "symbolic link", archive)
            for info in zf.infolist():
                if not info.is_dir() and _match(info.filename, include):
                    zf.extract(info, tmp)  # a later member of the same name replaces the earlier one
                    if info.filename not in names:
                        names.append(info.filename)
    except (zipfile.BadZipFile, EOFError) as e:
        raise UnreadableArchive(f"archive {archive} is not a readable zip file ({one_line(e)})") from None
    return names


def concat_members(archive: Path, out: Path, include: tuple[str, ...]) -> int:
    """Extract matching members safely and concatenate them in sorted path order into `out`."""
    include = include or ("*",)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".extract.") as tmp:
        tmp = Path(tmp)
        if archive.name.endswith(".zip"):
            names = _extract_zip(archive, tmp, include)
        else:
            names = _extract_tar(archive, tmp, include)
        if not names:
            raise UserError(f"archive {archive.name} has no member matching {list(include)}; fix the corpus include globs in params.yaml")
        with atomic_path(out) as part, open(part, "wb") as w:
            for name in sorted(names):
                with open(tmp / name, "rb") as r:
                    shutil.copyfileobj(r, w, CHUNK * 8)
    return len(names)


def download(name: str, params: Params, raw_dir: Path = RAW, cache: Path = DOWNLOADS) -> Path:
    """Fetch corpus `name` (URL or mirror) and write raw_dir/<name>/corpus.{txt,json}."""
    corpus = params.corpus(name)
    mirror = params.mirror()
    if mirror is not None:
        src = from_mirror(mirror, corpus, name)
        print(f"{name}: taking {src} from the offline mirror", file=sys.stderr)
    else:
        src = fetch(corpus.url, cache / corpus.file_name, corpus.sha256, params.data.retries, params.data.timeout_s)
    ext = ".json" if corpus.kind == "music" else ".txt"
    with atomic_dir(raw_dir / name) as tmp:
        out = tmp / f"corpus{ext}"
        members = None
        if corpus.is_archive:
            try:
                members = concat_members(src, out, corpus.include)
            except UnreadableArchive as e:
                if mirror is not None:
                    raise UnreadableArchive(f"{e}; replace the mirror copy with the file named in params.yaml") from None
                forget(src)  # a cached download: the next run fetches it anew
                raise TransientFailure(f"{e}; the cached download was deleted: run again to fetch it anew") from None
        else:
            shutil.copyfile(src, out)
        info = {
            "corpus": name,
            "url": corpus.url,
            # where the bytes came from: the URL itself, or an offline copy of (a subset of) it
            "from": {"mirror": corpus.file_name} if mirror is not None else "url",
            "fetched_sha256": sha256_file(src),
            "members": members,
            "bytes": out.stat().st_size,
        }
        (tmp / "source.json").write_text(json.dumps(info, indent=2) + "\n")
    return raw_dir / name / f"corpus{ext}"


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", help="a corpus declared in params.yaml")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=str(RAW), help="folder for <corpus>/corpus.txt (default data/raw)")
    a = ap.parse_args(argv)
    path = download(a.corpus, load_params(a.params), Path(a.out))
    print(f"{a.corpus}: {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
