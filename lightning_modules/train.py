"""Train and evaluate a CharLM with Lightning alone (no tracking, no orchestration).

`fit(cfg, data_dir, out_dir)` is the one training routine: the DVC stage, the Prefect
flow, the studies, the benchmarks and the tests call it (pipeline/train.py adds params.yaml,
MLflow and the metric files around it). `cfg` holds the model, optimisation and trainer
settings (see `DEFAULTS`); `max_seconds` adds a time budget (lightning_modules/budget.py); `precision="auto"`
takes bf16-mixed where the hardware has bf16 arithmetic (lightning_modules/precision.py).
Checkpoints: out_dir/best.ckpt (lowest val_loss) and out_dir/last.ckpt, written by rank 0 only.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_modules.budget import TimeBudget
from lightning_modules.data import TextDataModule
from lightning_modules.module import CharLM
from lightning_modules.precision import resolve_precision
from lightning_modules.quiet import quiet_lightning

MODEL = ("cell", "hidden", "layers", "dropout", "io_dropout", "weight_drop", "input", "fused")
OPTIM = ("lr", "min_lr_frac", "warmup_steps", "decay_frac", "weight_decay", "betas", "clip", "max_steps", "bptt", "k1", "k2", "log_every")
DEFAULTS = dict(
    cell="lstm", hidden=256, layers=2, dropout=0.0, io_dropout=0.0, weight_drop=0.0, input="embedding", fused=None,
    lr=3e-3, min_lr_frac=0.1, warmup_steps=0, decay_frac=1.0, weight_decay=0.01, betas=(0.9, 0.99), clip=1.0,
    max_steps=1000, max_seconds=None, bptt="full", k1=64, k2=64, log_every=10,
    batch_size=32, seq_len=128, seed=1337, val_every=250, eval_batch=16, eval_len=512,
    accelerator="auto", devices=1, strategy="auto", num_nodes=1, precision="32-true",
    progress_every=100, deterministic=False, matmul_precision="high",
)


class ProgressPrinter(Callback):
    """One line every `every` steps: step, train loss, learning rate, tokens per second.

    Reads the loss from the host only on those steps, so it adds no sync to the others.
    """

    def __init__(self, every: int, tokens_per_step: int):
        self.every, self.tokens_per_step = every, tokens_per_step
        self.t0 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.t0 is None:
            self.t0, self.s0 = time.perf_counter(), step
            return
        if self.every and step % self.every == 0 and trainer.is_global_zero:
            dt = time.perf_counter() - self.t0
            rate = (step - self.s0) * self.tokens_per_step / max(dt, 1e-9)
            loss = outputs["loss"].item() if isinstance(outputs, dict) else float(outputs)
            print(f"step {step:6d}  train_loss {loss:.4f}  lr {pl_module.lr_at(step):.2e}  {rate:,.0f} tok/s", flush=True)

    def on_validation_end(self, trainer, pl_module):
        m = trainer.callback_metrics
        if "val_loss" in m and trainer.is_global_zero and not trainer.sanity_checking:
            print(f"step {trainer.global_step:6d}  val_loss {float(m['val_loss']):.4f}  val_bpc {float(m['val_bpc']):.4f}", flush=True)


class ValidateAtTheEnd(Callback):
    """The last step is validated and checkpointed even when max_steps is not a multiple of
    val_every (Lightning validates only every val_every steps; the last steps would be lost)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True  # Lightning then runs one more validation, at this step


def make_module(cfg: dict, vocab_size: int) -> CharLM:
    return CharLM(vocab_size=vocab_size, **{k: cfg[k] for k in MODEL + OPTIM})


def make_datamodule(cfg: dict, data_dir: str | Path) -> TextDataModule:
    return TextDataModule(
        data_dir, cfg["batch_size"], cfg["seq_len"], cfg["bptt"], cfg["k1"], cfg["max_steps"], cfg["seed"], cfg["eval_batch"], cfg["eval_len"]
    )


def make_trainer(cfg: dict, out_dir: str | Path | None, loggers=(), callbacks=(), max_steps: int | None = None) -> L.Trainer:
    quiet_lightning()
    steps = max_steps or cfg["max_steps"]
    cbs = list(callbacks)
    cbs.append(ValidateAtTheEnd())
    if cfg.get("max_seconds") is not None:
        cbs.append(TimeBudget(cfg["max_seconds"]))
    if out_dir is not None:
        cbs.append(ModelCheckpoint(dirpath=out_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1, enable_version_counter=False))
        # last.ckpt at every validation; Lightning 2.6's save_last rewrites it only when val_loss improved
        cbs.append(ModelCheckpoint(dirpath=out_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False))
    if cfg["progress_every"]:
        tokens = cfg["batch_size"] * (cfg["seq_len"] if cfg["bptt"] == "full" else cfg["k1"])
        cbs.append(ProgressPrinter(cfg["progress_every"], tokens))
    strategy = cfg["strategy"]
    if strategy in ("ddp", "ddp_spawn") and cfg["accelerator"] == "cpu":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo", start_method="spawn" if strategy == "ddp_spawn" else "popen")
    return L.Trainer(
        accelerator=cfg["accelerator"],
        devices=cfg["devices"],
        num_nodes=cfg["num_nodes"],
        strategy=strategy,
        precision=cfg["precision"],
        max_steps=steps,
        max_epochs=-1,
        val_check_interval=min(cfg["val_every"], cfg["max_steps"]),
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=list(loggers) if loggers else False,
        log_every_n_steps=cfg["log_every"],
        callbacks=cbs,
        enable_checkpointing=out_dir is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=cfg["deterministic"],
        use_distributed_sampler=False,
        default_root_dir=str(out_dir) if out_dir else None,
    )


def _saved_step(ckpt: str | Path) -> int:
    """The global step a checkpoint was saved at."""
    return int(torch.load(ckpt, map_location="cpu", weights_only=True).get("global_step", 0))


def fit(cfg: dict, data_dir: str | Path, out_dir: str | Path | None, loggers=(), callbacks=(), resume: str | None = None, stop_at: int | None = None) -> dict:
    """Train; return a summary (best val_loss, steps, seconds, tokens/s, checkpoint paths).

    stop_at < max_steps stops early with the schedule of the full run (for resume tests).
    """
    cfg = {**DEFAULTS, **cfg}
    cfg["precision"] = resolve_precision(cfg["precision"], cfg["accelerator"])
    torch.set_float32_matmul_precision(cfg["matmul_precision"])
    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    dm = make_datamodule(cfg, data_dir)
    module = make_module(cfg, dm.vocab_size)
    vocab_file = Path(data_dir) / "vocab.json"
    if vocab_file.exists():
        v = json.loads(vocab_file.read_text(encoding="utf-8"))
        module.vocab = {"level": v["level"], "tokens": v["tokens"], "unk": v.get("unk")}
    trainer = make_trainer(cfg, out_dir, loggers, callbacks, max_steps=stop_at)
    start_step = _saved_step(resume) if resume and Path(resume).is_file() else 0  # tokens/s: the steps of this call only
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    seconds = time.perf_counter() - t
    ckpt = trainer.checkpoint_callback
    steps = trainer.global_step
    tokens = (steps - start_step) * cfg["batch_size"] * (cfg["seq_len"] if cfg["bptt"] == "full" else cfg["k1"])
    best = ckpt.best_model_score if ckpt is not None else trainer.callback_metrics.get("val_loss")
    last_path = Path(out_dir) / "last.ckpt" if out_dir is not None else None
    if best is None and last_path is not None and last_path.is_file():
        best = _best_score(last_path)  # spawned ranks keep their callback state to themselves
    return {
        "best_val_loss": float(best) if best is not None else None,
        "steps": steps,
        "train_seconds": seconds,
        "train_tokens_per_s": tokens / seconds if seconds else None,
        "precision": str(trainer.precision),  # what Lightning trained with
        "best_ckpt": str(Path(out_dir) / "best.ckpt") if out_dir is not None else None,
        "last_ckpt": str(last_path) if last_path is not None else None,
        "trainer": trainer,
        "module": module,
    }


def _best_score(path) -> float | None:
    state = torch.load(path, map_location="cpu", weights_only=True).get("callbacks", {})
    for key, value in state.items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_score") is not None:
            return float(value["best_model_score"])
    return None


def default_device(device: str | None = None) -> str:
    """`device`, else cuda where a GPU is visible, else cpu."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def evaluate(ckpt_path: str | Path, data_dir: str | Path, splits=("val", "test"), device: str | None = None, eval_batch: int = 16, eval_len: int = 512) -> dict:
    """Loss of a checkpoint on whole splits (state carried along each stream), in nats/token."""
    from lightning_modules.checkpoint import load_checkpoint

    device = default_device(device)
    model, _, hp = load_checkpoint(ckpt_path, map_location=device)
    return evaluate_model(model, hp, data_dir, splits, device, eval_batch, eval_len)


def evaluate_model(model, hp: dict, data_dir: str | Path, splits=("val", "test"), device: str = "cpu", eval_batch: int = 16, eval_len: int = 512) -> dict:
    """`evaluate` for a model already loaded (lightning_modules.checkpoint.load_checkpoint)."""
    module = CharLM(**{k: v for k, v in hp.items() if k in CharLM.__init__.__code__.co_varnames})
    module.model = model
    module.to(device).eval()
    dm = TextDataModule(data_dir, eval_batch=eval_batch, eval_len=eval_len)
    dm.setup()
    out = {}
    for split in splits:
        if split not in dm.splits:
            continue
        t = time.perf_counter()
        module._val = {"sum": torch.zeros((), dtype=torch.float64, device=device), "n": 0, "state": None}
        with torch.inference_mode():
            for x, y, reset in dm._eval(split):
                module._eval_step((x.to(device), y.to(device), reset))
        dt = time.perf_counter() - t
        n = module._val["n"]
        nats = (module._val["sum"] / n).item()
        out.update({
            f"{split}_loss": nats,
            f"{split}_bpc": nats / math.log(2),
            f"{split}_ppl": math.exp(nats),
            f"{split}_tokens": n,
            f"{split}_tokens_per_s": n / dt,
        })
    return out
