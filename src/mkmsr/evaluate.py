"""Full-ranking evaluation of a model on a split, batch by batch (the score matrix of the
whole split is never held in memory: each batch's scores are reduced to target ranks)."""
from __future__ import annotations

import numpy as np
import torch

from .batching import make_batch, batch_order
from .dataset import PreparedData
from .metrics import KS, metrics_from_ranks, target_ranks
from .models.base import SessionModel


@torch.inference_mode()
def split_ranks(model: SessionModel, data: PreparedData, split: str, batch_size: int = 512,
                max_len: int | None = None, device: torch.device | str = "cpu",
                shard: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pessimistic 1-based rank of every sample's target over all catalogue items.

    Returns ``(ranks, targets)``, both (n_samples,) in the split's sample order. With
    ``shard=(r, n)`` only samples r, r + n, r + 2n, ... (one process's share, see
    :mod:`mkmsr.distributed`).
    """
    was_training = model.training
    model.eval()
    arr = data.split(split)
    sess, prefix = arr.samples()
    if shard is not None:
        sess, prefix = sess[shard[0]::shard[1]], prefix[shard[0]::shard[1]]
    ranks = np.empty(sess.size, dtype=np.int64)
    lengths = np.minimum(prefix, max_len) if max_len else prefix
    for idx in batch_order(sess.size, batch_size, None, lengths):
        b = make_batch(arr, sess[idx], prefix[idx], max_len).to(device)
        ranks[idx] = target_ranks(model.score(b), b.targets).cpu().numpy()
    model.train(was_training)
    return ranks, arr.items[arr.offsets[sess] + prefix]


def evaluate(model: SessionModel, data: PreparedData, split: str = "test", batch_size: int = 512,
             max_len: int | None = None, device: torch.device | str = "cpu", ks=KS, dist=None) -> dict:
    """Hit/MRR/NDCG@k (percent) on all samples, and with a ``cold_`` prefix on the samples whose
    target never occurs in the train split (items known only through knowledge or later data).

    ``dist`` (a :class:`mkmsr.distributed.DistContext`): each process ranks its shard of the
    samples and the ranks are gathered, so every process returns the metrics of the whole split.
    """
    if dist is None:
        ranks, targets = split_ranks(model, data, split, batch_size, max_len, device)
    else:
        ranks, targets = split_ranks(model, data, split, batch_size, max_len, device, (dist.rank, dist.world))
        ranks = np.concatenate(dist.gather_array(ranks))
        targets = np.concatenate(dist.gather_array(targets))
    cold = data.item_train_count[targets] == 0
    out = metrics_from_ranks(ranks, ks)
    out.update(metrics_from_ranks(ranks[cold], ks, prefix="cold_"))
    out["samples"] = int(ranks.size)
    out["cold_samples"] = int(cold.sum())
    return out
