"""Full-ranking evaluation of a model on a split, batch by batch (the score matrix of the
whole split is never held in memory: each batch's scores are reduced to target rank counts)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.batching import make_batch, batch_order
from ..data.dataset import PreparedData
from .metrics import KS, expected_metrics, metrics_from_ranks, rank_counts
from ..models.base import SessionModel

#: sample subsets reported beside the whole split (metric-name prefixes)
SUBSETS = ("cold_", "repeat_", "first_", "cold_first_")


def session_items_above(scores: torch.Tensor, items: torch.Tensor, mask: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
    """(B,) int64: how many *distinct* items of each session prefix, the target excepted, score
    at or above the target (the pessimistic tie rule of :func:`rank_counts`; NaN counts as
    above). ``scores`` (B, N) by item_idx column, ``items`` / ``mask`` (B, L) the prefixes."""
    x = items.masked_fill(~mask, 0).sort(dim=1).values                    # (B, L), padding (0) first
    first = (x != 0) & (x != targets[:, None])
    first[:, 1:] &= x[:, 1:] != x[:, :-1]                                  # each other item once
    s = scores.gather(1, x)
    t = scores.gather(1, targets[:, None])
    return (first & ((s >= t) | torch.isnan(s))).sum(dim=1).to(torch.int64)


def repeat_mask(items: np.ndarray, offsets: np.ndarray, sess: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """(n,) bool: the target of sample (session ``sess``, prefix length ``prefix``) already occurs
    in its own prefix (repeat consumption). ``items``/``offsets`` are a split's flat arrays."""
    if sess.size == 0:
        return np.zeros(0, dtype=bool)
    start = offsets[sess]
    L = int(prefix.max())
    pos = start[:, None] + np.arange(L)[None, :]
    inside = np.arange(L)[None, :] < prefix[:, None]
    seen = np.where(inside, items[np.minimum(pos, items.size - 1)], 0)
    return (seen == items[start + prefix][:, None]).any(axis=1)


@torch.inference_mode()
def split_rank_counts(model: SessionModel, data: PreparedData, split: str, batch_size: int = 512,
                      max_len: int | None = None, device: torch.device | str = "cpu",
                      shard: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Rank counts of every sample's target over all catalogue items.

    Returns a dict of (n_samples,) arrays in the split's sample order: ``greater`` and ``ties``
    (see :func:`mkmsr.metrics.rank_counts`), ``ranks`` (pessimistic, 1-based), ``targets``
    (item_idx), ``repeat`` (target already in its own session prefix) and ``inside_above``
    (:func:`session_items_above`: distinct items of the prefix, as the model sees it, that rank at
    or above the target). With ``shard=(r, n)``
    only samples r, r + n, r + 2n, ... (one process's share, see :mod:`mkmsr.distributed`).
    Raises :class:`mkmsr.metrics.NonFiniteScoreError` when a target's score is NaN/inf.
    """
    was_training = model.training
    model.eval()
    arr = data.split(split)
    sess, prefix = arr.samples()
    if shard is not None:
        sess, prefix = sess[shard[0]::shard[1]], prefix[shard[0]::shard[1]]
    greater = np.empty(sess.size, dtype=np.int64)
    ties = np.empty(sess.size, dtype=np.int64)
    inside = np.empty(sess.size, dtype=np.int64)
    lengths = np.minimum(prefix, max_len) if max_len else prefix
    try:
        for idx in batch_order(sess.size, batch_size, None, lengths):
            b = make_batch(arr, sess[idx], prefix[idx], max_len).to(device)
            sc = model.score(b)
            g, e = rank_counts(sc, b.targets)
            greater[idx], ties[idx] = g.cpu().numpy(), e.cpu().numpy()
            inside[idx] = session_items_above(sc, b.items, b.mask, b.targets).cpu().numpy()
    finally:
        model.train(was_training)
    # the repeat flag looks at the whole prefix, also beyond max_len: it describes the data
    return {"greater": greater, "ties": ties, "ranks": greater + ties + 1,
            "targets": arr.items[arr.offsets[sess] + prefix],
            "repeat": repeat_mask(arr.items, arr.offsets, sess, prefix), "inside_above": inside}


def split_ranks(model: SessionModel, data: PreparedData, split: str, batch_size: int = 512,
                max_len: int | None = None, device: torch.device | str = "cpu",
                shard: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pessimistic 1-based rank of every sample's target over all catalogue items: ``(ranks,
    targets)``, both (n_samples,) in the split's sample order (see :func:`split_rank_counts`)."""
    c = split_rank_counts(model, data, split, batch_size, max_len, device, shard)
    return c["ranks"], c["targets"]


def metrics_from_counts(c: dict[str, np.ndarray], item_train_count: np.ndarray, ks=KS) -> dict:
    """The evaluation dict of :func:`evaluate` from :func:`split_rank_counts`' arrays."""
    ranks = c["ranks"]
    cold = item_train_count[c["targets"]] == 0
    rep = c["repeat"]
    out = metrics_from_ranks(ranks, ks)
    subsets = {"cold_": cold, "repeat_": rep, "first_": ~rep, "cold_first_": cold & ~rep}
    for prefix, m in subsets.items():
        out.update(metrics_from_ranks(ranks[m], ks, prefix=prefix))
    if "inside_above" in c:
        # where the ranks go: a first-time target ranked among the items *not* in its session (how
        # well the model explores) and a repeat target among the session's items (how well it
        # orders repeats); rank = the first + the session items above it, for first-time targets
        above = c["inside_above"]
        out.update(metrics_from_ranks(ranks[~rep] - above[~rep], ks, prefix="first_outside_"))
        out.update(metrics_from_ranks(above[rep] + 1, ks, prefix="repeat_inside_"))
        out["first_session_above"] = float(above[~rep].mean()) if (~rep).any() else float("nan")
    out.update(expected_metrics(c["greater"], c["ties"], ks, prefix="rt_"))
    out["samples"] = int(ranks.size)
    out["cold_samples"] = int(cold.sum())
    out["repeat_samples"] = int(rep.sum())
    out["cold_first_samples"] = int((cold & ~rep).sum())
    out["tied_samples"] = int((c["ties"] > 0).sum())
    return out


def evaluate(model: SessionModel, data: PreparedData, split: str = "test", batch_size: int = 512,
             max_len: int | None = None, device: torch.device | str = "cpu", ks=KS, dist=None) -> dict:
    """Hit/MRR/NDCG@k (percent, pessimistic ties) on all samples; the same with a prefix on
    subsets: ``cold_`` (target never in the train split: items known only through knowledge or
    later data), ``repeat_`` (target already in its own session), ``first_`` (not),
    ``cold_first_`` (cold and first-time); where the ranks go: ``first_outside_`` (first-time
    targets ranked among the items not in their session), ``repeat_inside_`` (repeat targets
    ranked among their session's items), ``first_session_above`` (the mean number of session
    items above a first-time target); and ``rt_`` the whole split's expected metrics under
    random tie-breaking. Sample counts: ``samples``, ``cold_samples``, ``repeat_samples``,
    ``cold_first_samples``, ``tied_samples`` (targets tied with at least one other item).

    ``dist`` (a :class:`mkmsr.distributed.DistContext`): each process ranks its shard of the
    samples and the arrays are gathered, so every process returns the metrics of the whole split.
    """
    if dist is None:
        c = split_rank_counts(model, data, split, batch_size, max_len, device)
    else:
        c = split_rank_counts(model, data, split, batch_size, max_len, device, (dist.rank, dist.world))
        c = {k: np.concatenate(dist.gather_array(v)) for k, v in c.items()}
    return metrics_from_counts(c, data.item_train_count, ks)
