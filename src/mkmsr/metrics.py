"""Ranking metrics as pure functions over scores and target indices.

Tie rule (pessimistic): the rank of the target is 1 + the number of *other* candidates whose
score is greater than **or equal to** the target's. A model that gives every item the same
score therefore ranks every target last, never first. Candidates are the columns of the score
matrix whose score is not -inf (column 0, padding, is always -inf).

Hit@k = 1[rank <= k]; MRR@k = 1/rank if rank <= k else 0; NDCG@k = 1/log2(rank + 1) if
rank <= k else 0 (one relevant item). Reported as percentages, averaged over samples.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

KS = (5, 10, 20)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, N) float scores, (B,) int64 column indices -> (B,) int64 1-based pessimistic ranks."""
    t = scores.gather(1, targets[:, None])
    ge = (scores >= t).sum(dim=1)  # includes the target itself
    return ge.to(torch.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: Iterable[int] = KS, prefix: str = "") -> dict[str, float]:
    """Hit@k, MRR@k, NDCG@k in percent from 1-based ranks. Empty input gives NaN."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    n = ranks.size
    for k in ks:
        hit = ranks <= k
        out[f"{prefix}hit@{k}"] = float(100.0 * hit.mean()) if n else math.nan
        out[f"{prefix}mrr@{k}"] = float(100.0 * np.where(hit, 1.0 / ranks, 0.0).mean()) if n else math.nan
        out[f"{prefix}ndcg@{k}"] = float(100.0 * np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean()) if n else math.nan
    return out


def topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k without a full sort: (values, indices), each (B, k), best first."""
    k = min(k, scores.shape[1])
    return torch.topk(scores, k, dim=1, largest=True, sorted=True)
