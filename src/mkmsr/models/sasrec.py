"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation.

With item embeddings M_i and learned position embeddings P_t of the latest n items of a prefix:

* input: E^_t = M_{s_t} + P_t (§III-A), dropout;
* b self-attention blocks (§III-B/C), each with the paper's residual form
  g(x) = x + Dropout(g(LayerNorm(x))) around (i) causal single-head self-attention
  S = softmax(Q K^T / sqrt(d)) V, where position t attends only to positions <= t (the paper
  forbids every link from Q_i to K_j with j > i), and (ii) a point-wise two-layer ReLU
  feed-forward net F = ReLU(S W1 + b1) W2 + b2; a final LayerNorm (the authors' code);
* prediction: r_{i,t} = F_t^T M_i with the shared item embedding (§III-D), read at the
  last position of the prefix.

Positions count back from the latest item (P_0 = the latest item's position): the authors' code
left-pads every sequence to n, so there too the latest item always holds the same position
embedding. A prefix longer than n keeps only its latest n items (``max_len``, paper: 50 on the
sparse datasets).

Differences from the paper, shared with every other row of this project's table: training
samples are session prefixes (the SR-GNN convention) scored by a softmax cross-entropy over the
full catalogue, where the paper trains every position of a user's sequence with a binary
cross-entropy against one sampled negative; d = 100 (paper: 50). Dropout 0.5 is the paper's
setting for its sparse datasets (0.2 only for MovieLens-1M); the official code's sqrt(d) scaling
of the item embeddings is not in the paper and not used.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.batching import Batch
from .base import SessionModel
from .layers import full_softmax_ce
from .seqtools import at_last, causal_mask, latest


@dataclass
class SASRecConfig:
    dim: int = 100          # d (paper: 50)
    n_blocks: int = 2       # b (paper: 2)
    n_heads: int = 1        # paper: 1
    dropout: float = 0.5    # paper: 0.5 on sparse data, 0.2 on MovieLens-1M
    max_len: int = 50       # n, the number of position embeddings (paper: 50 on sparse data)
    init_std: float = 0.1   # item embeddings ~ N(0, init_std), as every model here


class SASRec(SessionModel):
    Config = SASRecConfig
    softmax_loss = True  # sr_loss: the full softmax over session_vectors . candidate_vectors

    def __init__(self, config: SASRecConfig, spec):
        super().__init__(config, spec)
        d = config.dim
        if config.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {config.max_len}")
        self.item_embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.drop = nn.Dropout(config.dropout)
        # pre-LN blocks: x + Dropout(SA(LN(x))), then x + Dropout(FFN(LN(x))), as the paper's g(x)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, config.n_heads, dim_feedforward=d, dropout=config.dropout,
                                       activation="relu", batch_first=True, norm_first=True)
            for _ in range(config.n_blocks))
        self.final_norm = nn.LayerNorm(d)
        nn.init.normal_(self.item_embedding.weight, 0.0, config.init_std)
        nn.init.normal_(self.position_embedding.weight, 0.0, config.init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def positions(self, batch: Batch) -> torch.Tensor:
        """(B, L) int64 position index counted back from the latest item (0 on padding too)."""
        L = batch.items.shape[1]
        back = batch.lengths[:, None] - 1 - torch.arange(L, device=batch.items.device)[None, :]
        return back.clamp(min=0)

    def hidden(self, batch: Batch) -> torch.Tensor:
        """(B, L, d) block outputs F_t for each position of the (truncated) prefix; padding rows
        are computed but never read: with right padding and the causal mask no real position
        attends to them."""
        X = self.item_embedding(batch.items) + self.position_embedding(self.positions(batch))  # (B, L, d)
        X = self.drop(X)
        mask = causal_mask(X.shape[1], X.device)
        for block in self.blocks:
            X = block(X, src_mask=mask, is_causal=True)
        return self.final_norm(X)

    def encode(self, batch: Batch) -> torch.Tensor:
        batch = latest(batch, self.config.max_len)
        return at_last(self.hidden(batch), batch.lengths)                     # (B, d)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        """Softmax cross-entropy over the full catalogue (fused, see layers.full_softmax_ce)."""
        return full_softmax_ce(self.encode(batch), self.item_embedding.weight, batch.targets)
