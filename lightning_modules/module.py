"""LightningModule for the language model: BPTT, truncated BPTT(K1, K2), exact resume.

Training regimes (manual optimisation, one optimizer step per batch):

- bptt="full": each batch is B independent windows of T tokens; the network is unrolled
  over the whole window from a zero state, the error of all T outputs is computed and
  one backward pass updates the weights (the lecture's BPTT step).
- bptt="tbptt": Sutskever's truncated BPTT, "every k1 time steps, run BPTT for k2 time
  steps". Each batch brings the next K1 tokens of B contiguous streams. The network is
  run over the last K2 tokens (the K2 - K1 before, kept from earlier batches, and the K1
  new ones) from the state saved at the start of that window; the loss is taken on the
  K1 new outputs and back-propagated through all K2 steps; the state after the first K1
  tokens of the window, detached, starts the next window (whose first K2 - K1 tokens are
  this window's last). K1 = K2 is the usual case: the state is carried from batch to
  batch and detached at every boundary.

Both clip the gradient norm (Pascanu et al. 2013) and follow a learning-rate schedule by
optimizer step: linear warmup, then a cosine decay over the whole run (decay_frac = 1) or
over its last decay_frac part after a constant stretch (warmup-stable-decay, decay_frac < 1).
Losses are in nats per token; validation also logs bits per token (nats / ln 2) and
perplexity (e^nats).

Checkpoints carry, beyond Lightning's own state (weights, optimizer, step, loops): the
vocabulary (so a checkpoint samples on its own), the TBPTT state and context, and the
torch / numpy / python RNG states, so that N steps + stop + resume N steps give the same
weights as 2N steps straight. Everything is weights_only-loadable.
"""
from __future__ import annotations

import math
import random

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lightning_modules.lm import CharRNN

LN2 = math.log(2.0)


class CharLM(L.LightningModule):
    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.0,
        io_dropout: float = 0.0,
        weight_drop: float = 0.0,
        input: str = "embedding",
        lr: float = 3e-3,
        min_lr_frac: float = 0.1,
        warmup_steps: int = 0,
        decay_frac: float = 1.0,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.99),
        clip: float = 1.0,
        max_steps: int = 1000,
        bptt: str = "full",
        k1: int = 64,
        k2: int = 64,
        log_every: int = 10,
        fused: bool | None = None,
    ):
        super().__init__()
        if bptt not in ("full", "tbptt"):
            raise ValueError(f"bptt must be 'full' or 'tbptt', got {bptt!r}")
        if bptt == "tbptt" and not 0 < k1 <= k2:
            raise ValueError(f"truncated BPTT needs 0 < k1 <= k2, got k1={k1}, k2={k2}")
        if not 0 < decay_frac <= 1:
            raise ValueError(f"decay_frac must be in (0, 1], got {decay_frac}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = CharRNN(vocab_size, cell, hidden, layers, dropout, input, fused=fused, io_dropout=io_dropout, weight_drop=weight_drop)
        self.vocab: dict | None = None  # {"level", "tokens", "unk"}, saved into checkpoints
        self._carry = None  # TBPTT: (context ids (B, <=k2-k1), state at its start)
        self._val = None
        self.schedule_steps = max_steps  # end of the cosine; a TimeBudget callback moves it

    # -- schedule -------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warmup, a constant stretch, then a cosine down to min_lr_frac * lr at `schedule_steps`.

        lr_s = lr (s + 1) / W                                   for s < W, then
        lr_s = lr (m + (1 - m) (1 + cos(pi clip((s - W - (1 - d)(S - W)) / (d (S - W)), 0, 1))) / 2),
        with W = warmup_steps, m = min_lr_frac, S = schedule_steps (max_steps unless a time
        budget moved it, lightning_modules/budget.py) and d = decay_frac. d = 1 is the plain
        cosine from the end of the warmup; d < 1 holds lr until S - d (S - W) and decays over
        the last d (S - W) steps only: warmup-stable-decay (Hu et al. 2024, MiniCPM;
        Hägele et al. 2024): the high rate is kept longer, and while it is constant a time
        budget's re-estimates of S change nothing.
        """
        hp = self.hparams
        if step < hp.warmup_steps:
            return hp.lr * (step + 1) / hp.warmup_steps
        span, d = max(1, self.schedule_steps - hp.warmup_steps), hp.decay_frac
        frac = min(1.0, max(0.0, (step - hp.warmup_steps - (1 - d) * span) / (d * span)))  # 0 at decay_start()
        return hp.lr * (hp.min_lr_frac + (1 - hp.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))

    def decay_start(self) -> float:
        """The step where the decay begins: W + (1 - d)(S - W) (W itself for the plain cosine)."""
        hp = self.hparams
        return hp.warmup_steps + (1 - hp.decay_frac) * max(1, self.schedule_steps - hp.warmup_steps)

    def _grad_scaler(self):
        """The precision plugin's GradScaler (precision 16-mixed), else None (32, bf16)."""
        return getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None

    def configure_optimizers(self):
        hp = self.hparams
        # fused AdamW (one kernel for every parameter; on a CPU about 0.33 ms a step for the 2x256's
        # 1.09M parameters against 1.1-3.7 ms for torch's default per-tensor loop), unless a GradScaler is in
        # use: Lightning unscales a fused optimizer's gradients only inside its step, after the clipping
        fused = self.device.type in ("cuda", "cpu") and self._grad_scaler() is None
        return torch.optim.AdamW(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay, fused=fused or None)

    # -- training -------------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def _tbptt_loss(self, x: torch.Tensor, y: torch.Tensor, reset: bool) -> torch.Tensor:
        hp = self.hparams
        if reset or self._carry is None:
            ctx, state = x[:, :0], None
        else:
            ctx, state = self._carry
        window = torch.cat([ctx, x], 1)  # the last <= K2 tokens; the K1 new ones at the end
        keep = min(hp.k2 - hp.k1, window.shape[1])  # context the next window reuses
        head = window.shape[1] - keep
        if head == 0:  # stream start: the whole window is next window's context
            mid = state if state is not None else self.model.rnn.init_state(x.shape[0], x.device)
            logits, _ = self.model(window, mid)
        else:
            with self.model.rnn.one_mask():  # weight_drop: one W_hh' for the whole window, as one call would draw
                logits, mid = self.model(window[:, :head], state)
                if keep:
                    logits_b, _ = self.model(window[:, head:], mid)
                    logits = torch.cat([logits, logits_b], 1)
        self._carry = (window[:, head:], tuple(s.detach() for s in mid))
        return self._loss(logits[:, -x.shape[1] :], y)

    def training_step(self, batch, batch_idx):
        x, y, reset = batch
        opt = self.optimizers()
        step = self.global_step
        lr = self.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        if self.hparams.bptt == "full":
            logits, _ = self.model(x)
            loss = self._loss(logits, y)
        else:
            loss = self._tbptt_loss(x, y, reset)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()  # clips first: on_before_optimizer_step
        if step % self.hparams.log_every == 0:
            # logged as a tensor: no host sync here; the logger reads it every log_every steps
            self.log("train_loss", loss.detach(), on_step=True, on_epoch=False)
            self.log("lr", lr, on_step=True, on_epoch=False)
        return loss.detach()

    def on_before_optimizer_step(self, optimizer) -> None:
        """g <- g min(1, c / ||g||_2), ||g||_2 over all parameters at once (Pascanu et al. 2013).

        Lightning calls this inside opt.step(), after a GradScaler (16-mixed) has unscaled the
        gradients, so the true ones are clipped under every precision. torch clips them
        directly: Lightning's clip_gradients refuses fused optimizers under mixed precision,
        bf16 included, where nothing is scaled.
        """
        if self.hparams.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.hparams.clip)

    # -- evaluation: streams with the state carried; sums reduced over ranks ---------------
    def _eval_start(self):
        self._val = {"sum": torch.zeros((), dtype=torch.float64, device=self.device), "n": 0, "state": None}

    def _eval_step(self, batch):
        x, y, reset = batch
        state = None if reset else self._val["state"]
        logits, state = self.model(x, state)
        self._val["state"] = state
        self._val["sum"] += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="sum").double()
        self._val["n"] += y.numel()

    def _eval_end(self, prefix: str):
        tot = torch.stack([self._val["sum"], torch.tensor(float(self._val["n"]), dtype=torch.float64, device=self.device)])
        if self.trainer.world_size > 1:
            tot = self.trainer.strategy.reduce(tot, reduce_op="sum")
        if tot[1] > 0:
            nats = (tot[0] / tot[1]).float()
            # already summed over ranks; sync_dist averages equal values (and keeps Lightning quiet)
            self.log(f"{prefix}_loss", nats, prog_bar=True, sync_dist=True)
            self.log(f"{prefix}_bpc", nats / LN2, sync_dist=True)
            self.log(f"{prefix}_ppl", torch.exp(nats), sync_dist=True)
        self._val = None

    def on_validation_epoch_start(self):
        self._eval_start()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def on_test_epoch_start(self):
        self._eval_start()

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_test_epoch_end(self):
        self._eval_end("test")

    # -- checkpoints: vocabulary, TBPTT carry, RNG states ----------------------------------
    def _world(self) -> tuple[int, int]:
        t = self._trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Under DDP every rank calls this and rank 0 writes the file: the TBPTT carry is
        gathered from all ranks first, rows in rank order (the global batch's streams), so
        that each rank resumes from its own streams' state."""
        checkpoint["vocab"] = self.vocab
        if self._carry is not None:
            ctx, state = self._carry
            if self._world()[1] > 1:
                ctx = self.all_gather(ctx).flatten(0, 1)  # (W, b, k) -> (W*b, k)
                state = [self.all_gather(s).transpose(0, 1).flatten(1, 2) for s in state]  # (W, L, b, H) -> (L, W*b, H)
            checkpoint["tbptt_carry"] = {"ctx": ctx.cpu(), "state": [s.cpu() for s in state]}
        np_state = np.random.get_state()
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": _py_state(random.getstate()),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.vocab = checkpoint.get("vocab")
        carry = checkpoint.get("tbptt_carry")
        if carry is not None:
            rank, world = self._world()
            ctx, state = carry["ctx"], carry["state"]
            if world > 1:
                rows = ctx.shape[0] // world  # this rank's streams of the global batch
                ctx, state = ctx[rank * rows : (rank + 1) * rows], [s[:, rank * rows : (rank + 1) * rows] for s in state]
            self._carry = (ctx.to(self.device), tuple(s.to(self.device) for s in state))
        rng = checkpoint.get("rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"].cpu())
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            n = rng["numpy"]
            np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
            random.setstate(_py_state_back(rng["python"]))

    def on_train_start(self):
        if self._carry is not None:  # restored on CPU before the model moved
            ctx, state = self._carry
            dm = self.trainer.datamodule
            local = dm.batch_size // self.trainer.world_size if dm is not None else ctx.shape[0]
            if ctx.shape[0] != local:
                raise ValueError(
                    f"the resumed TBPTT carry holds {ctx.shape[0]} streams, this rank reads {local}: resume with the batch_size "
                    "it was saved with (a checkpoint written under DDP before the carry was gathered holds rank 0's streams only)")
            self._carry = (ctx.to(self.device), tuple(s.to(self.device) for s in state))


def _py_state(s):
    return [s[0], list(s[1]), s[2]]


def _py_state_back(s):
    return (s[0], tuple(s[1]), s[2])
