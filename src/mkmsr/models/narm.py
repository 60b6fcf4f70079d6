"""NARM (Li, Ren, Chen, Ren, Lian, Ma; CIKM 2017): neural attentive session-based recommendation.

Two encoders over one GRU's hidden states h_1..h_t:

* global encoder: c_g = h_t, the final hidden state (the user's sequential behaviour);
* local encoder: c_l = sum_j alpha_tj h_j with alpha_tj = v^T sigmoid(A_1 h_t + A_2 h_j)
  (the main purpose in the current session; padding positions get alpha = 0);

c = [c_g; c_l] (2H). Scores are bilinear: score(j) = emb_j^T B c with B (d x 2H). Dropout 0.25
between the item embedding and the GRU and 0.5 before B (the paper's settings).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.batching import Batch
from .base import SessionModel


@dataclass
class NARMConfig:
    dim: int = 100            # item embedding size (paper: 50; 100 everywhere here)
    hidden: int = 100         # GRU hidden size (paper: 100)
    emb_dropout: float = 0.25
    ct_dropout: float = 0.5
    init_std: float = 0.1


class NARM(SessionModel):
    Config = NARMConfig
    softmax_loss = True  # sr_loss: the full softmax over session_vectors . candidate_vectors

    def __init__(self, config: NARMConfig, spec):
        super().__init__(config, spec)
        d, H = config.dim, config.hidden
        self.embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.emb_drop = nn.Dropout(config.emb_dropout)
        self.gru = nn.GRU(d, H, batch_first=True)
        self.A1 = nn.Linear(H, H, bias=False)
        self.A2 = nn.Linear(H, H, bias=False)
        self.v = nn.Linear(H, 1, bias=False)
        self.ct_drop = nn.Dropout(config.ct_dropout)
        self.B = nn.Linear(2 * H, d, bias=False)
        nn.init.normal_(self.embedding.weight, 0.0, config.init_std)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def encoders(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_g (B, H), c_l (B, H), alpha (B, L)) of the two encoders."""
        Hs, _ = self.gru(self.emb_drop(self.embedding(batch.items)))          # (B, L, H)
        c_g = Hs[torch.arange(len(batch), device=Hs.device), batch.lengths - 1]
        alpha = self.v(torch.sigmoid(self.A1(c_g)[:, None, :] + self.A2(Hs))).squeeze(-1)
        alpha = alpha.masked_fill(~batch.mask, 0.0)
        c_l = torch.bmm(alpha[:, None, :], Hs).squeeze(1)
        return c_g, c_l, alpha

    def encode(self, batch: Batch) -> torch.Tensor:
        c_g, c_l, _ = self.encoders(batch)
        return self.B(self.ct_drop(torch.cat([c_g, c_l], dim=-1)))            # (B, d)

    def item_embeddings(self) -> torch.Tensor:
        return self.embedding.weight
