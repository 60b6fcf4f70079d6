"""Small batch helpers shared by the sequence models (SASRec, CORE, GCSAN, RepeatNet, MGNN-SPred)."""
from __future__ import annotations

import torch

from ..data.batching import Batch


def latest(batch: Batch, n: int | None) -> Batch:
    """The batch with only the latest ``n`` micro-behaviours of each session (still right-padded,
    width ``min(L, n)``). Models with a fixed number of position embeddings read sessions this way,
    as their papers truncate to the latest n items. ``n`` None or >= L: the batch itself."""
    L = batch.items.shape[1]
    if not n or L <= n:
        return batch
    start = (batch.lengths - n).clamp(min=0)                                     # (B,)
    idx = start[:, None] + torch.arange(n, device=batch.items.device)[None, :]   # (B, n), < L
    lengths = batch.lengths.clamp(max=n)
    keep = torch.arange(n, device=idx.device)[None, :] < lengths[:, None]
    items = batch.items.gather(1, idx).masked_fill(~keep, 0)
    ops = batch.ops.gather(1, idx).masked_fill(~keep, 0)
    return Batch(items, ops, lengths, batch.targets)


def at_last(X: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, L, d) per-position states -> (B, d) the state at each session's last real position."""
    return X[torch.arange(X.shape[0], device=X.device), lengths - 1]


def causal_mask(L: int, device: torch.device) -> torch.Tensor:
    """(L, L) bool, True where attention is *forbidden*: position t sees only positions <= t."""
    return torch.ones(L, L, dtype=torch.bool, device=device).triu(1)
