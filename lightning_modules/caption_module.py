"""LightningModule and data for the captioner (captioner.py).

A batch is (images (B, 3, S, S) uint8, refs (B, R, N+1) word ids): every reference caption
of each image, padded with <pad> (an image with fewer than R references repeats its first).
Training draws one reference per image and step, as Show and Tell did with Flickr's five;
validation scores all of them. Losses are nats per word, <end> included.
"""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.captioner import Captioner


class CaptionModule(L.LightningModule):
    def __init__(self, vocab_size: int, image_size: int, embed: int = 64, hidden: int = 128, layers: int = 1,
                 cell: str = "lstm", dropout: float = 0.0, use_image: bool = True, feed: str = "first", lr: float = 3e-3,
                 weight_decay: float = 0.0, max_steps: int = 1000):
        super().__init__()
        self.save_hyperparameters()
        self.model = Captioner(vocab_size, image_size, embed, hidden, layers, cell, dropout, use_image, feed)
        self.history: list[dict] = []     # {"step", "train_loss" | "val_loss"}
        self._val = [0.0, 0]             # summed loss x images, images

    def training_step(self, batch, batch_idx):
        images, refs = batch
        pick = torch.randint(refs.shape[1], (refs.shape[0],), device=refs.device)
        loss = self.model.loss(images, refs[torch.arange(refs.shape[0], device=refs.device), pick])
        self.log("train_loss", loss, prog_bar=True)
        if self.global_step % 50 == 0:
            self.history.append({"step": self.global_step, "train_loss": float(loss.detach())})
        return loss

    def validation_step(self, batch, batch_idx):
        images, refs = batch
        B, R, N = refs.shape
        loss = self.model.loss(images.repeat_interleave(R, 0), refs.reshape(B * R, N))
        self.log("val_loss", loss, prog_bar=True)
        self._val[0] += float(loss) * B
        self._val[1] += B

    def on_validation_epoch_end(self):
        if self._val[1] and not self.trainer.sanity_checking:
            self.history.append({"step": self.global_step, "val_loss": self._val[0] / self._val[1]})
        self._val = [0.0, 0]

    def configure_optimizers(self):
        """AdamW, the lr held for 80% of the steps, then a linear decay: 10% of it at the last step."""
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        hold = int(self.hparams.max_steps * 0.8)
        tail = max(1, self.hparams.max_steps - hold)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < hold else max(0.1, 1 - 0.9 * (s - hold + 1) / tail))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader(images, refs, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """uint8 images and padded reference ids as a DataLoader (kept in memory: 10,000 images of 32x32 are 31 MB)."""
    ds = TensorDataset(torch.as_tensor(images), torch.as_tensor(refs))
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=shuffle)
