"""Small checkpoints for the recommendation and serving tests (not a test module)."""
from __future__ import annotations

from pathlib import Path

import torch

from mkmsr.checkpoint import save_checkpoint
from mkmsr.data.dataset import PreparedData
from mkmsr.models import build_model
from mkmsr.training.train import TrainConfig, train


def untrained_checkpoint(data: Path, out: Path, seed: int = 0, name: str = "mkmsr", dim: int = 16) -> Path:
    """A freshly initialised model saved as a checkpoint: scores are random but well defined."""
    torch.manual_seed(seed)
    pd = PreparedData(data)
    model = build_model(name, pd.spec, {"dim": dim})
    return save_checkpoint(out, model, name, pd, {"epoch": 0})


def trained_run(data: Path, out: Path, seed: int = 0, epochs: int = 1, dim: int = 16) -> Path:
    """A real (short) training run: ``out`` holds best/, metrics.json and log.jsonl."""
    train(data, "mkmsr", out, TrainConfig(epochs=epochs, batch_size=64, seed=seed, eval_test_each_epoch=False),
          {"dim": dim}, progress=False)
    return out
