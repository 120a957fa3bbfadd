"""Study `vanishing` (slide 5): how far back the error signal reaches in RNN, LSTM and GRU.

    python -m studies.vanishing      # -> reports/vanishing/{adding,adding_seeds,gradient_lag,gradient_ratio}.{csv,md}, adding.png, gradient_lag.png

1. The adding problem at T = 20, 50, 100 (and more in the `full` preset) for a plain RNN,
   an LSTM and a GRU with the same number of parameters and the same budget: final test
   MSE and the share of test sequences solved (|error| < 0.04). A constant guess of 0.5
   has MSE 1/24 = 0.042 and solves a - a^2/4 = 15.4% of them, a = 0.16 (studies/adding.py
   derives it; the plot's dotted line).
2. How much the loss at the last step depends on each earlier input: the norm of
   dL_T/dx_t against the lag T - t, averaged over sequences, for each cell at
   initialisation and after training on the adding problem at the longest T; log scale.

Every (cell, T) is trained from `repeats` seeds (seed, seed + 1, ...; params.yaml sets 5): a
seed sets the initial weights and the training batches, each drawn from a stream of its own
(studies/adding.py: stream). `adding.md` gives the mean over the seeds (the share solved with
its sample standard deviation) and how many seeds solved the task (accuracy > 0.95);
`adding_seeds.md` every run; `gradient_ratio.md` each model's far/near ratio at T_max, trained
and at initialisation, beside whether that model solved the task.

The tables report what the runs give, whatever it is. In the committed runs
(reports/vanishing, seeds 0-4) the outcome depends on the seed, which one run could not show:
- T = 20: the RNN solves it in 3 of 5 seeds (0.976-0.989; the others 0.16 and 0.34), the LSTM
  and the GRU in 5 of 5;
- T = 50: the RNN in none (0.14-0.15, the constant guess's), the LSTM in 4 of 5 (one at
  0.14), the GRU in 5 of 5;
- T = 100: the RNN and the LSTM of 32 units in none (0.15-0.16), the GRU in 2 of 5 (1.0000,
  0.9990; two more half-way, 0.70 and 0.86; one at 0.159).
So with equal parameters and budget the plain RNN's reach ends between 20 and 50 steps, the
LSTM-32's between 50 and 100, and the GRU's reaches 100 in some seeds only. The far/near
gradient ratio follows the models, not the cells: 0.54-1.53 for the four GRUs that learned the
task at T = 100 (the half-way ones included), 1.2e-10 for the GRU that did not, 2e-9 to 2e-7
for the LSTMs and below 3e-17 for the RNNs, against below 1e-6 at initialisation in every
model: training raised it above 0.01 only in the models that learned the task. So the runs
show the gradient reaching back in the models that learned the task, not that a gated cell
keeps it by construction. (Two earlier versions drew each run's batches from the same random
stream as another run's or its own initial weights, torch keeping only a seed's low 32 bits;
their counts differed, e.g. the RNN solved T = 20 in 0 of 3 seeds.) Read the ratio with
care: for a model left at the constant guess's accuracy it describes a model that ignores the
early inputs; and the marks fall in
the first half only, so a solver learns to ignore the near window (the smallest tenth of
the lags: the last time steps), which raises the ratio as well. dL_T/dx_t thus mixes what the task asks for with
how far the gradient travels.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.atomic import atomic_dir
from pipeline.config import PARAMS, load_params, parse_sets
from pipeline.errors import UserError, cli
from pipeline.pools import stoppable_pool
from studies.adding import CHANCE_ACCURACY, SOLVED, Regressor, gradient_by_lag, hidden_for, initial_model, n_params, test_adding, train_adding
from studies.common import REPORTS, Repeated, above_zero, at_least, check_report_dir, distinct, log_study, pyplot, save_png, study_params, write_result, write_table


@dataclass(frozen=True)
class VanishingParams(Repeated):
    cells: tuple[str, ...] = ("rnn", "lstm", "gru")
    lengths: tuple[int, ...] = (20, 50, 100)
    lstm_hidden: int = 32  # the LSTM's size; the others get the same parameter count
    steps: int = 6000
    batch: int = 64
    lr: float = 3e-3
    seed: int = 0
    repeats: int = 1  # seeds seed, seed + 1, ...: every (cell, T) trained once from each
    test_sequences: int = 2000
    workers: int = 0  # parallel trainings; 0: one per CPU core

    def validate(self, path: str) -> None:
        """Bad settings fail here, in one line, before any training or report file."""
        from lightning_modules.names import CELLS

        if not self.cells:
            raise UserError(f"{PARAMS}: {path}.cells: empty; list at least one of {', '.join(CELLS)}")
        bad = [c for c in self.cells if c not in CELLS]
        if bad:
            raise UserError(f"{PARAMS}: {path}.cells: unknown {bad}; choose from {', '.join(CELLS)}")
        if not self.lengths:
            raise UserError(f"{PARAMS}: {path}.lengths: empty; list at least one sequence length T >= 4, e.g. [20, 50, 100]")
        if any(T < 4 for T in self.lengths):
            raise UserError(f"{PARAMS}: {path}.lengths: every T must be >= 4, got {list(self.lengths)}; raise the short ones")
        distinct(self, path, ("cells", "lengths"))
        at_least(self, path, ("steps", "batch", "lstm_hidden", "test_sequences", "repeats"))
        above_zero(self, path, ("lr",))
        at_least(self, path, ("workers",), low=0)  # 0: one per CPU core (a seed below 0 is refused with the other params)


def _train_one(cell: str, H: int, T: int, seed: int, hp: VanishingParams):
    """One adding-problem training in a worker process (one CPU thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t = time.perf_counter()
    model = train_adding(cell, H, T, hp.steps, hp.batch, hp.lr, seed)
    secs = time.perf_counter() - t
    result = test_adding(model, T, hp.test_sequences), secs, model.state_dict()
    torch.set_num_threads(threads)
    return result


def _jobs(hp: VanishingParams, hidden: dict[str, int]) -> list[tuple[str, int, int, int]]:
    """(cell, hidden, T, seed) for every training, the longest sequences first so that the
    slowest trainings start first and the pool's workers finish together."""
    return [(cell, hidden[cell], T, seed) for T in sorted(hp.lengths, reverse=True) for seed in hp.seeds for cell in hp.cells]


def _summary(runs: list[dict], hp: VanishingParams) -> list[dict]:
    """One row per (T, cell): the mean over the seeds of the test MSE, the share solved and the
    training time; the share's sample standard deviation when there are several seeds; how many
    seeds solved the task (accuracy > 0.95)."""
    rows = []
    for T in hp.lengths:
        for cell in hp.cells:
            rs = [r for r in runs if r["T"] == T and r["cell"] == cell]
            acc = [r["accuracy"] for r in rs]
            row = {"T": T, "cell": cell, "hidden": rs[0]["hidden"], "params": rs[0]["params"], "steps": hp.steps,
                   "test_mse": statistics.fmean(r["test_mse"] for r in rs), "accuracy": round(statistics.fmean(acc), 4)}
            if len(rs) > 1:
                row["accuracy_sd"] = round(statistics.stdev(acc), 4)
            row |= {"seeds solved (acc > 0.95)": sum(r["solved"] for r in rs), "seeds": len(rs),
                    "train_s": round(statistics.fmean(r["train_s"] for r in rs), 1)}
            rows.append(row)
    return rows


def _gradients(hp: VanishingParams, hidden: dict[str, int], T: int, models: dict) -> pd.DataFrame:
    """||dL_T/dx_t|| against the lag at the longest T, for each cell and seed: the weights the
    training started from (the same seed's initialisation) and the trained ones."""
    rows = []
    for cell in hp.cells:
        for seed in hp.seeds:
            for state, model in (("init", initial_model(cell, hidden[cell], seed)), ("trained", models[(cell, T, seed)])):
                g = gradient_by_lag(model, T)
                rows += [{"cell": cell, "seed": seed, "weights": state, "lag": T - 1 - t, "grad_norm": float(g[t])} for t in range(T)]
    return pd.DataFrame(rows)


def _ratios(grads: pd.DataFrame, T: int, runs: list[dict], hp: VanishingParams) -> list[dict]:
    """Per model at the longest T: the mean gradient over the far end (the last 10% of lags) over
    that of the near end (the first 10%), trained and at its initialisation, beside whether the
    trained model solved the task."""
    ratio = {}
    for state, d in grads.groupby("weights"):
        far = d[d.lag >= int(0.9 * T)].groupby(["cell", "seed"])["grad_norm"].mean()
        near = d[d.lag < max(1, T // 10)].groupby(["cell", "seed"])["grad_norm"].mean()
        ratio[state] = far / near
    run = {(r["cell"], r["seed"]): r for r in runs if r["T"] == T}
    return [{"cell": cell, "seed": seed, "accuracy": run[(cell, seed)]["accuracy"], "solved": run[(cell, seed)]["solved"],
             "far_to_near": float(ratio["trained"][(cell, seed)]), "far_to_near_init": float(ratio["init"][(cell, seed)])}
            for cell in hp.cells for seed in hp.seeds]


def _plots(out: Path, grads: pd.DataFrame, table: pd.DataFrame, runs: list[dict], T: int) -> None:
    plt = pyplot()
    colors = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (cell, state), d in grads.groupby(["cell", "weights"]):
        for i, (_, s) in enumerate(d.groupby("seed")):  # one line per seed, one legend entry per cell and state
            ax.semilogy(s["lag"], s["grad_norm"].clip(lower=1e-30), "--" if state == "init" else "-", color=colors.get(cell),
                        alpha=0.8 if state == "trained" else 0.45, lw=1.2, label=f"{cell} ({state})" if i == 0 else None)
    ax.set_xlabel("lag T - t (steps between input x_t and the loss at T)")
    ax.set_ylabel("mean ||dL_T / dx_t||")
    seeds = grads["seed"].nunique()
    ax.set_title(f"How far back the gradient reaches (adding problem, T = {T})" + (f", {seeds} seeds" if seeds > 1 else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_png(fig, out / "gradient_lag.png")

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    cells = list(dict.fromkeys(table["cell"]))
    step = 0.012 * (table["T"].max() - table["T"].min() or 1)  # the cells side by side at each T, not on top of each other
    for i, cell in enumerate(cells):
        d, shift = table[table.cell == cell], (i - (len(cells) - 1) / 2) * step
        ax.plot(d["T"] + shift, d["accuracy"], "o-", color=colors.get(cell), label=f"{cell} (mean)" if seeds > 1 else cell)
        if seeds > 1:  # every run as a dot: a mean of 0.7 may be two solved seeds and one at chance
            each = [r for r in runs if r["cell"] == cell]
            ax.plot([r["T"] + shift for r in each], [r["accuracy"] for r in each], "x", ms=5, alpha=0.7, color=colors.get(cell))
    ax.axhline(CHANCE_ACCURACY, color="gray", ls=":", lw=1, label=f"constant 0.5 ({CHANCE_ACCURACY:.1%})")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(f"test sequences solved (|err| < {SOLVED})")
    ax.set_ylim(0, 1.02)
    ax.set_title("Adding problem, equal parameters and budget" + (f" ({seeds} seeds: x each, o mean)" if seeds > 1 else ""))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_png(fig, out / "adding.png")


FILES = ("adding.md", "adding.csv", "adding_seeds.md", "adding_seeds.csv", "gradient_lag.md", "gradient_lag.csv",
         "gradient_ratio.md", "gradient_ratio.csv", "gradient_lag.png", "adding.png", "result.json")


def run(params, out_dir: Path = REPORTS / "vanishing") -> dict:
    hp = study_params(params, "vanishing", VanishingParams)
    check_report_dir(out_dir)  # before any work
    budget = n_params("lstm", hp.lstm_hidden)
    hidden = {cell: hidden_for(cell, budget) for cell in hp.cells}  # the same parameter count as the LSTM's
    counts = {cell: n_params(cell, hidden[cell]) for cell in hp.cells}
    jobs = _jobs(hp, hidden)
    runs, models = [], {}
    workers = min(hp.workers or os.cpu_count() or 1, len(jobs))
    with stoppable_pool(workers, "spawn") if workers > 1 else contextlib.nullcontext() as pool:  # Ctrl-C ends the trainings too
        results = [pool.submit(_train_one, c, H, T, s, hp) for c, H, T, s in jobs] if pool else [_train_one(c, H, T, s, hp) for c, H, T, s in jobs]
        for (cell, H, T, seed), res in zip(jobs, results):
            m, secs, state = res.result() if pool else res
            model = Regressor(cell, H)
            model.load_state_dict(state)
            solved = m["accuracy"] > 0.95  # before rounding
            m = {**m, "accuracy": round(m["accuracy"], 4)}  # a share of test_sequences, not float32 noise
            runs.append({"T": T, "cell": cell, "seed": seed, "hidden": H, "params": counts[cell], **m,
                         "solved": solved, "train_s": round(secs, 1)})
            models[(cell, T, seed)] = model
            print(f"adding T={T:4d} {cell:5s} H={H:3d} seed {seed}: test MSE {m['test_mse']:.5f}, accuracy {m['accuracy']:.3f} ({secs:.0f} s)",
                  flush=True)
            name = f"adding-{cell}-T{T}" + (f"-seed{seed}" if hp.repeats > 1 else "")
            log_study(params, "vanishing", name, {"cell": cell, "T": T, "hidden": H, **vars(hp), "seed": seed}, m, [])
    runs.sort(key=lambda r: (hp.lengths.index(r["T"]), r["seed"], hp.cells.index(r["cell"])))
    rows = _summary(runs, hp)
    table = pd.DataFrame(rows)

    T = max(hp.lengths)  # gradient norm against lag at the longest T: initial vs trained weights
    grads = _gradients(hp, hidden, T, models)
    ratios = _ratios(grads, T, runs, hp)
    result = {
        "adding": rows,
        "adding_seeds": runs,
        "seeds": hp.seeds,
        "gradient_ratio": ratios,  # each trained model's far/near ratio at T_gradient, beside whether it solved the task
        # the lower median over the seeds: one model's own ratio, also for an even number of seeds
        "far_to_near_gradient_ratio": {c: statistics.median_low(r["far_to_near"] for r in ratios if r["cell"] == c) for c in hp.cells},
        "T_gradient": T,
        "params_budget": budget,
        "solved_below": SOLVED,  # |error| under which a test sequence counts as solved
        "chance_accuracy": CHANCE_ACCURACY,  # the share the constant guess 0.5 solves (studies/adding.py)
    }
    # the report is made in a folder beside out_dir that replaces it whole at the end: a run that
    # fails half-way leaves the last complete report, not some of its files
    with atomic_dir(out_dir) as out:
        write_table(table, out, "adding")
        write_table(pd.DataFrame(runs).drop(columns=["hidden", "params"]), out, "adding_seeds")
        write_table(grads, out, "gradient_lag", floatfmt=".3e")
        write_table(pd.DataFrame(ratios), out, "gradient_ratio")
        _plots(out, grads, table, runs, T)
        write_result(out, result)
    log_study(params, "vanishing", "report", hp, {f"far_near_ratio_{c}": v for c, v in result["far_to_near_gradient_ratio"].items()},
              [out_dir / f for f in FILES])
    return result


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a param (repeatable)")
    a = ap.parse_args(argv)
    r = run(load_params(a.params, parse_sets(a.set)))
    print((REPORTS / "vanishing" / "adding.md").read_text())
    print((REPORTS / "vanishing" / "gradient_ratio.md").read_text())
    print("far/near gradient ratio after training (the lower median over the seeds):", {k: f"{v:.2e}" for k, v in r["far_to_near_gradient_ratio"].items()})


if __name__ == "__main__":
    main()
