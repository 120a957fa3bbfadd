"""Benchmark: tokenize + onehot throughput and peak memory at 1 GB scale, and a no-op `dvc repro`.

    python bench/data_stages.py [--gb 1.0] [--source data/raw/linux/corpus.txt] [--work DIR] [--no-dvc] [--keep]

Builds a text of about 1 GB by repeating the Linux C subset (the download stage's
output, or the mirror's archive), then times the tokenize and onehot stages on it, each
in a fresh process (peak RSS from the kernel's accounting of that process), against a
plain `cat FILE > /dev/null` of the same file in the same run. Last, it times
`dvc repro onehot@tinyshakespeare` when everything is up to date.
Prints a table; writes bench/out/data_stages.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.out_json import out_dir, save  # noqa: E402

OUT = out_dir()


RSS = (
    "import resource, runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
    "finally:\n    r = resource.getrusage\n"
    "    print('RSS', max(r(resource.RUSAGE_SELF).ru_maxrss, r(resource.RUSAGE_CHILDREN).ru_maxrss), file=sys.stderr)\n"
)


def timed_module(module: str, *args, cwd, env):
    """Run `python -m module args`; return (seconds, peak RSS in MB of any one of its processes)."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", RSS, module, *args], cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        why = [x for x in p.stderr.splitlines() if x.strip() and not x.startswith("RSS ")]
        sys.exit(f"error: `python -m {module} {' '.join(args)}` failed in {cwd}: {why[-1] if why else p.returncode}")
    kb = int(p.stderr.rsplit("RSS ", 1)[1].split()[0])
    return dt, kb / 1024


def timed_shell(cmd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True)
    return time.perf_counter() - t


def build_corpus(src: Path, dest: Path, target: int) -> int:
    if dest.exists() and dest.stat().st_size >= target:
        return dest.stat().st_size
    chunk = src.read_bytes()
    with open(dest, "wb") as f:
        n = 0
        while n < target:
            f.write(chunk)
            n += len(chunk)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--source", default="data/raw/linux/corpus.txt")
    ap.add_argument("--work", default=str(OUT / "data_stages"), help="scratch folder (the big corpus and its stages' outputs)")
    ap.add_argument("--no-dvc", action="store_true", help="skip the no-op `dvc repro` (it needs this project's data stages done)")
    ap.add_argument("--keep", action="store_true", help="keep the stages' outputs (the corpus is always kept for the next run)")
    a = ap.parse_args()
    src = ROOT / a.source
    if not src.is_file():
        sys.exit(f"error: {src} not found; run `dvc repro download@linux` first (CORPUS_MIRROR=<folder> offline)")
    work = Path(a.work).resolve()
    (work / "data/raw/big").mkdir(parents=True, exist_ok=True)
    size = build_corpus(src, work / "data/raw/big/corpus.txt", int(a.gb * 1e9))
    params = (ROOT / "params.yaml").read_text()
    import yaml

    p = yaml.safe_load(params)
    p["corpora"] = {**p["corpora"], "big": {"kind": "text", "url": "https://example.invalid/big.txt"}}  # the others stay: lm_corpora and the studies name them
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    py = sys.executable
    mb = size / 1e6
    cat_s = timed_shell(f"cat {work / 'data/raw/big/corpus.txt'} > /dev/null")
    tok_s, tok_rss = timed_module("pipeline.tokenize", "big", cwd=work, env=env)
    oh_s, oh_rss = timed_module("pipeline.onehot", "big", cwd=work, env=env)
    meta = json.loads((work / "data/onehot/big/meta.json").read_text())
    dvc = str(Path(py).parent / "dvc")
    noop = []
    if (ROOT / "dvc.lock").exists() and not a.no_dvc:
        subprocess.run([dvc, "repro", "onehot@tinyshakespeare"], cwd=ROOT, check=True, capture_output=True)
        for _ in range(3):
            t = time.perf_counter()
            r = subprocess.run([dvc, "repro", "onehot@tinyshakespeare"], cwd=ROOT, capture_output=True, text=True)
            noop.append(time.perf_counter() - t)
            assert "Running stage" not in r.stdout, r.stdout
    res = {
        "corpus_mb": round(mb, 1),
        "tokens": sum(meta["splits"].values()),
        "vocab": meta["vocab_size"],
        "cat_s": round(cat_s, 2),
        "cat_mb_s": round(mb / cat_s),
        "tokenize_s": round(tok_s, 2),
        "onehot_s": round(oh_s, 2),
        "tokenize_onehot_mb_s": round(mb / (tok_s + oh_s)),
        "ratio_to_cat": round(cat_s / (tok_s + oh_s), 3),
        "peak_rss_mb": round(max(tok_rss, oh_rss)),
        "noop_dvc_repro_s": round(min(noop), 2) if noop else None,
    }
    save("data_stages.json", res)
    print("| measure | value |\n|---|---|")
    print(f"| corpus | {mb:,.0f} MB, {res['tokens']:,} tokens, vocab {res['vocab']} |")
    print(f"| cat FILE > /dev/null | {cat_s:.2f} s ({res['cat_mb_s']:,} MB/s) |")
    print(f"| tokenize | {tok_s:.2f} s, peak RSS {tok_rss:.0f} MB |")
    print(f"| onehot | {oh_s:.2f} s, peak RSS {oh_rss:.0f} MB |")
    print(f"| tokenize + onehot | {res['tokenize_onehot_mb_s']:,} MB/s ({res['ratio_to_cat']:.3f}x the speed of cat) |")
    print("| no-op dvc repro onehot@tinyshakespeare | " + (f"{res['noop_dvc_repro_s']} s (best of 3) |" if noop else "not run |"))
    if not a.keep:
        shutil.rmtree(work / "data/tokens", ignore_errors=True)
        shutil.rmtree(work / "data/onehot", ignore_errors=True)


if __name__ == "__main__":
    main()
