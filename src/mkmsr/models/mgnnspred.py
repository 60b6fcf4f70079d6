"""MGNN-SPred (Wang, Zhang, Liu, Liu, Zhang, Lin, Zha; WWW 2020, "Beyond clicks: modeling
multi-relational item graph for session-based target behavior prediction"), a micro-behaviour
successor of MKM-SR's setting: the operations are relations of a global item graph.

From the paper and the authors' code (github.com/Autumn945/MGNN-SPred):

* multi-relational item graph (MRIG): one relation per behaviour (operation) type; for
  each training session and operation r, consecutive items of the session's r-subsequence are
  joined by an edge of relation r (self-loops skipped). Each node keeps, per relation and per
  direction (successors / predecessors), up to ``n_neighbors`` distinct neighbours drawn
  uniformly (authors' code: 5). Built once from the train split in ``fit_statistics`` and saved
  with the model (a buffer);
* graph encoder: ``depth`` (authors' code: 2) parameter-free aggregation steps,
  h^(k)_v = h^(k-1)_v + sum over (relation, direction) of the mean of h^(k-1) over those
  neighbours, from h^(0) = the item embedding;
* sequence encoders: each behaviour's subsequence of the session (its latest
  ``seq_len`` items, authors' code: 3) is mean-pooled over its items' graph vectors, p_r (B, d);
* gated fusion: the paper gates its two behaviour sequences (target and auxiliary) with
  alpha = sigmoid(w^T [p_1; p_2] + b), s = alpha p_1 + (1 - alpha) p_2. Here every operation
  type is one behaviour, so the gate is the R-way softmax over W_g [p_1; ...; p_R] + b_g (for
  R = 2 the same family as the sigmoid gate), with behaviours absent from the session masked
  out; with one operation type s = p_1;
* prediction: s' = W s (no bias) and score(v) = s'^T e_v with the item embedding e_v.

Differences from the paper, stated: the paper predicts the next item of one *target* behaviour
(purchase) from a target and an auxiliary (click) sequence; this project predicts the next item
of any micro-behaviour, so all operation types are symmetric behaviours (the R-way gate above).
Training is by softmax cross-entropy over the full catalogue (authors: 20 sampled negatives),
d = 100 (authors: 64), embeddings ~ N(0, 0.1), as every row here. The graph encoder, pooling,
projection and scoring are the authors' code's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import Batch
from .base import SessionModel
from .layers import full_softmax_ce


@dataclass
class MGNNSPredConfig:
    dim: int = 100          # d (authors: 64)
    depth: int = 2          # aggregation steps over the item graph (authors: 2)
    n_neighbors: int = 5    # sampled neighbours per node, relation and direction (authors: 5)
    seq_len: int = 3        # latest items of each behaviour's subsequence that are pooled (authors: 3)
    graph_seed: int = 0     # seed of the neighbour sampling
    init_std: float = 0.1


def neighbor_table(src: np.ndarray, dst: np.ndarray, n_nodes: int, m: int,
                   rng: np.random.Generator) -> np.ndarray:
    """(n_nodes, m) int32: for each node up to ``m`` distinct ``dst`` of its edges ``src -> dst``,
    drawn uniformly without replacement, 0-padded (node 0 = padding, never a neighbour)."""
    table = np.zeros((n_nodes, m), dtype=np.int32)
    if src.size == 0:
        return table
    pairs = np.unique(src.astype(np.int64) * n_nodes + dst.astype(np.int64))
    u, v = pairs // n_nodes, pairs % n_nodes
    order = np.lexsort((rng.random(u.size), u))          # by node, random within a node
    u, v = u[order], v[order]
    idx = np.arange(u.size)
    start = np.maximum.accumulate(np.where(np.r_[True, u[1:] != u[:-1]], idx, 0))
    rank = idx - start
    keep = rank < m
    table[u[keep], rank[keep]] = v[keep]
    return table


class MGNNSPred(SessionModel):
    Config = MGNNSPredConfig
    softmax_loss = True  # sr_loss: the full softmax over session_vectors . candidate_vectors

    def __init__(self, config: MGNNSPredConfig, spec):
        super().__init__(config, spec)
        if config.depth < 0 or config.n_neighbors < 1 or config.seq_len < 1:
            raise ValueError("depth must be >= 0, n_neighbors and seq_len >= 1")
        d = config.dim
        self.n_behaviours = max(spec.n_ops - 1, 1)      # R: op_idx 1..n_ops-1
        R = self.n_behaviours
        self.item_embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.gate = nn.Linear(R * d, R)
        self.W = nn.Linear(d, d, bias=False)
        # neighbours[v, 2(r-1) + dir, j]: the j-th sampled neighbour of item v under operation r,
        # dir 0 = successors, 1 = predecessors; 0 = none. Filled by fit_statistics.
        self.register_buffer("neighbors", torch.zeros(spec.n_items + 1, 2 * R, config.n_neighbors,
                                                      dtype=torch.int32))
        nn.init.normal_(self.item_embedding.weight, 0.0, config.init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    # ---- the multi-relational item graph ----------------------------------------------------
    def fit_statistics(self, data) -> None:
        self.build_graph(data.split("train"))

    def build_graph(self, split) -> None:
        """Fill ``neighbors`` from a SplitArrays (the train split), vectorised."""
        items = split.items.astype(np.int64)
        ops = split.ops.astype(np.int64)
        sess = np.repeat(np.arange(split.n_sessions), split.lengths)
        n, m = self.spec.n_items + 1, self.config.n_neighbors
        rng = np.random.default_rng(self.config.graph_seed)
        table = np.zeros((n, 2 * self.n_behaviours, m), dtype=np.int32)
        for r in range(1, self.n_behaviours + 1):
            pos = np.flatnonzero(ops == r) if self.spec.n_ops > 1 else np.arange(items.size)
            a, b = pos[:-1], pos[1:]
            same = (sess[a] == sess[b]) & (items[a] != items[b])
            src, dst = items[a][same], items[b][same]
            table[:, 2 * (r - 1)] = neighbor_table(src, dst, n, m, rng)        # successors
            table[:, 2 * (r - 1) + 1] = neighbor_table(dst, src, n, m, rng)    # predecessors
        self.neighbors = torch.from_numpy(table).to(self.neighbors.device)

    def graph_vectors(self, nodes: torch.Tensor) -> torch.Tensor:
        """(u,) int64 sorted unique item_idx -> (u, d) h^(depth) of those nodes.

        Only the nodes within ``depth`` hops are touched: level sets S_0 = nodes,
        S_{k+1} = S_k + neighbours(S_k); h^(0) on S_depth, then each step one weighted
        embedding_bag (weights 1/#neighbours of each (relation, direction), 0 for padding)."""
        levels = [nodes]
        for _ in range(self.config.depth):
            nb = self.neighbors[levels[-1]].long().flatten()
            levels.append(torch.unique(torch.cat([levels[-1], nb])))
        h = self.item_embedding(levels[-1])                                     # (|S_depth|, d)
        for k in range(self.config.depth - 1, -1, -1):
            cur, prev = levels[k], levels[k + 1]
            nb = self.neighbors[cur].long()                                    # (|S_k|, 2R, M)
            valid = (nb > 0).to(h.dtype)
            w = valid / valid.sum(dim=2, keepdim=True).clamp(min=1.0)           # mean per (r, dir)
            pos_nb = torch.searchsorted(prev, nb.flatten(1))                    # rows of prev
            agg = F.embedding_bag(pos_nb, h, per_sample_weights=w.flatten(1), mode="sum")
            h = h[torch.searchsorted(prev, cur)] + agg                          # (|S_k|, d)
        return h

    # ---- the session --------------------------------------------------------------------------
    def behaviour_weights(self, batch: Batch) -> torch.Tensor:
        """(B, L, R) pooling weights: 1/count on the latest ``seq_len`` positions of each
        operation's subsequence, 0 elsewhere (a behaviour absent from the session: all 0)."""
        R = self.n_behaviours
        if self.spec.n_ops > 1:
            onehot = F.one_hot(batch.ops, self.spec.n_ops)[..., 1:].bool() & batch.mask[..., None]
        else:
            onehot = batch.mask[..., None]
        oh = onehot.to(torch.int64)                                            # (B, L, R)
        after = oh.flip(1).cumsum(1).flip(1) - oh                              # same-op positions after t
        keep = (onehot & (after < self.config.seq_len)).to(torch.float32)
        return keep / keep.sum(dim=1, keepdim=True).clamp(min=1.0)

    def encode(self, batch: Batch) -> torch.Tensor:
        nodes, inverse = torch.unique(batch.items, return_inverse=True)         # sorted, (u,), (B, L)
        H = self.graph_vectors(nodes)[inverse]                                 # (B, L, d)
        w = self.behaviour_weights(batch).to(H.dtype)                          # (B, L, R)
        P = torch.einsum("blr,bld->brd", w, H)                                 # p_r (B, R, d)
        present = w.sum(dim=1) > 0                                             # (B, R)
        if self.n_behaviours == 1:
            s = P[:, 0]
        else:
            g = self.gate(P.flatten(1)).masked_fill(~present, float("-inf"))
            g = torch.where(present.any(dim=1, keepdim=True), g, torch.zeros_like(g))
            s = torch.bmm(torch.softmax(g, dim=1)[:, None, :], P).squeeze(1)   # (B, d)
        # a served session whose every operation was unknown (op_idx 0, see mkmsr.recommend)
        # belongs to no behaviour: it falls back to the mean over all its positions
        m = batch.mask[..., None].to(H.dtype)
        s_all = (H * m).sum(dim=1) / m.sum(dim=1)
        s = torch.where(present.any(dim=1, keepdim=True), s, s_all)
        return self.W(s)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        return full_softmax_ce(self.encode(batch), self.item_embedding.weight, batch.targets)
