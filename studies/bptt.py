"""Study `bptt` (slide 4): full BPTT against truncated BPTT(K1, K2), cost against quality.

    python -m studies.bptt           # -> reports/bptt/{tradeoff.csv,.md, tradeoff.png, result.json}

On a character corpus (Tiny Shakespeare by default), the same model and the same budget
of training characters for every regime:
- full BPTT over random windows of `full_len` characters (one backward per window);
- TBPTT(K1, K2) over B contiguous streams with the state carried: every K1 characters,
  back-propagate through the last K2 (the grid of `k1_eq_k2`, plus the `k1_lt_k2` pairs).
Reported: seconds per million training characters and the validation loss (nats/char,
the whole val split scored with the state carried) at the end of the budget.

What the table does and does not show:
- Equal characters are not equal updates. A regime takes budget / (B * K1) optimizer
  steps: full BPTT (K1 = 256) 183, TBPTT(16,16) 2,929, 16 times more. For the K1 = K2
  regimes the committed val_loss falls with the number of steps (183: 2.149, 366: 1.946,
  732: 1.807, 1,464: 1.720, 2,929: 1.665), so the column follows the update count and
  does not show that shorter truncation makes a better model. The like-for-like pair is
  TBPTT(32,32) against TBPTT(32,64): the same 1,464 steps and characters, 1.720 against
  1.707, one seed.
- The seconds are the wall time of Lightning's whole `fit`: its setup, the final
  validation and the checkpoint writes as well as the training steps. In runs of 18 to
  39 s that fixed part narrows the cost ratios between regimes.
- Every model is scored the same way, on long streams with the state carried; full BPTT
  trained on `full_len`-character windows from a zero state only, so states carried past
  `full_len` steps are new to it, which may count against it.
"""
from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.atomic import atomic_dir
from pipeline.config import PARAMS, load_params, parse_sets
from pipeline.errors import UserError, cli
from studies.common import REPORTS, at_least, log_study, pyplot, save_png, study_params, write_result, write_table


@dataclass(frozen=True)
class BpttParams:
    corpus: str = "tinyshakespeare"
    hidden: int = 128
    layers: int = 2
    batch_size: int = 32
    lr: float = 3e-3
    budget_chars: int = 1_500_000
    full_len: int = 256
    k1_eq_k2: tuple[int, ...] = (16, 32, 64, 128)
    k1_lt_k2: tuple[str, ...] = ("32:64",)  # "K1:K2" pairs with K1 < K2
    seed: int = 1337

    def validate(self, path: str) -> None:
        """Bad settings fail here, in one line, before any training or report file."""
        at_least(self, path, ("full_len", "budget_chars"))
        bad = [k for k in self.k1_eq_k2 if k < 1]
        if bad:
            raise UserError(f"{PARAMS}: {path}.k1_eq_k2: every K must be >= 1, got {list(self.k1_eq_k2)}; remove {bad}")
        pairs(self, path)


def pairs(hp: BpttParams, path: str = "studies.bptt") -> list[tuple[int, int]]:
    """The `k1_lt_k2` entries as (K1, K2), 0 < K1 <= K2 (TBPTT back-propagates through at least the K1 new steps)."""
    out = []
    for pair in hp.k1_lt_k2:
        try:
            k1, k2 = (int(v) for v in pair.split(":"))
        except ValueError:
            raise UserError(f"{PARAMS}: {path}.k1_lt_k2: {pair!r} is not 'K1:K2'; write e.g. '32:64'") from None
        if not 0 < k1 <= k2:
            raise UserError(f"{PARAMS}: {path}.k1_lt_k2: {pair!r} needs 0 < K1 <= K2; swap or fix the numbers")
        out.append((k1, k2))
    return out


def regimes(hp: BpttParams) -> list[dict]:
    out = [{"regime": f"full BPTT (T={hp.full_len})", "bptt": "full", "k1": hp.full_len, "k2": hp.full_len}]
    for k in hp.k1_eq_k2:
        out.append({"regime": f"TBPTT({k},{k})", "bptt": "tbptt", "k1": k, "k2": k})
    for k1, k2 in pairs(hp):
        out.append({"regime": f"TBPTT({k1},{k2})", "bptt": "tbptt", "k1": k1, "k2": k2})
    return out



def _regime(params, hp, r: dict, data_dir: Path, tmp: Path) -> dict:
    """Train one regime for the character budget in `tmp`, score it on val, log it; its table row."""
    from lightning_modules.train import evaluate, fit

    per_step = hp.batch_size * r["k1"]  # new training characters per optimizer step
    steps = max(1, hp.budget_chars // per_step)
    cfg = dict(hidden=hp.hidden, layers=hp.layers, batch_size=hp.batch_size, lr=hp.lr, seed=hp.seed, bptt=r["bptt"],
               seq_len=hp.full_len, k1=r["k1"], k2=r["k2"], max_steps=steps, val_every=steps, warmup_steps=min(50, steps // 10),
               progress_every=0, accelerator="cpu" if params.train.accelerator == "cpu" else "auto", dropout=0.0)
    t = time.perf_counter()
    res = fit(cfg, data_dir, tmp)
    secs = time.perf_counter() - t
    ev = evaluate(tmp / "last.ckpt", data_dir, ("val",), eval_batch=16, eval_len=512)
    chars = steps * per_step
    row = {**r, "steps": steps, "train_chars": chars, "train_s": round(res["train_seconds"], 1),
           "s_per_1M_chars": round(res["train_seconds"] / chars * 1e6, 2), "val_loss": round(ev["val_loss"], 4)}
    print(f"{r['regime']:22s} {steps:5d} steps, {row['s_per_1M_chars']:6.1f} s/1M chars, val_loss {row['val_loss']:.4f} ({secs:.0f} s)", flush=True)
    log_study(params, "bptt", r["regime"], {**vars(hp), **cfg}, {"val_loss": ev["val_loss"], "s_per_1M_chars": row["s_per_1M_chars"]}, [])
    return row


def run(params, out_dir: Path = REPORTS / "bptt", data_root: Path = Path("data/onehot")) -> dict:
    hp = study_params(params, "bptt", BpttParams)
    plan = regimes(hp)  # bad K1/K2 pairs failed in study_params, before any work
    data_dir = data_root / hp.corpus
    if not (data_dir / "meta.json").is_file():
        raise UserError(f"{data_dir}/meta.json: not found; run `dvc repro onehot@{hp.corpus}` first")
    import tempfile

    rows = []
    for r in plan:
        tmp = Path(tempfile.mkdtemp(prefix="bptt-"))
        try:
            rows.append(_regime(params, hp, r, data_dir, tmp))
        finally:  # a failed or interrupted regime leaves no checkpoint folder behind
            shutil.rmtree(tmp, ignore_errors=True)
    table = pd.DataFrame(rows).drop(columns=["bptt"])
    # the report is made in a folder beside out_dir that replaces it whole at the end: a run that
    # fails half-way leaves the last complete report, not some of its files
    with atomic_dir(out_dir) as out:
        write_table(table, out, "tradeoff")
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for _, row in table.iterrows():
            ax.plot(row["s_per_1M_chars"], row["val_loss"], "o", ms=8, color="tab:red" if row["regime"].startswith("full") else "tab:blue")
            ax.annotate(row["regime"], (row["s_per_1M_chars"], row["val_loss"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xlabel("training cost: seconds per million characters")
        ax.set_ylabel("val_loss after the budget (nats/char)")
        ax.set_title(f"{hp.corpus}: {hp.layers}x{hp.hidden} LSTM, {hp.budget_chars:,} training characters each")
        ax.grid(alpha=0.3)
        save_png(fig, out / "tradeoff.png")
        write_result(out, {"rows": rows, "budget_chars": hp.budget_chars})
    log_study(params, "bptt", "report", hp, {}, [out_dir / f for f in ("tradeoff.md", "tradeoff.csv", "tradeoff.png", "result.json")])
    return {"rows": rows}


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a param (repeatable)")
    a = ap.parse_args(argv)
    run(load_params(a.params, parse_sets(a.set)))
    print((REPORTS / "bptt" / "tradeoff.md").read_text())


if __name__ == "__main__":
    main()
