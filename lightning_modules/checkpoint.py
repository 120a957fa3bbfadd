"""Load a training checkpoint for inference: weights_only, on any device.

A checkpoint saved on a GPU loads on a CPU-only machine (map_location), and loading
never unpickles code (torch.load(weights_only=True)): hyper-parameters, weights and the
vocabulary are plain data.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lightning_modules.lm import CharRNN
from lightning_modules.vocab import Vocab

MODEL_KEYS = ("vocab_size", "cell", "hidden", "layers", "dropout", "input", "fused", "io_dropout", "weight_drop")


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[CharRNN, Vocab, dict]:
    """(model in eval mode, vocabulary, hyper-parameters) from a CharLM checkpoint."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a training checkpoint of this project (no hyper_parameters/state_dict)")
    hp = dict(ckpt["hyper_parameters"])
    model = CharRNN(**{k: hp[k] for k in MODEL_KEYS if k in hp})
    sd = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(sd)
    model.eval()
    if not ckpt.get("vocab"):
        raise ValueError(f"{path} holds no vocabulary; it was not saved by CharLM")
    return model, Vocab.from_dict(ckpt["vocab"]), hp
