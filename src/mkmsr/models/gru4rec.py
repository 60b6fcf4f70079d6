"""GRU4REC with the loss functions of Hidasi & Karatzoglou (CIKM 2018, "Recurrent neural
networks with top-k gains"): GRU4REC+CE (softmax cross-entropy) and GRU4REC+BPR.

Encoder: item embedding -> one GRU layer -> the hidden state after the last item. Output: a
separate output embedding and bias per item, score(j) = h^T W_j + b_j (GRU4REC's output layer).

Training samples are session prefixes (the SR-GNN convention every model here shares): the
hidden state of a prefix is exactly what GRU4REC's session-parallel mini-batches carry at that
point of the session, only the gradient steps group samples differently.

BPR (``loss="bpr"``): GRU4REC's sampled ranking loss. The negatives of a sample are the other
targets of the mini-batch plus ``n_extra`` items shared by the batch, drawn with probability
proportional to popularity^``sample_alpha`` (2018 paper's "additional samples"); a negative equal
to the sample's own target is masked out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.batching import Batch
from .base import OutputLayerModel
from .fpmc import bpr_loss


@dataclass
class GRU4RecConfig:
    dim: int = 100              # embedding and hidden size
    loss: str = "ce"            # ce | bpr
    dropout: float = 0.0        # dropout on the hidden state before the output layer
    n_extra: int = 2048         # BPR: additional shared negatives per mini-batch (2018 paper)
    sample_alpha: float = 0.75  # BPR: additional negatives ~ popularity^alpha
    init_std: float = 0.1


class GRU4Rec(OutputLayerModel):
    Config = GRU4RecConfig

    @property
    def softmax_loss(self) -> bool:
        """loss=ce is the full softmax of the output layer; BPR is not."""
        return self.config.loss == "ce"

    def __init__(self, config: GRU4RecConfig, spec):
        super().__init__(config, spec)
        if config.loss not in ("ce", "bpr"):
            raise ValueError(f"GRU4Rec loss must be 'ce' or 'bpr', got {config.loss!r}")
        n, d = spec.n_items + 1, config.dim
        self.embedding = nn.Embedding(n, d, padding_idx=0)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Embedding(n, d)
        self.out_bias = nn.Parameter(torch.zeros(n))
        nn.init.normal_(self.embedding.weight, 0.0, config.init_std)
        nn.init.normal_(self.out.weight, 0.0, config.init_std)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.register_buffer("sample_p", torch.ones(n) / n)   # BPR extra-negative distribution

    def fit_statistics(self, data) -> None:
        c = np.bincount(data.split("train").items, minlength=self.spec.n_items + 1).astype(np.float64)
        c[0] = 0.0
        p = c ** self.config.sample_alpha
        self.sample_p = torch.from_numpy(p / p.sum()).to(torch.float32).to(self.sample_p.device)

    def hidden(self, batch: Batch) -> torch.Tensor:
        """(B, L, d) GRU outputs over the item sequence (right padding never reaches position len-1)."""
        H, _ = self.gru(self.embedding(batch.items))
        return H

    def encode(self, batch: Batch) -> torch.Tensor:
        H = self.hidden(batch)
        h = H[torch.arange(len(batch), device=H.device), batch.lengths - 1]
        return self.drop(h)


    def sr_loss(self, batch: Batch) -> torch.Tensor:
        if self.config.loss == "ce":
            return super().sr_loss(batch)
        h = self.encode(batch)                                                        # (B, d)
        cand = batch.targets
        if self.config.n_extra:
            extra = torch.multinomial(self.sample_p, self.config.n_extra, replacement=True)
            cand = torch.cat([cand, extra])
        S = h @ self.out(cand).T + self.out_bias[cand]                                # (B, B + n_extra)
        pos = S.gather(1, torch.arange(len(batch), device=S.device)[:, None]).squeeze(1)
        valid = cand[None, :] != batch.targets[:, None]
        return bpr_loss(pos, S, valid)
