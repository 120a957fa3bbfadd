"""Study `variants` (slide 13; Greff et al. 2017, "LSTM: A Search Space Odyssey").

    python -m studies.variants       # -> reports/variants/{summary.csv,.md, boxplots.png, reading.md, trials.csv}
    python -m studies.variants --set studies.preset=full --set studies.variants.tasks=[jsb] \
        --set "studies.variants.variants=[V,GRU,RNN]" --out reports/variants_full    # Chung et al.'s three, full preset

Which parts of the LSTM matter? For each variant (V, NIG, NFG, NOG, NIAF, NOAF, NP, CIFG,
FGR, plus GRU and a plain RNN), as in Greff's protocol:
- random search: N trials, learning rate log-uniform in [lr_min, lr_max], hidden size
  log-uniform in [hidden_min, hidden_max], everything else fixed; every variant gets the
  same N (lr, hidden) draws, so trial k of a variant and trial k of V form a pair;
- every trial early-stopped on the validation split, then scored on the test split;
- per variant: median, best and mean score; against vanilla (V), a paired t-test over the
  shared draws (d_k = score_k(variant) - score_k(V), t = mean(d) / (sd(d) / sqrt(n)), n - 1
  degrees of freedom), its p-values Holm-corrected over the variants of the task, significant
  at 0.05 marked; the Wilcoxon signed-rank p beside it where the trial count lets it reach
  0.05 at all (n >= 6 pairs: its smallest two-sided p is 2 / 2^n, 0.125 at n = 4); box plots
  like Greff's Fig. 3; a paragraph written from the numbers.
The draws are paired on purpose: the spread between draws (a bad learning rate hurts every
variant) is shared, and an unpaired test would count it as noise.
Tasks: A, polyphonic music (JSB Chorales, NLL per time step on test; reference, Chung et
al. 2014: tanh 9.10, GRU 8.54, LSTM 8.67); B, characters (Tiny Shakespeare, val loss in
nats/char after a fixed budget of characters; the corpus has no test split).

What the numbers do and do not show:
- Task B with the default budget is early training: 300,000 characters / (32 x 64) = 146
  optimizer steps per trial. The reading prints a character-bigram model counted on the
  training split (add-one smoothing, `bigram_nats`) and scored on the same val split:
  2.482 nats/char for Tiny Shakespeare, which V's median (2.557 in the committed
  summary_text.csv) has not yet beaten. Task B
  ranks how fast each variant learns in its first steps, not which parts matter at the end.
- `params` counts differ by task: JSB, the whole model (recurrent layer and the 88-key
  output layer); text, the recurrent layer only (its input is an embedding of width H
  whatever the vocabulary; the embedding and the softmax layer, 2 V H + V more for V
  symbols, are left out).
- With `width: equal` (the default) all cells share the hidden sizes, so an LSTM (4 weight
  blocks) has more parameters than a GRU (3) and a plain RNN (1): comparisons between cells
  are at equal width, not at equal parameter count (the summary's `params (median)` column).
  `width: params` gives each variant, at each draw, the width whose parameter count (as
  `params` counts it for the task) is nearest to V's at the drawn width, as Chung et al.
  2014 compared cells at about equal parameters (stage `variants_chung`).

Trials run in parallel processes (one CPU thread each). Each trial is an MLflow run in the
experiment `study-variants-<task>` tagged with its variant and this invocation's id; the
report reads the runs back from MLflow (pandas) rather than keeping its own copy.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
import uuid
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_dir, write_text
from pipeline.config import PARAMS, load_params, parse_sets
from pipeline.errors import UserError, cli
from pipeline.pools import stoppable_pool
from studies.common import REPORTS, above_zero, at_least, check_report_dir, distinct, ordered, pyplot, save_png, study_params, write_result, write_table

GREFF = {"V": "lstm-v", "NIG": "lstm-nig", "NFG": "lstm-nfg", "NOG": "lstm-nog", "NIAF": "lstm-niaf", "NOAF": "lstm-noaf",
         "NP": "lstm-np", "CIFG": "lstm-cifg", "FGR": "lstm-fgr", "GRU": "gru", "RNN": "rnn", "LSTM (lecture)": "lstm"}
WIDTHS = ("equal", "params")


@dataclass(frozen=True)
class VariantsParams:
    tasks: tuple[str, ...] = ("jsb", "text")
    variants: tuple[str, ...] = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR", "GRU", "RNN")
    trials: int = 4
    lr_min: float = 1e-3
    lr_max: float = 1e-2
    hidden_min: int = 24
    hidden_max: int = 64
    jsb_max_epochs: int = 100
    jsb_patience: int = 10
    jsb_batch: int = 8
    text_corpus: str = "tinyshakespeare"
    text_budget_chars: int = 300_000
    text_batch: int = 32
    text_seq_len: int = 64
    workers: int = 0  # 0: one per CPU core
    seed: int = 0
    width: str = "equal"  # equal: every variant the drawn hidden size; params: the size nearest to V's parameter count there

    def validate(self, path: str) -> None:
        """Bad settings fail here, in one line, before any training or report file."""
        if not self.tasks:
            raise UserError(f"{PARAMS}: {path}.tasks: empty; list at least one of {', '.join(TASKS)}")
        for t in self.tasks:
            if t not in TASKS:
                raise UserError(f"{PARAMS}: {path}.tasks: unknown task {t!r}; choose from {', '.join(TASKS)}")
        unknown = [v for v in self.variants if v not in GREFF]
        if unknown:
            raise UserError(f"{PARAMS}: {path}.variants: unknown {unknown}; choose from {', '.join(GREFF)}")
        if "V" not in self.variants:
            raise UserError(f"{PARAMS}: {path}.variants: must include V (the baseline of the paired tests); add V")
        if len(set(self.variants)) < 2:
            raise UserError(f"{PARAMS}: {path}.variants: V alone leaves nothing to compare with it; add a variant, e.g. [V, CIFG]")
        distinct(self, path, ("tasks", "variants"))
        at_least(self, path, ("trials", "hidden_min", "jsb_max_epochs", "jsb_patience", "jsb_batch", "text_budget_chars",
                              "text_batch", "text_seq_len"))
        above_zero(self, path, ("lr_min",))
        ordered(self, path, "lr_min", "lr_max")
        ordered(self, path, "hidden_min", "hidden_max")
        at_least(self, path, ("workers",), low=0)  # 0: one per CPU core
        if self.width not in WIDTHS:
            raise UserError(f"{PARAMS}: {path}.width: unknown {self.width!r}; choose {' or '.join(WIDTHS)}")


def trial_settings(hp: VariantsParams) -> list[dict]:
    """The random-search draws: the same (lr, hidden) sequence for every variant (paired draws)."""
    rng = np.random.default_rng(hp.seed)
    draws = [
        {"lr": float(math.exp(rng.uniform(math.log(hp.lr_min), math.log(hp.lr_max)))),
         "hidden": int(round(math.exp(rng.uniform(math.log(hp.hidden_min), math.log(hp.hidden_max))))), "trial": i, "seed": hp.seed + i}
        for i in range(hp.trials)
    ]
    return [{"variant": v, "cell": GREFF[v], **d} for v in hp.variants for d in draws]


def matched_hidden(count, cell: str, target: int) -> int:
    """The width H of `cell` whose parameter count count(cell, H) is nearest to `target`
    (ties: the smaller H). count grows with H, so a doubling then a bisection finds it."""
    hi = 1
    while count(cell, hi) < target:
        hi *= 2
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:  # the smallest H in (hi/2, hi] with count >= target
        mid = (lo + hi) // 2
        if count(cell, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return min((h for h in (hi - 1, hi) if h >= 1), key=lambda h: (abs(count(cell, h) - target), h))


def param_counter(task: str):
    """count(cell, hidden) -> the task's `params` for that cell and width (see the module docstring)."""
    if task == "jsb":
        from studies.music import n_params

        return n_params
    return lambda cell, hidden: text_params(cell, hidden, 2)  # the recurrent layer: the vocabulary does not count


def sized(trials: list[dict], hp: VariantsParams, task: str) -> list[dict]:
    """The trials with the widths `hp.width` asks for: the drawn one (equal), or per variant the one
    nearest to V's parameter count at the drawn width (params; `hidden_drawn` keeps the draw)."""
    if hp.width == "equal":
        return trials
    cached = functools.lru_cache(maxsize=None)(param_counter(task))  # each count builds a model
    return [{**t, "hidden": matched_hidden(cached, t["cell"], cached(GREFF["V"], t["hidden"])), "hidden_drawn": t["hidden"]} for t in trials]


def _jsb_trial(t: dict, hp: dict, data_dir: str) -> dict:
    import torch

    from studies.music import load_chorales, train_music

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    r = train_music(load_chorales(data_dir), t["cell"], t["hidden"], t["lr"], t["seed"], hp["jsb_max_epochs"], hp["jsb_patience"],
                    batch=hp["jsb_batch"])
    return {**t, "val_score": r["val_nll"], "test_score": r["test_nll"], "epochs": r["epochs"], "params": r["params"],
            "seconds": time.perf_counter() - t0}


def text_params(cell: str, hidden: int, vocab: int) -> int:
    """The text task's `params`: the recurrent layer of the one-layer CharRNN built for `vocab`
    symbols. Its input is an embedding of width H, so the count does not depend on the
    vocabulary; the embedding and the softmax layer (2 V H + V) are left out, e.g. GRU, H = 59:
    3 (59 (59 + 59) + 2 x 59) = 21,240."""
    from lightning_modules.lm import CharRNN

    return sum(p.numel() for p in CharRNN(vocab, cell, hidden, 1).rnn.parameters())


def text_steps(hp: dict) -> int:
    """Optimizer steps of a text trial: the character budget over the characters of one batch."""
    return max(1, hp["text_budget_chars"] // (hp["text_batch"] * hp["text_seq_len"]))


TEXT_EVAL_BATCH = 16  # validation streams of a text trial


def _text_trial(t: dict, hp: dict, data_dir: str) -> dict:
    import tempfile

    import torch

    from lightning_modules.train import fit

    torch.set_num_threads(1)
    steps = text_steps(hp)
    cfg = dict(cell=t["cell"], hidden=t["hidden"], layers=1, lr=t["lr"], seed=t["seed"], batch_size=hp["text_batch"],
               seq_len=hp["text_seq_len"], max_steps=steps, val_every=max(1, steps // 4), warmup_steps=min(20, steps // 10),
               progress_every=0, accelerator="cpu", eval_batch=TEXT_EVAL_BATCH, eval_len=512)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        r = fit(cfg, data_dir, tmp)  # best val_loss over the evaluations: early stopping by checkpoint
    vocab = json.loads((Path(data_dir) / "meta.json").read_text())["vocab_size"]
    params = text_params(t["cell"], t["hidden"], vocab)
    return {**t, "val_score": r["best_val_loss"], "test_score": r["best_val_loss"], "epochs": steps, "params": params,
            "seconds": time.perf_counter() - t0}


TASKS = {
    "jsb": {"fn": _jsb_trial, "data": "jsb_chorales", "metric": "test NLL per time step", "higher_is_better": False},
    "text": {"fn": _text_trial, "data": None, "metric": "val loss (nats/char)", "higher_is_better": False},
}


def task_data(hp: VariantsParams, task: str, data_root: Path) -> Path:
    """The prepared data of `task`; missing data is a UserError (run checks every task's before any trial)."""
    data_dir = data_root / (TASKS[task]["data"] or hp.text_corpus)
    if not (data_dir / "meta.json").is_file():
        raise UserError(f"{data_dir}/meta.json: not found; run `dvc repro onehot@{data_dir.name}` first")
    if task == "text":  # scored on the val split by 16 streams (_text_trial's eval_batch)
        val = json.loads((data_dir / "meta.json").read_text()).get("splits", {}).get("val", 0)
        if val < TEXT_EVAL_BATCH + 1:
            raise UserError(f"{data_dir}: the validation split has {val} tokens, and the text task scores each trial on it "
                            f"({TEXT_EVAL_BATCH} streams need {TEXT_EVAL_BATCH + 1}); set onehot.val_frac > 0 and rerun `dvc repro onehot@{data_dir.name}`")
    return data_dir


def run_trials(params, hp: VariantsParams, task: str, invocation: str, data_root: Path) -> list[dict]:
    spec = TASKS[task]
    data_dir = task_data(hp, task, data_root)
    trials = sized(trial_settings(hp), hp, task)
    workers = hp.workers or os.cpu_count() or 1
    uri = None
    if params.tracking.enabled:
        from pipeline import tracking

        uri = tracking.tracking_uri(params)
    results = []
    with stoppable_pool(workers, "spawn") as pool:  # Ctrl-C ends the running trials too
        futs = [pool.submit(spec["fn"], t, asdict(hp), str(data_dir)) for t in trials]
        for f in as_completed(futs):
            r = f.result()
            results.append(r)
            print(f"{task} {r['variant']:>14s} trial {r['trial']}: lr {r['lr']:.2e} H {r['hidden']:3d} -> {r['test_score']:.4f} ({r['seconds']:.0f} s)", flush=True)
            if uri:  # the parent logs: one writer for the store
                from pipeline import tracking

                run_id = tracking.start_run(uri, f"study-variants-{task}", f"{r['variant']}-{r['trial']}",
                                            {k: str(r[k]) for k in ("variant", "cell", "lr", "hidden", "hidden_drawn", "trial", "seed") if k in r},
                                            {"variant": r["variant"], "task": task, "invocation": invocation, "study": "variants"},
                                            source="studies.variants")
                tracking.log_artifacts(uri, run_id, [], {"test_score": r["test_score"], "val_score": r["val_score"],
                                                         "params_count": r["params"], "epochs": r["epochs"], "seconds": r["seconds"]})
                tracking.end_run(uri, run_id)
    return results


def read_back(params, task: str, invocation: str, fallback: list[dict]) -> pd.DataFrame:
    """The trials of this invocation, from MLflow when tracking is on."""
    if not params.tracking.enabled:
        return pd.DataFrame(fallback)
    import mlflow

    from pipeline import tracking

    with tracking.fluent_uri(tracking.tracking_uri(params)):
        df = mlflow.search_runs(experiment_names=[f"study-variants-{task}"], filter_string=f"tags.invocation = '{invocation}'")
    out = pd.DataFrame({
        "variant": df["tags.variant"], "trial": df["params.trial"].astype(int), "lr": df["params.lr"].astype(float),
        "hidden": df["params.hidden"].astype(int),
        "test_score": df["metrics.test_score"], "val_score": df["metrics.val_score"], "params": df["metrics.params_count"].astype(int),
    })
    if "params.hidden_drawn" in df:  # width: params
        out.insert(4, "hidden_drawn", df["params.hidden_drawn"].astype(int))
    return out


PAIR = ["trial"]  # a trial's draw, (lr, hidden), is the same for every variant (trial_settings); two draws may coincide
WILCOXON_MIN_PAIRS = 6  # below this the exact two-sided signed-rank p cannot reach 0.05 (2 / 2^5 = 0.0625)


def holm(p_values) -> np.ndarray:
    """Holm's step-down correction: sort the m finite p-values, p_(1) <= ... <= p_(m);
    adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m:
        order = idx[np.argsort(p[idx], kind="stable")]
        out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def paired_vs_base(trials: pd.DataFrame, v: str, base: str = "V") -> tuple[np.ndarray, float, float, float]:
    """Differences score(v) - score(base) over the draws both ran with finite scores; paired t, its p,
    and the Wilcoxon signed-rank p (NaN below WILCOXON_MIN_PAIRS pairs or with all differences zero)."""
    from scipy import stats

    a = trials.loc[trials.variant == v, PAIR + ["test_score"]]
    b = trials.loc[trials.variant == base, PAIR + ["test_score"]]
    m = a.merge(b, on=PAIR, suffixes=("", "_base"))
    m = m[np.isfinite(m.test_score) & np.isfinite(m.test_score_base)]
    d = (m.test_score - m.test_score_base).to_numpy()
    if len(d) < 2 or not np.any(d != 0):
        return d, float("nan"), float("nan"), float("nan")
    w = float(stats.wilcoxon(d).pvalue) if np.count_nonzero(d) >= WILCOXON_MIN_PAIRS else float("nan")  # zeros are dropped
    if not np.any(d != d[0]):  # the same non-zero difference in every pair: no spread, t is infinite
        return d, math.copysign(math.inf, d[0]), 0.0, w
    t, p = stats.ttest_rel(m.test_score, m.test_score_base)
    return d, float(t), float(p), w


def summarize(trials: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per variant: median, best, mean; against V, the paired t-test over the shared draws with
    Holm's correction over this task's variants (see the module docstring)."""
    rows = []
    for v in order:
        s = trials.loc[trials.variant == v, "test_score"].to_numpy()
        diverged = int((~np.isfinite(s)).sum())
        s = s[np.isfinite(s)]
        if len(s) == 0:  # every trial diverged: named by `reading`, from the trials
            continue
        d, t, p, w = paired_vs_base(trials, v) if v != "V" else (np.array([]), float("nan"), float("nan"), float("nan"))
        n_params = trials.loc[trials.variant == v, "params"] if "params" in trials else pd.Series(dtype=float)
        rows.append({"variant": v, "cell": GREFF[v], "trials": len(s), "diverged": diverged, "median": float(np.median(s)), "best": float(s.min()),
                     "mean": float(s.mean()), "params (median)": int(round(n_params.median())) if len(n_params) else 0,
                     "pairs": len(d), "mean_diff_vs_V": float(d.mean()) if len(d) else float("nan"),
                     "paired_t_vs_V": t, "paired_p": p, "wilcoxon_p": w})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["holm_p"] = holm(out["paired_p"])
    sig = out["holm_p"] < 0.05  # NaN compares False
    out["significant (Holm p<0.05)"] = sig
    out["worse than V"] = sig & (out["mean_diff_vs_V"] > 0)  # lower is better on both tasks
    cols = ["variant", "cell", "trials", "diverged", "median", "best", "mean", "params (median)", "pairs", "mean_diff_vs_V",
            "paired_t_vs_V", "paired_p", "holm_p", "wilcoxon_p", "significant (Holm p<0.05)", "worse than V"]
    return out[cols]


def bigram_nats(data_dir: Path) -> float:
    """Cross-entropy (nats/char) on the val split of a character bigram model counted on the
    training split, add-one smoothed: P(b | a) = (n(a, b) + 1) / (n(a) + V). A model that
    does not beat it has not learned more than which character tends to follow which."""
    V = json.loads((data_dir / "meta.json").read_text())["vocab_size"]
    train = np.load(data_dir / "train.npy").astype(np.int64)
    val = np.load(data_dir / "val.npy").astype(np.int64)
    counts = np.bincount(train[:-1] * V + train[1:], minlength=V * V).reshape(V, V) + 1.0
    logp = np.log(counts / counts.sum(1, keepdims=True))
    return float(-logp[val[:-1], val[1:]].mean())


def reading(task: str, summary: pd.DataFrame, metric: str, baseline: float | None = None, steps: int | None = None,
            order: list[str] | None = None, width: str = "equal") -> str:
    """A paragraph from the numbers: which variants hurt significantly, which do not."""
    s = summary.set_index("variant")
    if "V" not in s.index:
        raise UserError(f"studies.variants: every trial of V on {task} diverged (no finite score), so nothing can be compared with it; "
                        "lower studies.variants.lr_max")
    sig = "significant (Holm p<0.05)"
    worse = [v for v in s.index if s.loc[v, "worse than V"]]
    better = [v for v in s.index if s.loc[v, sig] and not s.loc[v, "worse than V"]]
    same = [v for v in s.index if v != "V" and not s.loc[v, sig]]
    best = s["best"].idxmin()
    n = int((s["trials"] + s["diverged"]).max())
    parts = [f"On {task} ({metric}, lower is better; {n} random-search trials per variant), the best single trial is "
             f"{best} at {s.loc[best, 'best']:.3f}; vanilla V has median {s.loc['V', 'median']:.3f} and best {s.loc['V', 'best']:.3f}."]
    gone = [v for v in (order or []) if v not in s.index]
    if gone or s["diverged"].any():
        parts.append("Diverged (no finite score): " + ", ".join(
            [f"{v} all {n}" for v in gone] + [f"{v} {d} of {n}" for v, d in s["diverged"].items() if d]) + "; the paired test uses the finite pairs only.")
    if baseline is not None:
        above = [v for v in s.index if s.loc[v, "median"] >= baseline]
        parts.append(f"These are early-training numbers{f' after {steps} optimizer steps' if steps else ''}: a character-bigram"
                     f" model counted on the training split scores {baseline:.3f} nats/char on the val split, and the median of"
                     f" {', '.join(above) if above else 'no variant'} is not below it.")
    tested = int(s["holm_p"].notna().sum())
    pairs = s.loc[s.index != "V", "pairs"]
    npairs = f"{pairs.min()}" if pairs.min() == pairs.max() else f"{pairs.min()}-{pairs.max()}"
    test = f"paired t-test over {npairs} shared (lr, hidden) draws, Holm-corrected over the {tested} variants tested, p < 0.05"
    parts.append(f"Significantly worse than V ({test}): {', '.join(worse) if worse else 'none'}.")
    if better:
        parts.append(f"Significantly better than V: {', '.join(better)}.")
    parts.append(f"No significant difference from V: {', '.join(same) if same else 'none'}.")
    if int(pairs.min()) < WILCOXON_MIN_PAIRS:
        k = int(pairs.min())
        parts.append(f"The Wilcoxon signed-rank test is left out: with {k} pairs its smallest two-sided p is"
                     f" {2 / 2**k:.3g}, so it could never reach 0.05.")
    else:
        parts.append("The table's wilcoxon_p (signed-rank test, uncorrected) checks the t-test without assuming normal differences.")
    if n < 10:
        parts.append("With few trials per variant the test has little power: a missing star means 'not shown', not 'equal'.")
    elif {"NOAF", "NFG"} & set(s.index):
        parts.append("Greff et al. found NOAF and NFG the most harmful and CIFG/NP harmless; compare with the list above.")
    elif {"GRU", "RNN"} & set(s.index):
        parts.append("Chung et al. 2014 report, on JSB: GRU 8.54, LSTM 8.67, tanh RNN 9.10 (docs/review.md compares)."
                     + ("" if width == "params" else " The cells share the hidden sizes, so this compares them at equal width, not at"
                        " equal parameters: median parameters " + ", ".join(f"{v} {s.loc[v, 'params (median)']:,.0f}" for v in s.index) + "."))
    if width == "params":
        parts.append("Each cell's width is matched to V's parameter count at every draw, as Chung et al. compared cells:"
                     " median parameters " + ", ".join(f"{v} {s.loc[v, 'params (median)']:,.0f}" for v in s.index)
                     + (" (the recurrent layer's: the embedding and the softmax layer, 2 V H + V for V symbols, grow with"
                        " the width too, so a wider cell has more of those)." if task == "text" else "."))
    return " ".join(parts)


def boxplots(trials_by_task: dict[str, pd.DataFrame], order: list[str], out: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(trials_by_task), figsize=(6.5 * len(trials_by_task), 4.2), squeeze=False)
    for ax, (task, df) in zip(axes[0], trials_by_task.items()):
        vs = [v for v in order if v in set(df.variant)]
        data = [df.loc[df.variant == v, "test_score"].replace([np.inf], np.nan).dropna().to_numpy() for v in vs]
        ax.boxplot(data, tick_labels=vs)
        ax.set_title(f"{task}: {TASKS[task]['metric']}")
        ax.tick_params(axis="x", rotation=60)
        ax.grid(alpha=0.3, axis="y")
        if task == "jsb":
            for val, name, c in ((8.67, "LSTM ref", "tab:blue"), (8.54, "GRU ref", "tab:green"), (9.10, "tanh ref", "tab:red")):
                ax.axhline(val, ls=":", lw=1, color=c, label=f"{name} {val}")
            ax.legend(fontsize=7)
    return save_png(fig, out)


def run(params, out_dir: Path = REPORTS / "variants", data_root: Path = Path("data/onehot")) -> dict:
    hp = study_params(params, "variants", VariantsParams)  # bad settings fail here, before any work
    check_report_dir(out_dir)  # before any work
    for task in hp.tasks:  # and so does a later task's missing data
        task_data(hp, task, data_root)
    invocation = uuid.uuid4().hex[:12]
    order = list(hp.variants)
    by_task, summaries, paragraphs, baselines = {}, {}, [], {}
    steps = text_steps(asdict(hp))
    for task in hp.tasks:
        raw = run_trials(params, hp, task, invocation, data_root)
        trials = read_back(params, task, invocation, raw)
        by_task[task] = trials
        summ = summarize(trials, order)
        summaries[task] = summ
        if task == "text":
            baselines[task] = bigram_nats(data_root / hp.text_corpus)
            paragraphs.append(reading(task, summ, TASKS[task]["metric"], baselines[task], steps, order, hp.width))
        else:
            paragraphs.append(reading(task, summ, TASKS[task]["metric"], order=order, width=hp.width))
    result = {"invocation": invocation, "reading": paragraphs, "bigram_nats_per_char": baselines,
              **({"width": hp.width} if hp.width != "equal" else {}),
              **({"text_steps": steps} if "text" in hp.tasks else {}),
              "best": {t: s.set_index("variant")["best"].to_dict() for t, s in summaries.items()}}
    # the report is made in a folder beside out_dir that replaces it whole at the end: a run that
    # fails half-way leaves the last complete report, not some of its files
    with atomic_dir(out_dir) as out:
        for task in hp.tasks:
            write_table(by_task[task].sort_values(["variant", "test_score"]), out, f"trials_{task}")
            write_table(summaries[task], out, f"summary_{task}")
        boxplots(by_task, order, out / "boxplots.png")
        write_text(out / "reading.md", "\n\n".join(paragraphs) + "\n")
        write_result(out, result)
    if params.tracking.enabled:
        from studies.common import log_study

        log_study(params, "variants", f"report-{invocation}", hp, {},
                  [out_dir / f for f in sorted(os.listdir(out_dir)) if f.endswith((".md", ".csv", ".png", ".json"))], {"invocation": invocation})
    return result


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a param (repeatable), e.g. studies.preset=full or studies.variants.tasks=[jsb]")
    ap.add_argument("--out", default=str(REPORTS / "variants"), help="report folder (default reports/variants)")
    a = ap.parse_args(argv)
    r = run(load_params(a.params, parse_sets(a.set)), Path(a.out))
    print("\n\n".join(r["reading"]))


if __name__ == "__main__":
    main()
