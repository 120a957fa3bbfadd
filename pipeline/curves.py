"""Loss curves as files DVC can plot (CSV, one per metric) and a PNG for people and MLflow.

`CurveRecorder` is a Lightning callback: on global rank 0 it appends train_loss every
`log_every` steps and val_loss at every validation, and rewrites the CSVs atomically at
each validation and at the end (a run that dies keeps the curves up to its last
validation). val_loss.csv also has wall_s (seconds since training started) and train_s
(the same without the time spent validating: lightning_modules/clock.py, the clock a time
budget counts), for quality-per-second figures.
"""
from __future__ import annotations

from pathlib import Path

from lightning_modules.clock import TrainClock
from pipeline.atomic import atomic_path, write_text


class CurveRecorder(TrainClock):
    def __init__(self, out_dir: str | Path, log_every: int):
        super().__init__()
        self.out_dir, self.log_every = Path(out_dir), log_every
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float, float, float, float]] = []
        self._pending = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1  # the step just taken
        if trainer.is_global_zero and step % self.log_every == 0:
            self._pending.append((step, outputs))  # a device tensor: read later, no sync now

    def _drain(self):
        for step, t in self._pending:
            self.train.append((step, float(t["loss"] if isinstance(t, dict) else t)))
        self._pending = []

    def on_validation_end(self, trainer, pl_module):
        super().on_validation_end(trainer, pl_module)
        m = trainer.callback_metrics
        if trainer.is_global_zero and "val_loss" in m and not trainer.sanity_checking:
            wall, train = self.wall_seconds(), self.train_seconds()
            self.val.append((trainer.global_step, float(m["val_loss"]), float(m["val_bpc"]), wall, train))
            self.write()

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.write()

    def write(self):
        self._drain()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.out_dir / "train_loss.csv", "step,train_loss\n" + "".join(f"{s},{v:.5f}\n" for s, v in self.train))
        write_text(self.out_dir / "val_loss.csv", "step,val_loss,val_bpc,wall_s,train_s\n"
                   + "".join(f"{s},{v:.5f},{b:.5f},{w:.2f},{t:.2f}\n" for s, v, b, w, t in self.val))


def read_curve(path: Path) -> tuple[list[int], list[float]]:
    steps, values = [], []
    if path.is_file():
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(",")
            steps.append(int(parts[0]))
            values.append(float(parts[1]))
    return steps, values


def plot_curves(curve_dir: Path, png: Path, title: str) -> Path:
    """train_loss.csv + val_loss.csv -> one PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, style in (("train_loss", "-"), ("val_loss", "o-")):
        s, v = read_curve(curve_dir / f"{name}.csv")
        if s:
            ax.plot(s, v, style, label=name, ms=4, lw=1.2 if name == "train_loss" else 2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png
