"""STAMP (Liu, Zeng, Mokhosi, Zhang; KDD 2018): short-term attention/memory priority model.

With item embeddings x_1..x_t of a session prefix:

* m_s = mean(x_1..x_t) (general interest), m_t = x_t (current interest, the last click);
* attention: alpha_i = w_0^T sigmoid(W_1 x_i + W_2 m_t + W_3 m_s + b_a) (not normalised), and
  the memory m_a = sum_i alpha_i x_i, so the last click steers which items are remembered;
* two MLP cells: h_s = tanh(W_s m_a + b_s), h_t = tanh(W_t m_t + b_t);
* trilinear score: z_j = <h_s, h_t, x_j> = sum_k h_s[k] h_t[k] x_j[k], softmax cross-entropy.

The paper writes sigmoid(z) before the softmax; its authors' code (and later re-implementations)
feed z itself to the softmax, which is our default (``sigmoid_scores=False``). Weights
~ N(0, 0.05) as in the paper; embeddings ~ N(0, 0.1) as MKM-SR §4.1.4 sets for every model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.batching import Batch
from .base import SessionModel


@dataclass
class STAMPConfig:
    dim: int = 100
    sigmoid_scores: bool = False
    init_std: float = 0.1
    weight_std: float = 0.05


class STAMP(SessionModel):
    Config = STAMPConfig

    @property
    def softmax_loss(self) -> bool:
        """The softmax over z, unless z goes through the paper's sigmoid first."""
        return not self.config.sigmoid_scores

    def __init__(self, config: STAMPConfig, spec):
        super().__init__(config, spec)
        d = config.dim
        self.embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.W1 = nn.Linear(d, d, bias=False)
        self.W2 = nn.Linear(d, d, bias=False)
        self.W3 = nn.Linear(d, d, bias=True)     # its bias is b_a
        self.w0 = nn.Linear(d, 1, bias=False)
        self.mlp_s = nn.Linear(d, d)
        self.mlp_t = nn.Linear(d, d)
        for name, p in self.named_parameters():
            if name.startswith("embedding."):
                nn.init.normal_(p, 0.0, config.init_std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, config.weight_std)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def memories(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(m_a (B, d), m_t (B, d), alpha (B, L))."""
        X = self.embedding(batch.items)                                        # (B, L, d)
        mask = batch.mask
        m_t = X[torch.arange(len(batch), device=X.device), batch.lengths - 1]
        m_s = (X * mask[:, :, None]).sum(1) / batch.lengths[:, None].to(X.dtype)
        alpha = self.w0(torch.sigmoid(self.W1(X) + self.W2(m_t)[:, None] + self.W3(m_s)[:, None])).squeeze(-1)
        alpha = alpha.masked_fill(~mask, 0.0)
        m_a = torch.bmm(alpha[:, None, :], X).squeeze(1)
        return m_a, m_t, alpha

    def encode(self, batch: Batch) -> torch.Tensor:
        m_a, m_t, _ = self.memories(batch)
        return torch.tanh(self.mlp_s(m_a)) * torch.tanh(self.mlp_t(m_t))      # h_s (.) h_t, (B, d)

    def item_embeddings(self) -> torch.Tensor:
        return self.embedding.weight

    def logits(self, batch: Batch) -> torch.Tensor:
        z = super().logits(batch)
        return torch.sigmoid(z) if self.config.sigmoid_scores else z
