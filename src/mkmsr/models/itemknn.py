"""Item-kNN on session co-occurrence (the item-to-item baseline of Hidasi et al. 2016 and of the
session-rec framework's ``iknn``).

sim(i, j) = c(i, j) / ((supp(i) + lambda)^alpha * (supp(j) + lambda)^(1 - alpha)),  i != j

where c(i, j) is the number of train sessions holding both items and supp(i) the number holding
i. A session is scored by the similarity row of its **last** item. Co-occurrence is symmetric,
so the model cannot tell "j follows i" from "i follows j".

The similarity matrix is kept in CSR form (``crow``, ``col``, ``val`` buffers) and built without
a per-session loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.batching import Batch
from .counting import CountModel


@dataclass
class ItemKNNConfig:
    lmbd: float = 20.0      # support regulariser lambda (session-rec default 20)
    alpha: float = 0.5      # asymmetry of the normalisation (0.5 = cosine-like)


def cooccurrence(items: np.ndarray, offsets: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Session-level co-occurrence of a split, vectorised.

    Returns ``(rows, cols, counts, support)``: pairs i != j with the number of sessions that hold
    both (each unordered pair listed in both directions), and ``support`` (n_items + 1,) the
    number of sessions holding each item.
    """
    sess = np.repeat(np.arange(offsets.size - 1, dtype=np.int64), np.diff(offsets))
    code = np.unique(sess * (n_items + 1) + items.astype(np.int64))   # distinct (session, item)
    s, it = code // (n_items + 1), code % (n_items + 1)
    support = np.bincount(it, minlength=n_items + 1)
    starts = np.searchsorted(s, np.arange(offsets.size - 1))
    size = np.bincount(s, minlength=offsets.size - 1)
    # every entry pairs with every entry of its session: entry e repeats size[s[e]] times
    reps = size[s]
    a = np.repeat(np.arange(code.size), reps)
    first = np.repeat(starts[s], reps)
    b = first + (np.arange(a.size) - np.repeat(np.cumsum(reps) - reps, reps))
    keep = a != b
    pair = it[a[keep]] * (n_items + 1) + it[b[keep]]
    uniq, counts = np.unique(pair, return_counts=True)
    return uniq // (n_items + 1), uniq % (n_items + 1), counts, support


class ItemKNN(CountModel):
    Config = ItemKNNConfig

    def __init__(self, config: ItemKNNConfig, spec):
        super().__init__(config, spec)
        self.register_buffer("crow", torch.zeros(spec.n_items + 2, dtype=torch.int64))
        self.register_buffer("col", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("val", torch.zeros(0))

    def fit_statistics(self, data) -> None:
        tr = data.split("train")
        n = self.spec.n_items
        rows, cols, counts, supp = cooccurrence(tr.items, tr.offsets, n)
        c = self.config
        supp = supp.astype(np.float64) + c.lmbd
        val = counts / (np.power(supp[rows], c.alpha) * np.power(supp[cols], 1.0 - c.alpha))
        crow = np.zeros(n + 2, dtype=np.int64)
        crow[1:] = np.cumsum(np.bincount(rows, minlength=n + 1))
        dev = self.fitted.device
        self.crow = torch.from_numpy(crow).to(dev)
        self.col = torch.from_numpy(cols.astype(np.int64)).to(dev)
        self.val = torch.from_numpy(val.astype(np.float32)).to(dev)
        self.fitted.fill_(True)

    def logits(self, batch: Batch) -> torch.Tensor:
        B = batch.items.shape[0]
        last = batch.items[torch.arange(B, device=batch.items.device), batch.lengths - 1]   # (B,)
        start, end = self.crow[last], self.crow[last + 1]
        nnz = end - start
        row = torch.repeat_interleave(torch.arange(B, device=last.device), nnz)
        offs = torch.arange(int(nnz.sum()), device=last.device) - torch.repeat_interleave(torch.cumsum(nnz, 0) - nnz, nnz)
        flat = torch.repeat_interleave(start, nnz) + offs
        out = torch.zeros(B, self.spec.n_items + 1, device=last.device)
        out[row, self.col[flat]] = self.val[flat]
        return out[:, 1:]
