"""Study `tasks` (slides 2-3): the recurrent neuron, and two tasks besides generating text.

    python -m studies.tasks      # -> reports/tasks/{unrolled,classify,forecast}.{csv,md}, tasks.png, result.json

1. The recurrent layer unrolled (slide 3): a perceptron of T layers that share weights
   computes what the layer computes, and BPTT's gradient is the sum of its layers'
   (`studies/unrolled.py`).
2. Sequence classification (slide 3: "recurrent layers compute a feature representation of
   the input sequence, a perceptron classifies it"): which of the lecture's corpora
   (Shakespeare, the Stacks LaTeX, Linux C) is a snippet from? One-hot characters ->
   recurrent layer -> at every step a perceptron on the state:

       h_t = Cell(x_t, h_{t-1}),   P(corpus | c_1..c_t) = softmax(W_2 tanh(W_1 h_t + b_1) + b_2)

   trained on the mean cross-entropy over t, so the accuracy after t characters is read
   off the same model for every t; against naive Bayes on the characters (`studies/snippets.py`).
3. Forecasting (slide 2's stock-index prediction) on a synthetic index with hidden market
   regimes whose best forecast is known exactly (`studies/regimes.py`): returns ->
   recurrent layer -> linear read-out of the next return, trained on the mean square error,
   against the naive forecast, a least-squares AR(p) and the regime filter (the optimum).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.names import CELLS
from lightning_modules.onehot import onehot
from lightning_modules.recurrent import RecurrentStack
from pipeline.atomic import atomic_dir
from pipeline.config import load_params, parse_sets
from pipeline.errors import UserError, cli
from studies import regimes, snippets, unrolled
from studies.common import REPORTS, check_report_dir, log_study, pyplot, save_png, study_params, write_result, write_table


@dataclass(frozen=True)
class TasksParams:
    cells: tuple[str, ...] = ("rnn", "gru", "lstm")  # one model per cell and task: any of train.cell
    lr: float = 3.0e-3
    seed: int = 0
    unrolled_steps: int = 12
    classify_corpora: tuple[str, ...] = ("tinyshakespeare", "stacks", "linux")
    classify_len: int = 64
    classify_hidden: int = 64
    classify_batch: int = 48
    classify_steps: int = 600
    classify_val: int = 500  # validation snippets per corpus
    forecast_phis: tuple[float, ...] = (-0.5, 0.7)  # AR(1) coefficient of each regime
    forecast_stay: float = 0.98  # P(the regime stays the next day)
    forecast_sigma: float = 1.0
    forecast_train_series: int = 200
    forecast_test_series: int = 40
    forecast_series_len: int = 1000
    forecast_len: int = 128  # training window
    forecast_warmup: int = 50  # steps of each series no forecast is scored on (every method alike)
    forecast_hidden: int = 32
    forecast_batch: int = 32
    forecast_steps: int = 800
    ar_order: int = 8


def check(hp: TasksParams) -> None:
    """Every setting the study cannot run with, as one line, before anything trains."""
    bad = [c for c in hp.cells if c not in CELLS]
    if bad or not hp.cells or len(set(hp.cells)) != len(hp.cells):
        raise UserError(f"studies.tasks.cells: {bad or list(hp.cells)} is not a list of different cells; choose from {', '.join(CELLS)}")
    names = list(hp.classify_corpora)
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"studies.tasks.classify_corpora: needs 2 or more different corpora, got {names}")
    for key in ("unrolled_steps", "classify_len", "classify_hidden", "classify_steps", "classify_val", "forecast_hidden",
                "forecast_steps", "forecast_batch", "forecast_train_series", "forecast_test_series", "ar_order"):
        if getattr(hp, key) < 1:
            raise UserError(f"studies.tasks.{key}: must be >= 1, got {getattr(hp, key)}")
    if hp.classify_batch < len(names):
        raise UserError(f"studies.tasks.classify_batch: {hp.classify_batch} is fewer than one snippet per corpus ({len(names)}); raise it")
    if hp.classify_batch % len(names):
        raise UserError(f"studies.tasks.classify_batch: {hp.classify_batch} does not split evenly over {len(names)} corpora; "
                        f"use a multiple of {len(names)}, e.g. {hp.classify_batch // len(names) * len(names)}")
    if not hp.forecast_phis or any(abs(p) >= 1 for p in hp.forecast_phis):
        raise UserError(f"studies.tasks.forecast_phis: each regime's AR(1) coefficient must be in (-1, 1), got {list(hp.forecast_phis)}")
    if not 0 < hp.forecast_stay < 1 or hp.forecast_sigma <= 0:
        raise UserError(f"studies.tasks: forecast_stay must be in (0, 1) and forecast_sigma > 0, got {hp.forecast_stay} and {hp.forecast_sigma}")
    if not (2 <= hp.forecast_len <= hp.forecast_series_len and 0 <= hp.forecast_warmup < hp.forecast_len - 1):
        raise UserError(f"studies.tasks: needs 0 <= forecast_warmup < forecast_len - 1 and 2 <= forecast_len <= forecast_series_len "
                        f"(a training window scores forecast_len - 1 - forecast_warmup next returns), got "
                        f"{hp.forecast_warmup}, {hp.forecast_len}, {hp.forecast_series_len}")
    if hp.ar_order >= hp.forecast_series_len:
        raise UserError(f"studies.tasks.ar_order: {hp.ar_order} must be below forecast_series_len={hp.forecast_series_len}")


def prefixes(length: int) -> list[int]:
    """1, 2, 4, ... up to and including `length`."""
    out = [1 << k for k in range(length.bit_length()) if 1 << k <= length]
    return out if out[-1] == length else out + [length]


class Classifier(nn.Module):
    """one-hot characters -> recurrent layer -> a perceptron on every step's state -> corpus logits."""

    def __init__(self, cell: str, vocab: int, hidden: int, classes: int):
        super().__init__()
        self.vocab = vocab
        self.rnn = RecurrentStack(cell, vocab, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, classes))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(onehot(ids, self.vocab))
        return self.head(y)  # (B, T, classes): the class after each prefix


def classify(data: snippets.Corpora, cell: str, hp: TasksParams) -> tuple[np.ndarray, dict]:
    """Train one classifier; its predicted corpus after each prefix of the validation snippets (n, length)."""
    rng = np.random.default_rng(hp.seed)  # every cell sees the same snippets
    torch.manual_seed(hp.seed)
    k = len(data.names)
    model = Classifier(cell, len(data.alphabet), hp.classify_hidden, k)
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr)
    per = hp.classify_batch // k
    y = torch.arange(k).repeat_interleave(per)
    t0, losses = time.perf_counter(), []
    for _ in range(hp.classify_steps):
        x = torch.from_numpy(np.concatenate([data.windows(c, "train", per, hp.classify_len, rng) for c in range(k)]))
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, k), y.repeat_interleave(hp.classify_len))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0
    xv, _ = validation_snippets(data, hp)
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(xv)).argmax(-1).numpy()
    return pred, {"train_s": round(train_s, 1), "final_train_loss": float(np.mean(losses[-20:]))}


def validation_snippets(data: snippets.Corpora, hp: TasksParams) -> tuple[np.ndarray, np.ndarray]:
    """classify_val snippets of each corpus's validation split (the same for every model) and their labels."""
    vrng = np.random.default_rng(hp.seed + 1)
    k = len(data.names)
    x = np.concatenate([data.windows(c, "val", hp.classify_val, hp.classify_len, vrng) for c in range(k)])
    return x, np.repeat(np.arange(k), hp.classify_val)


def classify_all(data: snippets.Corpora, hp: TasksParams) -> tuple[pd.DataFrame, dict]:
    """Accuracy after 1, 2, 4, ... characters: one column per cell, then naive Bayes."""
    xv, yv = validation_snippets(data, hp)
    ps = prefixes(hp.classify_len)
    table, info = pd.DataFrame({"prefix_chars": ps}), {"alphabet": len(data.alphabet), "val_snippets": int(len(yv)), "cells": {}}
    for cell in hp.cells:
        pred, info["cells"][cell] = classify(data, cell, hp)
        table[cell] = [float((pred[:, p - 1] == yv).mean()) for p in ps]
        confusion = pd.crosstab(pd.Series([data.names[i] for i in yv], name="corpus"),
                                pd.Series([data.names[i] for i in pred[:, -1]], name="predicted"))
        info["cells"][cell]["confusion"] = confusion.to_dict("index")  # {corpus: {predicted: snippets}}
    table["naive_bayes"] = snippets.naive_bayes_accuracy(data.unigram_logp(), xv, yv, ps)
    return table, info


class Forecaster(nn.Module):
    """returns -> recurrent layer -> a linear read-out of the next return."""

    def __init__(self, cell: str, hidden: int):
        super().__init__()
        self.rnn = RecurrentStack(cell, 1, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(r.unsqueeze(-1))
        return self.out(y).squeeze(-1)  # pred[:, t] of r_{t+1}


def series(hp: TasksParams):
    """The training and test series (the same for every model): returns and regimes."""
    rng = np.random.default_rng(hp.seed)
    args = (hp.forecast_phis, hp.forecast_stay, hp.forecast_sigma)
    train, _ = regimes.simulate(hp.forecast_train_series, hp.forecast_series_len, *args, rng)
    test, test_regimes = regimes.simulate(hp.forecast_test_series, hp.forecast_series_len, *args, rng)
    return train, test, test_regimes


def forecast(train: np.ndarray, test: np.ndarray, cell: str, hp: TasksParams) -> tuple[np.ndarray, float]:
    """Train one forecaster on `train`; its forecasts of test[:, 1:] and the training seconds."""
    rng = np.random.default_rng(hp.seed + 2)
    torch.manual_seed(hp.seed)
    model = Forecaster(cell, hp.forecast_hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr)
    w, warm = hp.forecast_len, hp.forecast_warmup
    t0 = time.perf_counter()
    for _ in range(hp.forecast_steps):
        rows = rng.integers(0, len(train), hp.forecast_batch)
        starts = rng.integers(0, hp.forecast_series_len - w + 1, hp.forecast_batch)
        win = torch.from_numpy(np.stack([train[i, s: s + w] for i, s in zip(rows, starts)])).float()
        pred = model(win[:, :-1])
        loss = F.mse_loss(pred[:, warm:], win[:, 1 + warm:])  # check(): warm < w - 1, so at least one return is scored
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(test[:, :-1]).float()).double().numpy(), round(train_s, 1)


def forecast_all(hp: TasksParams) -> tuple[pd.DataFrame, dict, tuple]:
    """Mean square error of each forecast of the next return on the test series, after forecast_warmup days:
    naive, AR(p), one row per cell, the regime filter; R^2 against the naive forecast and the share of the optimum's gain."""
    train, test, test_regimes = series(hp)
    coef = regimes.fit_ar(train, hp.ar_order)
    oracle_pred, posts = regimes.oracle(test, hp.forecast_phis, hp.forecast_stay, hp.forecast_sigma)
    preds, info = {"naive (index unchanged)": np.zeros_like(test[:, 1:]), f"AR({hp.ar_order}), least squares": regimes.ar_predict(test, coef)}, {}
    for cell in hp.cells:
        preds[f"{cell}, {hp.forecast_hidden} units"], info[cell] = forecast(train, test, cell, hp)
    preds["regime filter (the optimum)"] = oracle_pred
    target, warm = test[:, 1:], hp.forecast_warmup
    mse = {k: float(((p - target)[:, warm:] ** 2).mean()) for k, p in preds.items()}
    naive, best = mse["naive (index unchanged)"], mse["regime filter (the optimum)"]
    table = pd.DataFrame({"forecast": list(mse), "mse": list(mse.values()),
                          "r2": [1 - m / naive for m in mse.values()],
                          "share_of_optimal_gain": [(naive - m) / (naive - best) for m in mse.values()]})
    info = {"train_s": info, "ar_coefficients": [float(c) for c in coef], "scored_forecasts": int(target[:, warm:].size)}
    return table, info, (test[0], test_regimes[0], posts[0])


def _figure(unroll: dict, cls: pd.DataFrame, fc: pd.DataFrame, example: tuple, hp: TasksParams, path: Path) -> Path:
    plt = pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 3.6))
    norms = unroll["layer_grad_norms"]
    a.semilogy(range(2, len(norms) + 1), norms[1:], "o-")  # layer 1 reads h_0 = 0: its W_h gradient is 0
    a.set_xlabel("layer t of the unrolled perceptron")
    a.set_ylabel("||dL/dW_h^(t)||")
    a.set_title(f"one tanh layer unrolled: BPTT = sum of layers\n(max |difference| {unroll['max_grad_diff']:.1e})")
    for cell in hp.cells:
        b.semilogx(cls.prefix_chars, cls[cell], "o-", label=cell)
    b.semilogx(cls.prefix_chars, cls.naive_bayes, "s--", label="naive Bayes (bag of chars)")
    b.axhline(1 / len(hp.classify_corpora), color="grey", lw=0.8, ls=":")
    b.set_xlabel("characters read")
    b.set_ylabel("accuracy")
    b.set_title("which corpus? " + ", ".join(hp.classify_corpora))
    b.legend(fontsize=8)
    rets, regs, posts = example
    level = np.cumsum(rets)
    c.plot(level, lw=0.8, color="black")
    c.fill_between(np.arange(len(level)), level.min(), level.max(), where=regs == int(np.argmax(hp.forecast_phis)),
                   color="tab:orange", alpha=0.25, label=f"trending regime (phi {max(hp.forecast_phis)})")
    c.set_xlabel("day")
    c.set_ylabel("synthetic index")
    best = fc.iloc[2:-1].sort_values("mse").iloc[0]
    c.set_title(f"forecast R^2: {best.forecast.split(',')[0]} {best.r2:.3f}, optimum {fc.iloc[-1].r2:.3f}")
    c.legend(fontsize=8, loc="upper left")
    return save_png(fig, path)


def run(params, out_dir: Path = REPORTS / "tasks", data_root: Path = Path("data/onehot")) -> dict:
    hp = study_params(params, "tasks", TasksParams)
    check_report_dir(out_dir)  # before any work
    check(hp)
    data = snippets.load(data_root, list(hp.classify_corpora), hp.classify_len)  # missing data fails before training
    t0 = time.perf_counter()
    unroll = unrolled.compare(hp.unrolled_steps, seed=hp.seed)
    cls, cls_info = classify_all(data, hp)
    print(f"classify, accuracy after {hp.classify_len} chars: " + ", ".join(f"{c} {cls[c].iloc[-1]:.3f}" for c in cls.columns[1:]), flush=True)
    fc, fc_info, example = forecast_all(hp)
    print("forecast, mse: " + ", ".join(f"{r.forecast} {r.mse:.4f}" for r in fc.itertuples()), flush=True)
    layers = pd.DataFrame({"layer": range(1, hp.unrolled_steps + 1), "grad_norm_W_h": unroll["layer_grad_norms"]})
    with atomic_dir(out_dir) as out:  # a run stopped half-way leaves the last complete report
        write_table(layers, out, "unrolled", floatfmt=("g", ".3e"))
        write_table(cls, out, "classify", floatfmt=("g",) + (".3f",) * (len(cls.columns) - 1))
        write_table(fc, out, "forecast", floatfmt=".4f")
        _figure(unroll, cls, fc, example, hp, out / "tasks.png")
        result = {"params": asdict(hp), "unrolled": unroll, "classify": {"table": cls.to_dict("records"), **cls_info},
                  "forecast": {"table": fc.to_dict("records"), **fc_info}, "seconds": round(time.perf_counter() - t0, 1)}
        write_result(out, result)
    r2 = dict(zip(fc.forecast, fc.r2))
    metrics = {"unrolled_max_grad_diff": unroll["max_grad_diff"], "classify_acc_naive_bayes": float(cls.naive_bayes.iloc[-1]),
               "forecast_r2_ar": float(fc.r2.iloc[1]), "forecast_r2_optimum": float(fc.r2.iloc[-1]),
               **{f"classify_acc_{c}": float(cls[c].iloc[-1]) for c in hp.cells},
               **{f"forecast_r2_{c}": r2[f"{c}, {hp.forecast_hidden} units"] for c in hp.cells}}
    files = [out_dir / f for f in ("unrolled.md", "classify.md", "forecast.md", "tasks.png", "result.json")]
    log_study(params, "tasks", "-".join(hp.cells), hp, metrics, files)
    return result


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a param (repeatable), e.g. studies.tasks.classify_steps=300")
    ap.add_argument("--out", default=str(REPORTS / "tasks"), help="report folder (default reports/tasks)")
    a = ap.parse_args(argv)
    r = run(load_params(a.params, parse_sets(a.set)), Path(a.out))
    fc = {row["forecast"]: row["r2"] for row in r["forecast"]["table"]}
    print(f"tasks: the unrolled perceptron's gradient is BPTT's (max difference {r['unrolled']['max_grad_diff']:.1e}); "
          f"forecast R^2 {', '.join(f'{k} {v:.3f}' for k, v in fc.items())} -> {a.out}")


if __name__ == "__main__":
    main()
