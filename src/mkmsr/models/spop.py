"""S-POP: the session's own items first, then global popularity.

On JD data repeat consumption is strong (see ``repeat_target_share`` in the manifest), so the
session's own items are a serious candidate list. ``mode``:

* ``recency`` (default): in-session items ranked most recent first;
* ``count``: in-session items ranked by how often they occur in the session (the classic
  S-POP of Ludewig & Jannach), recency breaking ties.

Items outside the session follow by train-split popularity (which also breaks any remaining
tie). Scores: in-session items get 1 + a key in (0, L]; others popularity / (max + 1) in [0, 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.batching import Batch
from .counting import CountModel, session_counts, session_positions


@dataclass
class SPopConfig:
    mode: str = "recency"   # recency | count


class SPop(CountModel):
    Config = SPopConfig

    def __init__(self, config: SPopConfig, spec):
        super().__init__(config, spec)
        if config.mode not in ("recency", "count"):
            raise ValueError(f"S-POP mode must be 'recency' or 'count', got {config.mode!r}")
        self.register_buffer("counts", torch.zeros(spec.n_items + 1))

    def fit_statistics(self, data) -> None:
        counts = np.bincount(data.split("train").items, minlength=self.spec.n_items + 1).astype(np.float32)
        counts[0] = 0.0
        self.counts = torch.from_numpy(counts).to(self.fitted.device)
        self.fitted.fill_(True)

    def logits(self, batch: Batch) -> torch.Tensor:
        n = self.spec.n_items
        pos = session_positions(batch, n).to(torch.float32)                # (B, n+1) latest position
        length = batch.lengths.to(torch.float32)[:, None]
        pop = (self.counts / (self.counts.max() + 1.0))[None, :]          # [0, 1)
        if self.config.mode == "recency":
            key = pos / length                                             # (0, 1], later = larger
        else:
            key = session_counts(batch, n) + pos / (length + 1.0)          # count, then recency
        score = torch.where(pos > 0, 1.0 + key, pop.expand_as(pos))
        return score[:, 1:]
