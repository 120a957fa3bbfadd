"""Study `hello` (slide 14): a recurrent network of 3 neurons learns to spell "hello".

    python -m studies.hello          # -> reports/hello/{probabilities.csv,.md, hello.png, result.json}

Alphabet h, e, l, o; the input is the 4-dim one-of-k vector of the current letter, the
hidden layer 3 plain recurrent neurons (h_t = tanh(W_x x_t + W_h h_{t-1} + b)), the
output 4 confidences (softmax). Trained on input "hell" -> target "ello". Then fed "h"
and its own argmax outputs, it spells the word. The two l's are the point: the same input
must give "l" the first time and "o" the second, which only the hidden state can tell
apart. Deterministic for a seed; seconds on a CPU.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.cells import make_cell
from lightning_modules.onehot import onehot
from pipeline.atomic import atomic_dir
from pipeline.config import PARAMS, load_params, parse_sets
from pipeline.errors import UserError, cli
from studies.common import REPORTS, above_zero, at_least, check_report_dir, log_study, pyplot, save_png, study_params, write_result, write_table

ALPHABET = "helo"


@dataclass(frozen=True)
class HelloParams:
    word: str = "hello"
    hidden: int = 3
    cell: str = "rnn"
    lr: float = 0.05
    steps: int = 600
    seed: int = 0

    def validate(self, path: str) -> None:
        """Bad settings fail here, in one line, before any training or report file."""
        if len(self.word) < 2:
            raise UserError(f"{PARAMS}: {path}.word: needs at least 2 letters, got {self.word!r}; give a longer word")
        at_least(self, path, ("steps", "hidden"))
        above_zero(self, path, ("lr",))


class Speller(nn.Module):
    """one-hot(4) -> recurrent layer of `hidden` units -> 4 logits."""

    def __init__(self, vocab: int, hidden: int, cell: str):
        super().__init__()
        self.vocab = vocab
        self.rnn = make_cell(cell, vocab, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, ids, state=None):
        x = onehot(ids, self.vocab)  # (B, T, 4): the lecture's 1-of-k input
        if state is None:
            z = x.new_zeros(ids.shape[0], self.rnn.hidden)
            state = (z, z.clone()) if getattr(self.rnn, "has_cell", False) else (z,)
        y, state = self.rnn(x, state)
        return self.out(y), state


def train(hp: HelloParams):
    letters = sorted(set(hp.word), key=ALPHABET.index) if set(hp.word) <= set(ALPHABET) else sorted(set(hp.word))
    stoi = {c: i for i, c in enumerate(letters)}
    ids = torch.tensor([[stoi[c] for c in hp.word]])
    x, y = ids[:, :-1], ids[:, 1:]  # "hell" -> "ello"
    torch.manual_seed(hp.seed)
    model = Speller(len(letters), hp.hidden, hp.cell)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
    losses = []
    for _ in range(hp.steps):
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, len(letters)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, letters, losses


@torch.no_grad()
def spell(model: Speller, letters: list[str], first: str, length: int):
    """Feed `first`, then each argmax output back in; return the word and per-step probabilities."""
    stoi = {c: i for i, c in enumerate(letters)}
    cur, state, word, rows = torch.tensor([[stoi[first]]]), None, first, []
    for _ in range(length - 1):
        logits, state = model(cur, state)
        p = torch.softmax(logits[0, -1], -1)
        nxt = int(p.argmax())
        rows.append((word[-1], p.tolist(), letters[nxt]))
        word += letters[nxt]
        cur = torch.tensor([[nxt]])
    return word, rows


def run(params, out_dir: Path = REPORTS / "hello") -> dict:
    hp = study_params(params, "hello", HelloParams)
    check_report_dir(out_dir)  # before any work
    model, letters, losses = train(hp)
    word, rows = spell(model, letters, hp.word[0], len(hp.word))
    table = pd.DataFrame(
        [{"step": t + 1, "input": inp, **{f"P({c})": p[i] for i, c in enumerate(letters)}, "target": hp.word[t + 1], "output": out}
         for t, (inp, p, out) in enumerate(rows)]
    )
    # the report is made in a folder beside out_dir that replaces it whole at the end: a run that
    # fails half-way leaves the last complete report, not some of its files
    with atomic_dir(out_dir) as out:
        write_table(table, out, "probabilities", floatfmt=".3f")
        plt = pyplot()
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
        a.semilogy(losses)
        a.set_xlabel("training step")
        a.set_ylabel("cross-entropy (nats)")
        a.set_title(f"{hp.cell}, {hp.hidden} hidden units")
        im = b.imshow(table[[f"P({c})" for c in letters]].to_numpy().T, vmin=0, vmax=1, cmap="Greens")
        b.set_yticks(range(len(letters)), letters)
        b.set_xticks(range(len(rows)), [f"{r[0]}->" for r in rows])
        b.set_title(f'fed its own outputs: "{word}"')
        fig.colorbar(im, ax=b)
        save_png(fig, out / "hello.png")
        result = {"word": hp.word, "spelled": word, "correct": word == hp.word, "hidden_units": model.rnn.hidden,
                  "final_loss": losses[-1], "steps": hp.steps}
        write_result(out, result)
    log_study(params, "hello", f"{hp.cell}-{hp.hidden}", hp, {"final_loss": losses[-1], "correct": float(word == hp.word)},
              [out_dir / "probabilities.csv", out_dir / "probabilities.md", out_dir / "hello.png", out_dir / "result.json"])
    return result


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a param (repeatable)")
    a = ap.parse_args(argv)
    r = run(load_params(a.params, parse_sets(a.set)))
    print(f"hello: fed '{r['word'][0]}', the {r['hidden_units']}-neuron network spells '{r['spelled']}' "
          f"({'correct' if r['correct'] else 'WRONG'}; final loss {r['final_loss']:.4f}) -> {REPORTS / 'hello'}")


if __name__ == "__main__":
    main()
