"""Samples -> padded tensors, without per-sample Python loops.

A batch holds prefixes of sessions, right-padded with index 0. The session graph of the GNN
models is built from a batch inside the model (:func:`mkmsr.models.layers.session_graph`), on
the same device, also vectorised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .dataset import SplitArrays


@dataclass
class Batch:
    """A batch of session prefixes.

    items   (B, L) int64 item_idx, right-padded with 0
    ops     (B, L) int64 op_idx, right-padded with 0
    lengths (B,)   int64, 1 <= lengths <= L
    targets (B,)   int64 item_idx of the next item, or None when serving
    train_sessions (B,) int64 index of the train-split session each prefix is cut from, set by
            the training loop only (models that look up train sessions, e.g. a neighbourhood,
            must not find the sample's own session there); None otherwise
    origin  the split the prefixes come from (``SplitArrays.origin``: content hash / split name),
            "" for sessions built otherwise (serving)
    sample_idx (B,) int64 index of each row in its split's ``samples()`` order, -1 where the
            prefix was cut by ``max_len`` (the row is then not that sample); None when
            ``origin`` is "". Lets a model reuse per-sample values that do not depend on its
            parameters (e.g. MKM-SR-RN's neighbourhoods) instead of recomputing them each epoch.
    """

    items: torch.Tensor
    ops: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor | None = None
    train_sessions: torch.Tensor | None = None
    origin: str = ""
    sample_idx: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        """(B, L) bool, True on real micro-behaviours."""
        L = self.items.shape[1]
        return torch.arange(L, device=self.items.device)[None, :] < self.lengths[:, None]

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        t = self.targets.to(device, non_blocking=True) if self.targets is not None else None
        ts = self.train_sessions.to(device, non_blocking=True) if self.train_sessions is not None else None
        si = self.sample_idx.to(device, non_blocking=True) if self.sample_idx is not None else None
        return Batch(self.items.to(device, non_blocking=True), self.ops.to(device, non_blocking=True),
                     self.lengths.to(device, non_blocking=True), t, ts, self.origin, si)


def make_batch(split: SplitArrays, session_idx: np.ndarray, prefix_len: np.ndarray,
               max_len: int | None = None, with_targets: bool = True) -> Batch:
    """Gather the prefixes ``(session_idx, prefix_len)`` of ``split`` into a padded Batch.

    With ``max_len`` only the latest ``max_len`` micro-behaviours of each prefix are kept.
    """
    start = split.offsets[session_idx]
    eff = np.minimum(prefix_len, max_len) if max_len else prefix_len
    L = int(eff.max())
    first = start + prefix_len - eff
    ar = np.arange(L)
    mask = ar[None, :] < eff[:, None]
    pos = np.where(mask, first[:, None] + ar[None, :], 0)
    items = np.where(mask, split.items[pos], 0)
    ops = np.where(mask, split.ops[pos], 0)
    targets = torch.from_numpy(split.items[start + prefix_len].astype(np.int64)) if with_targets else None
    sample_idx = None
    if split.origin:
        sample_idx = torch.from_numpy(np.where(eff == prefix_len, split.sample_start[session_idx] + prefix_len - 1, -1)
                                      .astype(np.int64))
    return Batch(torch.from_numpy(items.astype(np.int64)), torch.from_numpy(ops.astype(np.int64)),
                 torch.from_numpy(eff.astype(np.int64)), targets, origin=split.origin, sample_idx=sample_idx)


def batch_from_sequences(items: Sequence[Sequence[int]], ops: Sequence[Sequence[int]],
                         max_len: int | None = None) -> Batch:
    """Pad index sequences (already internal indices, each non-empty) into a Batch."""
    lens = np.array([len(s) for s in items], dtype=np.int64)
    if max_len:
        items = [s[-max_len:] for s in items]
        ops = [s[-max_len:] for s in ops]
        lens = np.minimum(lens, max_len)
    L = int(lens.max())
    flat_i = np.concatenate([np.asarray(s, dtype=np.int64) for s in items])
    flat_o = np.concatenate([np.asarray(s, dtype=np.int64) for s in ops])
    mask = np.arange(L)[None, :] < lens[:, None]
    it = np.zeros((len(lens), L), dtype=np.int64)
    op = np.zeros((len(lens), L), dtype=np.int64)
    it[mask] = flat_i
    op[mask] = flat_o
    return Batch(torch.from_numpy(it), torch.from_numpy(op), torch.from_numpy(lens))


def batch_order(n: int, batch_size: int, rng: np.random.Generator | None = None,
                lengths: np.ndarray | None = None, bucket: int = 0) -> Iterator[np.ndarray]:
    """Yield arrays of sample indices, one per batch.

    ``rng`` None: in order (or, with ``lengths``, sorted by length, for fast evaluation).
    With ``rng``: a random permutation; with ``bucket`` > 0 and ``lengths``, each run of
    ``bucket`` batches is sorted by length before cutting (less padding; every sample is
    still computed exactly as alone, only batch membership correlates with length) and the
    batches are then shuffled.
    """
    if rng is None:
        order = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(n)
        for i in range(0, n, batch_size):
            yield order[i:i + batch_size]
        return
    perm = rng.permutation(n)
    if bucket and lengths is not None:
        chunk = batch_size * bucket
        parts = [perm[i:i + chunk] for i in range(0, n, chunk)]
        perm = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in parts])
        batches = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
        for j in rng.permutation(len(batches)):
            yield batches[j]
        return
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]
