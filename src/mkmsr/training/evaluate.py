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
    (item_idx) and ``repeat`` (target already in its own session prefix). With ``shard=(r, n)``
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
    lengths = np.minimum(prefix, max_len) if max_len else prefix
    try:
        for idx in batch_order(sess.size, batch_size, None, lengths):
            b = make_batch(arr, sess[idx], prefix[idx], max_len).to(device)
            g, e = rank_counts(model.score(b), b.targets)
            greater[idx], ties[idx] = g.cpu().numpy(), e.cpu().numpy()
    finally:
        model.train(was_training)
    # the repeat flag looks at the whole prefix, also beyond max_len: it describes the data
    return {"greater": greater, "ties": ties, "ranks": greater + ties + 1,
            "targets": arr.items[arr.offsets[sess] + prefix],
            "repeat": repeat_mask(arr.items, arr.offsets, sess, prefix)}


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
    ``cold_first_`` (cold and first-time); and ``rt_`` the whole split's expected metrics under
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
