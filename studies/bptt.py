"""Study `bptt` (slide 4): full BPTT against truncated BPTT(K1, K2), cost against quality.

    python -m studies.bptt           # -> reports/bptt/{tradeoff,updates,seeds}.{csv,md}, tradeoff.png, curves.png, result.json

On a character corpus (Tiny Shakespeare by default), the same model and the same budget
of training characters for every regime:
- full BPTT over random windows of `full_len` characters (one backward per window);
- TBPTT(K1, K2) over B contiguous streams with the state carried: every K1 characters,
  back-propagate through the last K2 (the grid of `k1_eq_k2`, plus the `k1_lt_k2` pairs).

Equal characters are not equal updates: a regime takes budget / (B * K1) optimizer steps,
full BPTT (K1 = 256) 16 times fewer than TBPTT(16,16). So the report compares the regimes
two ways, each a run of its own with its own schedule (linear warmup over min(50, S / 10)
steps, then the cosine over all S steps):
- at equal characters, the budget: `tradeoff.md`;
- at equal updates, S = full BPTT's steps for every regime (fewer characters for K1 below
  full BPTT's T, more above it): `updates.md`.
The budget runs are validated every S / `val_points` steps, and `curves.png` plots those
validations against updates, characters and seconds. Mid-run points of a curve are not an
equal-updates comparison: each run's learning rate is still at another point of its own
schedule there; that is why the equal-updates runs are separate.
The seconds are the project's training clock (lightning_modules/clock.py), as the pipeline's
curves and time budgets count them: from the start of training, setup and validation left
out.

Each regime is trained from `repeats` seeds (seed, seed + 1, ...): the same seed gives every
regime the same initial weights, so two regimes are compared seed by seed. The tables give
the mean over the seeds and its sample standard deviation (`val_loss_sd`), `seeds.md` every
run; `curves.png` plots the first seed's curves.

Every model is scored twice on the whole val split: on long streams with the state carried
(`val_loss`, as the pipeline scores), and on windows of `full_len` characters, each from a
zero state (`val_loss_windows`): the regime full BPTT trained in, so a state carried past
`full_len` steps, new to it, does not count against it there.
"""
from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lightning_modules.clock import TrainClock
from pipeline.atomic import atomic_dir
from pipeline.config import PARAMS, load_params, parse_sets
from pipeline.errors import UserError, cli
from studies.common import REPORTS, Repeated, at_least, check_report_dir, log_study, pyplot, save_png, study_params, write_result, write_table


@dataclass(frozen=True)
class BpttParams(Repeated):
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
    repeats: int = 1  # seeds seed, seed + 1, ..., each regime trained once from each
    val_points: int = 4  # the budget runs validate every full BPTT steps / val_points steps (curves.png)

    def validate(self, path: str) -> None:
        """Bad settings fail here, in one line, before any training or report file."""
        at_least(self, path, ("full_len", "budget_chars", "val_points", "batch_size", "repeats"))
        bad = [k for k in self.k1_eq_k2 if k < 1]
        if bad:
            raise UserError(f"{PARAMS}: {path}.k1_eq_k2: every K must be >= 1, got {list(self.k1_eq_k2)}; remove {bad}")
        pairs(self, path)
        n = full_steps(self)
        if self.val_points > n:  # more would validate after every step of every regime
            raise UserError(f"{PARAMS}: {path}.val_points: {self.val_points} is more than full BPTT's {n} steps for this budget;"
                            f" set it to {n} or less, or raise budget_chars")


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



class Curve(TrainClock):
    """(step, characters, seconds of training, val_loss) at every validation. The seconds are
    the project's training clock (lightning_modules/clock.py: from the start of training,
    validation left out), the one the pipeline's curves and time budgets count."""

    def __init__(self, chars_per_step: int):
        super().__init__()
        self.chars_per_step, self.points = chars_per_step, []

    def on_validation_end(self, trainer, pl_module):
        super().on_validation_end(trainer, pl_module)
        step = trainer.global_step
        if trainer.sanity_checking or (self.points and self.points[-1]["step"] == step):
            return
        self.points.append({"step": step, "chars": step * self.chars_per_step, "train_s": round(self.train_seconds(), 3),
                            "val_loss": round(float(trainer.callback_metrics["val_loss"]), 4)})


def windowed_loss(model: torch.nn.Module, ids: torch.Tensor, window: int, batch: int = 64) -> float:
    """Mean cross-entropy (nats/token) of `ids` cut into windows of `window` tokens, each
    predicted from a zero state: L = -(1/N) sum_w sum_t log p(x_{t+1} | x_w..x_t)."""
    n = (len(ids) - 1) // window
    if n < 1:
        raise UserError(f"the val split has {len(ids)} tokens, fewer than one window of full_len+1={window + 1}; lower studies.bptt.full_len")
    x, y = ids[: n * window].view(n, window).long(), ids[1 : n * window + 1].view(n, window).long()
    total = 0.0
    with torch.inference_mode():
        for a in range(0, n, batch):
            logits, _ = model(x[a : a + batch])
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y[a : a + batch].reshape(-1), reduction="sum").item()
    return total / (n * window)


EVAL_STREAMS = 16  # lightning_modules.train's eval_batch: the val split is read as 16 streams


def full_steps(hp: BpttParams) -> int:
    """Full BPTT's optimizer steps for the budget; the other regimes validate every full_steps / val_points steps."""
    return max(1, hp.budget_chars // (hp.batch_size * hp.full_len))


def _train(params, hp, r: dict, data_dir: Path, tmp: Path, steps: int, val_every: int, seed: int) -> tuple[Curve, float]:
    """Train regime `r` for `steps` optimizer steps in `tmp` (warmup min(50, steps / 10), then the
    cosine over `steps`), validating every `val_every`; its curve and the seconds of the whole fit."""
    from lightning_modules.train import fit
    from pipeline.callbacks import interrupts_as_raised

    cfg = dict(hidden=hp.hidden, layers=hp.layers, batch_size=hp.batch_size, lr=hp.lr, seed=seed, bptt=r["bptt"],
               seq_len=hp.full_len, k1=r["k1"], k2=r["k2"], max_steps=steps, val_every=val_every, warmup_steps=min(50, steps // 10),
               progress_every=0, accelerator="cpu" if params.train.accelerator == "cpu" else "auto", dropout=0.0)
    curve = Curve(hp.batch_size * r["k1"])
    t = time.perf_counter()
    with interrupts_as_raised() as keep:  # Ctrl-C: the study's one line and exit 130, not Lightning's exit 1
        fit(cfg, data_dir, tmp, callbacks=[curve, keep])
    return curve, time.perf_counter() - t


def _regime(params, hp, r: dict, data_dir: Path, tmp: Path, seed: int) -> tuple[dict, dict]:
    """Train one regime from `seed` for the character budget and again for full BPTT's number
    of updates, score both on val, log them; its table row (with its curve) and its
    equal-updates row."""
    from lightning_modules.checkpoint import load_checkpoint
    from lightning_modules.data import load_split

    per_step = hp.batch_size * r["k1"]  # new training characters per optimizer step
    steps, same = max(1, hp.budget_chars // per_step), full_steps(hp)
    curve, secs = _train(params, hp, r, data_dir, tmp / "budget", steps, max(1, same // hp.val_points), seed)
    model, _, _ = load_checkpoint(tmp / "budget" / "last.ckpt", map_location="cpu")
    windows = windowed_loss(model.eval(), load_split(data_dir, "val"), hp.full_len)
    end = curve.points[-1]
    chars = steps * per_step
    row = {**r, "steps": steps, "train_chars": chars, "train_s": round(end["train_s"], 1),
           "s_per_1M_chars": round(end["train_s"] / chars * 1e6, 2), "val_loss": end["val_loss"], "val_loss_windows": round(windows, 4)}
    # equal updates: the same steps, warmup and schedule for every regime (full BPTT's budget run is that run)
    upd = end if steps == same else _train(params, hp, r, data_dir, tmp / "updates", same, same, seed)[0].points[-1]
    upd_row = {"regime": r["regime"], "k1": r["k1"], "k2": r["k2"], "steps": same, "train_chars": same * per_step,
               "train_s": round(upd["train_s"], 1), "val_loss": upd["val_loss"]}
    print(f"{r['regime']:22s} seed {seed}: {steps:5d} steps, {row['s_per_1M_chars']:6.1f} s/1M chars, val_loss {row['val_loss']:.4f}"
          f" (windows {row['val_loss_windows']:.4f}; {len(curve.points)} validations, {secs:.0f} s in all);"
          f" {same} steps: val_loss {upd_row['val_loss']:.4f}", flush=True)
    name = r["regime"] if hp.repeats == 1 else f"{r['regime']} seed {seed}"
    log_study(params, "bptt", name, {**vars(hp), "seed": seed, "k1": r["k1"], "k2": r["k2"], "steps": steps},
              {"val_loss": row["val_loss"], "val_loss_windows": windows, "s_per_1M_chars": row["s_per_1M_chars"],
               "val_loss_equal_updates": upd_row["val_loss"]}, [])
    return {**row, "seed": seed, "curve": curve.points}, {**upd_row, "seed": seed}


def _mean_over_seeds(runs: list[dict], keys: tuple[str, ...], with_sd: bool) -> dict:
    """The first run's other columns; each of `keys` as its mean over the runs, and the
    val_loss's sample standard deviation (n - 1) beside it when `with_sd`."""
    import statistics

    out = {k: v for k, v in runs[0].items() if k not in ("seed", "curve")}
    for k in keys:
        out[k] = round(statistics.fmean(r[k] for r in runs), 4)
    if with_sd:
        at = list(out).index("val_loss") + 1
        items = list(out.items())
        items.insert(at, ("val_loss_sd", round(statistics.stdev(r["val_loss"] for r in runs), 4)))
        out = dict(items)
    return out


def _plots(out: Path, hp: BpttParams, table: pd.DataFrame, rows: list[dict]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for _, row in table.iterrows():
        ax.errorbar(row["s_per_1M_chars"], row["val_loss"], yerr=row.get("val_loss_sd", None), fmt="o", ms=8, capsize=3,
                    color="black" if row["regime"].startswith("full") else "tab:blue")
        ax.annotate(row["regime"], (row["s_per_1M_chars"], row["val_loss"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("training cost: seconds of training per million characters")
    ax.set_ylabel("val_loss after the budget (nats/char)" + (f", mean ± sd of {hp.repeats} seeds" if hp.repeats > 1 else ""))
    ax.set_title(f"{hp.corpus}: {hp.layers}x{hp.hidden} LSTM, {hp.budget_chars:,} training characters each")
    ax.grid(alpha=0.3)
    save_png(fig, out / "tradeoff.png")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for r in rows:
        style = dict(marker="o", ms=3, lw=2 if r["bptt"] == "full" else 1, label=r["regime"],
                     **({"color": "black"} if r["bptt"] == "full" else {}))  # the color cycle has a red of its own
        for ax, key in zip(axes, ("step", "chars", "train_s")):
            ax.plot([p[key] for p in r["curve"]], [p["val_loss"] for p in r["curve"]], **style)
    for ax, label in zip(axes, ("optimizer steps (updates)", "training characters", "seconds of training")):
        ax.set_xlabel(label)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val_loss (nats/char, state carried)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{hp.corpus}: {hp.layers}x{hp.hidden} LSTM, the budget runs' validations against updates, characters and seconds"
                 + (f" (seed {hp.seed})" if hp.repeats > 1 else ""))
    save_png(fig, out / "curves.png")


def run(params, out_dir: Path = REPORTS / "bptt", data_root: Path = Path("data/onehot")) -> dict:
    hp = study_params(params, "bptt", BpttParams)
    check_report_dir(out_dir)  # before any work
    plan = regimes(hp)  # bad K1/K2 pairs failed in study_params, before any work
    data_dir = data_root / hp.corpus
    if not (data_dir / "meta.json").is_file():
        raise UserError(f"{data_dir}/meta.json: not found; run `dvc repro onehot@{hp.corpus}` first")
    from lightning_modules.data import load_split

    n_val, need = len(load_split(data_dir, "val")), max(hp.full_len, EVAL_STREAMS) + 1
    if n_val < need:  # checked before any training: windowed_loss and the validation streams need them
        raise UserError(f"{data_dir}/val.npy: {n_val} tokens, fewer than {need} (a window of full_len + 1 and"
                        f" {EVAL_STREAMS} validation streams); lower studies.bptt.full_len or use a larger corpus")
    import tempfile

    rows, same, per_seed = [], [], []
    for r in plan:
        runs, upds = [], []
        for seed in hp.seeds:
            tmp = Path(tempfile.mkdtemp(prefix="bptt-"))
            try:
                row, upd = _regime(params, hp, r, data_dir, tmp, seed)
            finally:  # a failed or interrupted regime leaves no checkpoint folder behind
                shutil.rmtree(tmp, ignore_errors=True)
            runs.append(row)
            upds.append(upd)
            per_seed.append({"regime": r["regime"], "seed": seed, "val_loss": row["val_loss"], "val_loss_windows": row["val_loss_windows"],
                             "val_loss_equal_updates": upd["val_loss"], "train_s": row["train_s"]})
        several = hp.repeats > 1
        rows.append({**_mean_over_seeds(runs, ("train_s", "s_per_1M_chars", "val_loss", "val_loss_windows"), several),
                     "curve": runs[0]["curve"], "seeds": [{k: v for k, v in q.items() if k != "curve"} for q in runs]})
        same.append(_mean_over_seeds(upds, ("train_s", "val_loss"), several))
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in ("bptt", "curve", "seeds")} for r in rows])
    # the report is made in a folder beside out_dir that replaces it whole at the end: a run that
    # fails half-way leaves the last complete report, not some of its files
    with atomic_dir(out_dir) as out:
        write_table(table, out, "tradeoff")
        write_table(pd.DataFrame(same), out, "updates")
        write_table(pd.DataFrame(per_seed), out, "seeds")
        _plots(out, hp, table, rows)
        write_result(out, {"rows": rows, "budget_chars": hp.budget_chars, "seeds": hp.seeds,
                           "equal_updates": {"step": full_steps(hp), "rows": same}})
    log_study(params, "bptt", "report", hp, {}, [out_dir / f for f in ("tradeoff.md", "tradeoff.csv", "updates.md", "updates.csv", "seeds.md",
                                                                       "seeds.csv", "tradeoff.png", "curves.png", "result.json")])
    return {"rows": rows}


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a param (repeatable)")
    a = ap.parse_args(argv)
    run(load_params(a.params, parse_sets(a.set)))
    print((REPORTS / "bptt" / "tradeoff.md").read_text())
    print((REPORTS / "bptt" / "updates.md").read_text())


if __name__ == "__main__":
    main()
