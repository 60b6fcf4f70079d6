"""Ranking metrics as pure functions over scores and target indices.

Tie rule (pessimistic): the rank of the target is 1 + the number of *other* candidates whose
score is greater than **or equal to** the target's. A model that gives every item the same
score therefore ranks every target last, never first. Candidates are the columns of the score
matrix whose score is not -inf (column 0, padding, is always -inf).

Hit@k = 1[rank <= k]; MRR@k = 1/rank if rank <= k else 0; NDCG@k = 1/log2(rank + 1) if
rank <= k else 0 (one relevant item). Reported as percentages, averaged over samples.

Non-finite scores: a competitor scored NaN or +inf ranks *above* the target (a model cannot win
by producing garbage), -inf marks a column that is not a candidate; a target whose own score is
not finite raises :class:`NonFiniteScoreError` (a diverged model must not count as a hit).

Random ties: beside the pessimistic rank, :func:`expected_metrics` gives the *expected* metrics
when the target's ties are broken uniformly at random (the target's rank is uniform over
``greater + 1 .. greater + ties + 1``). The two agree for a model without ties; count-based
models, which give many items the same score, can differ by points.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

KS = (5, 10, 20)


class NonFiniteScoreError(ValueError):
    """A target's score is NaN or infinite: the model diverged (or masked its own target)."""


def rank_counts(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) float scores, (B,) int64 column indices -> ``(greater, ties)``, each (B,) int64:
    how many other candidates score above the target (NaN and +inf competitors count here) and
    how many score exactly the same. Raises NonFiniteScoreError on a non-finite target score."""
    t = scores.gather(1, targets[:, None])
    bad = ~torch.isfinite(t[:, 0])
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise NonFiniteScoreError(
            f"{int(bad.sum())} of {bad.numel()} samples have a non-finite target score (first: row {i}, "
            f"target column {int(targets[i])}, score {float(t[i, 0])}): the model produced NaN/inf scores")
    # the target is finite, so an item is "greater" exactly when it is not <= the target: NaN and
    # +inf competitors count there, in one comparison (the explicit isnan pass cost a third more).
    # Bool counts accumulate in int32: torch's default int64 sum of a bool (B, N) tensor is ~5x slower
    # on the CPU (18 ms against 3 ms for 512 x 12,971 on 2 cores), and N < 2^31
    greater = scores.shape[1] - (scores <= t).sum(dim=1, dtype=torch.int32)
    ties = (scores == t).sum(dim=1, dtype=torch.int32) - 1    # the target itself is not a tie
    return greater.to(torch.int64), ties.to(torch.int64)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, N) float scores, (B,) int64 column indices -> (B,) int64 1-based pessimistic ranks
    (1 + the number of other candidates scoring >= the target, NaN/+inf competitors included)."""
    greater, ties = rank_counts(scores, targets)
    return greater + ties + 1


def expected_metrics(greater: np.ndarray, ties: np.ndarray, ks: Iterable[int] = KS,
                     prefix: str = "") -> dict[str, float]:
    """Hit@k, MRR@k, NDCG@k in percent, in expectation over uniform random tie-breaking: the
    target's rank is uniform on ``greater + 1 .. greater + ties + 1``. Empty input gives NaN."""
    g = np.asarray(greater, dtype=np.int64)
    e = np.asarray(ties, dtype=np.int64)
    out: dict[str, float] = {}
    n = g.size
    for k in ks:
        r = np.arange(1, k + 1, dtype=np.float64)
        for name, f in (("hit", np.ones_like(r)), ("mrr", 1.0 / r), ("ndcg", 1.0 / np.log2(r + 1.0))):
            cum = np.concatenate([[0.0], np.cumsum(f)])              # cum[m] = sum of f(1..m)
            hi, lo = np.minimum(g + e + 1, k), np.minimum(g, k)
            val = (cum[hi] - cum[lo]) / (e + 1.0)
            out[f"{prefix}{name}@{k}"] = float(100.0 * val.mean()) if n else math.nan
    return out


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
