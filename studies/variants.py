"""Study `variants` (slide 13; Greff et al. 2017, "LSTM: A Search Space Odyssey").

    python -m studies.variants       # -> reports/variants/{summary.csv,.md, boxplots.png, reading.md, trials.csv}
    python -m studies.variants --set studies.preset=full --set studies.variants.tasks=[jsb] \
        --set "studies.variants.variants=[V,GRU,RNN]" --out reports/variants_full    # Chung et al.'s three, full preset

Which parts of the LSTM matter? For each variant (V, NIG, NFG, NOG, NIAF, NOAF, NP, CIFG,
FGR, plus GRU and a plain RNN), as in Greff's protocol:
- random search: N trials, learning rate log-uniform in [lr_min, lr_max], hidden size
  log-uniform in [hidden_min, hidden_max], everything else fixed;
- every trial early-stopped on the validation split, then scored on the test split;
- per variant: median and best score; Welch's t-test of its scores against vanilla (V),
  significant at 0.05 marked; box plots like Greff's Fig. 3; a paragraph written from the
  numbers.
Tasks: A, polyphonic music (JSB Chorales, NLL per time step on test; reference, Chung et
al. 2014: tanh 9.10, GRU 8.54, LSTM 8.67); B, characters (Tiny Shakespeare, val loss in
nats/char after a fixed budget of characters; the corpus has no test split).

Trials run in parallel processes (one CPU thread each). Each trial is an MLflow run in the
experiment `study-variants-<task>` tagged with its variant and this invocation's id; the
report reads the runs back from MLflow (pandas) rather than keeping its own copy.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import write_text
from pipeline.config import load_params, parse_sets
from pipeline.errors import UserError, cli
from studies.common import REPORTS, pyplot, save_png, study_params, write_result, write_table

GREFF = {"V": "lstm-v", "NIG": "lstm-nig", "NFG": "lstm-nfg", "NOG": "lstm-nog", "NIAF": "lstm-niaf", "NOAF": "lstm-noaf",
         "NP": "lstm-np", "CIFG": "lstm-cifg", "FGR": "lstm-fgr", "GRU": "gru", "RNN": "rnn", "LSTM (lecture)": "lstm"}


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


def trial_settings(hp: VariantsParams) -> list[dict]:
    """The random-search draws: the same (lr, hidden) sequence for every variant (paired draws)."""
    rng = np.random.default_rng(hp.seed)
    draws = [
        {"lr": float(math.exp(rng.uniform(math.log(hp.lr_min), math.log(hp.lr_max)))),
         "hidden": int(round(math.exp(rng.uniform(math.log(hp.hidden_min), math.log(hp.hidden_max))))), "trial": i, "seed": hp.seed + i}
        for i in range(hp.trials)
    ]
    return [{"variant": v, "cell": GREFF[v], **d} for v in hp.variants for d in draws]


def _jsb_trial(t: dict, hp: dict, data_dir: str) -> dict:
    import torch

    from studies.music import load_chorales, train_music

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    r = train_music(load_chorales(data_dir), t["cell"], t["hidden"], t["lr"], t["seed"], hp["jsb_max_epochs"], hp["jsb_patience"],
                    batch=hp["jsb_batch"])
    return {**t, "val_score": r["val_nll"], "test_score": r["test_nll"], "epochs": r["epochs"], "params": r["params"],
            "seconds": time.perf_counter() - t0}


def _text_trial(t: dict, hp: dict, data_dir: str) -> dict:
    import tempfile

    import torch

    from lightning_modules.train import fit

    torch.set_num_threads(1)
    steps = max(1, hp["text_budget_chars"] // (hp["text_batch"] * hp["text_seq_len"]))
    cfg = dict(cell=t["cell"], hidden=t["hidden"], layers=1, lr=t["lr"], seed=t["seed"], batch_size=hp["text_batch"],
               seq_len=hp["text_seq_len"], max_steps=steps, val_every=max(1, steps // 4), warmup_steps=min(20, steps // 10),
               progress_every=0, accelerator="cpu", eval_batch=16, eval_len=512)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        r = fit(cfg, data_dir, tmp)  # best val_loss over the evaluations: early stopping by checkpoint
    from lightning_modules.lm import CharRNN

    params = sum(p.numel() for p in CharRNN(65, t["cell"], t["hidden"], 1).rnn.parameters())
    return {**t, "val_score": r["best_val_loss"], "test_score": r["best_val_loss"], "epochs": steps, "params": params,
            "seconds": time.perf_counter() - t0}


TASKS = {
    "jsb": {"fn": _jsb_trial, "data": "jsb_chorales", "metric": "test NLL per time step", "higher_is_better": False},
    "text": {"fn": _text_trial, "data": None, "metric": "val loss (nats/char)", "higher_is_better": False},
}


def run_trials(params, hp: VariantsParams, task: str, invocation: str, data_root: Path) -> list[dict]:
    spec = TASKS[task]
    data_dir = data_root / (spec["data"] or hp.text_corpus)
    if not (data_dir / "meta.json").is_file():
        raise UserError(f"{data_dir}/meta.json: not found; run `dvc repro onehot@{data_dir.name}` first")
    trials = trial_settings(hp)
    workers = hp.workers or os.cpu_count() or 1
    uri = None
    if params.tracking.enabled:
        from pipeline import tracking

        uri = tracking.tracking_uri(params)
    results = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futs = [pool.submit(spec["fn"], t, asdict(hp), str(data_dir)) for t in trials]
        for f in as_completed(futs):
            r = f.result()
            results.append(r)
            print(f"{task} {r['variant']:>14s} trial {r['trial']}: lr {r['lr']:.2e} H {r['hidden']:3d} -> {r['test_score']:.4f} ({r['seconds']:.0f} s)", flush=True)
            if uri:  # the parent logs: one writer for the store
                from pipeline import tracking

                run_id = tracking.start_run(uri, f"study-variants-{task}", f"{r['variant']}-{r['trial']}",
                                            {k: str(r[k]) for k in ("variant", "cell", "lr", "hidden", "trial", "seed")},
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
    return pd.DataFrame({
        "variant": df["tags.variant"], "lr": df["params.lr"].astype(float), "hidden": df["params.hidden"].astype(int),
        "test_score": df["metrics.test_score"], "val_score": df["metrics.val_score"], "params": df["metrics.params_count"].astype(int),
    })


def summarize(trials: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    from scipy import stats

    base = trials.loc[trials.variant == "V", "test_score"].to_numpy()
    rows = []
    for v in order:
        s = trials.loc[trials.variant == v, "test_score"].to_numpy()
        s = s[np.isfinite(s)]
        if len(s) == 0:
            continue
        if v != "V" and len(base) >= 2 and len(s) >= 2:
            t, p = stats.ttest_ind(s, base, equal_var=False)
        else:
            t, p = float("nan"), float("nan")
        rows.append({"variant": v, "cell": GREFF[v], "trials": len(s), "median": float(np.median(s)), "best": float(s.min()),
                     "mean": float(s.mean()), "welch_t_vs_V": float(t), "p_value": float(p),
                     "significant (p<0.05)": bool(p < 0.05) if np.isfinite(p) else False,
                     "worse than V": bool(p < 0.05 and s.mean() > base.mean()) if np.isfinite(p) else False})
    return pd.DataFrame(rows)


def reading(task: str, summary: pd.DataFrame, metric: str) -> str:
    """A paragraph from the numbers: which variants hurt significantly, which do not."""
    s = summary.set_index("variant")
    worse = [v for v in s.index if s.loc[v, "worse than V"]]
    better = [v for v in s.index if s.loc[v, "significant (p<0.05)"] and not s.loc[v, "worse than V"]]
    same = [v for v in s.index if v != "V" and not s.loc[v, "significant (p<0.05)"]]
    best = s["best"].idxmin()
    n = int(s["trials"].min())
    parts = [f"On {task} ({metric}, lower is better; {n} random-search trials per variant), the best single trial is "
             f"{best} at {s.loc[best, 'best']:.3f}; vanilla V has median {s.loc['V', 'median']:.3f} and best {s.loc['V', 'best']:.3f}."]
    parts.append(f"Significantly worse than V (Welch's t-test, p < 0.05): {', '.join(worse) if worse else 'none'}.")
    if better:
        parts.append(f"Significantly better than V: {', '.join(better)}.")
    parts.append(f"No significant difference from V: {', '.join(same) if same else 'none'}.")
    if n < 10:
        parts.append("With few trials per variant the test has little power: a missing star means 'not shown', not 'equal'.")
    elif {"NOAF", "NFG"} & set(s.index):
        parts.append("Greff et al. found NOAF and NFG the most harmful and CIFG/NP harmless; compare with the list above.")
    elif {"GRU", "RNN"} & set(s.index):
        parts.append("Chung et al. 2014 report, on JSB: GRU 8.54, LSTM 8.67, tanh RNN 9.10 (docs/review.md compares).")
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
    hp = study_params(params, "variants", VariantsParams)
    unknown = [v for v in hp.variants if v not in GREFF]
    if unknown:
        raise UserError(f"studies.variants.variants: unknown {unknown}; choose from {', '.join(GREFF)}")
    if "V" not in hp.variants:
        raise UserError("studies.variants.variants: must include V (the baseline of the t-tests)")
    for t in hp.tasks:
        if t not in TASKS:
            raise UserError(f"studies.variants.tasks: unknown task {t!r}; choose from {', '.join(TASKS)}")
    invocation = uuid.uuid4().hex[:12]
    order = list(hp.variants)
    by_task, summaries, paragraphs = {}, {}, []
    for task in hp.tasks:
        raw = run_trials(params, hp, task, invocation, data_root)
        trials = read_back(params, task, invocation, raw)
        by_task[task] = trials
        write_table(trials.sort_values(["variant", "test_score"]), out_dir, f"trials_{task}")
        summ = summarize(trials, order)
        summaries[task] = summ
        write_table(summ, out_dir, f"summary_{task}")
        paragraphs.append(reading(task, summ, TASKS[task]["metric"]))
    boxplots(by_task, order, out_dir / "boxplots.png")
    write_text(out_dir / "reading.md", "\n\n".join(paragraphs) + "\n")
    result = {"invocation": invocation, "reading": paragraphs,
              "best": {t: s.set_index("variant")["best"].to_dict() for t, s in summaries.items()}}
    write_result(out_dir, result)
    if params.tracking.enabled:
        from studies.common import log_study

        log_study(params, "variants", f"report-{invocation}", hp, {},
                  [out_dir / f for f in os.listdir(out_dir) if f.endswith((".md", ".csv", ".png", ".json"))], {"invocation": invocation})
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
