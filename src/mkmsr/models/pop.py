"""POP: every session gets the same ranking, the items' popularity in the train split.

A floor any session model must clear; it cannot learn a transition by design.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.batching import Batch
from .counting import CountModel


@dataclass
class PopConfig:
    pass


class Pop(CountModel):
    Config = PopConfig

    def __init__(self, config: PopConfig, spec):
        super().__init__(config, spec)
        self.register_buffer("counts", torch.zeros(spec.n_items + 1))  # (n_items + 1,) train occurrences

    def fit_statistics(self, data) -> None:
        train = data.split("train")
        counts = np.bincount(train.items, minlength=self.spec.n_items + 1).astype(np.float32)
        counts[0] = 0.0
        self.counts = torch.from_numpy(counts).to(self.fitted.device)
        self.fitted.fill_(True)

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.counts[1:].expand(batch.items.shape[0], -1).clone()
