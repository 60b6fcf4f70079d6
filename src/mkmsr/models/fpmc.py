"""FPMC (Rendle, Freudenthaler, Schmidt-Thieme; WWW 2010), adapted to anonymous sessions.

FPMC scores item j for user u after basket B as
    x(u, B, j) = <v_u^{U,I}, v_j^{I,U}> + 1/|B| sum_{l in B} <v_j^{I,L}, v_l^{L,I}>
(matrix factorisation + factorised Markov chain) and learns it with S-BPR. Sessions are
anonymous, so there is no user to factorise: as in the NARM and STAMP papers' FPMC baselines the
user term is dropped. The "previous basket" of a session prefix is its last item
(``basket="last"``, a first-order chain) or all its items (``basket="session"``).

Loss: S-BPR, -mean log sigmoid(x(s, target) - x(s, j)) over ``n_negatives`` items drawn
uniformly per sample (FPMC draws one negative per SGD step; several per step give the same
objective in expectation with fewer steps).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import Batch
from .base import SessionModel


@dataclass
class FPMCConfig:
    dim: int = 100
    basket: str = "last"      # last | session
    n_negatives: int = 100    # uniform negatives per sample for S-BPR
    init_std: float = 0.1     # MKM-SR §4.1.4: every embedding ~ N(0, 0.1)


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BPR: -mean log sigmoid(pos - neg). ``pos`` (B,), ``neg`` (B, n); ``valid`` (B, n) bool
    masks out negatives that must not count (e.g. equal to the positive item)."""
    ll = F.logsigmoid(pos[:, None] - neg)
    if valid is None:
        return -ll.mean()
    return -(ll * valid).sum() / valid.sum().clamp(min=1)


class FPMC(SessionModel):
    Config = FPMCConfig

    def __init__(self, config: FPMCConfig, spec):
        super().__init__(config, spec)
        if config.basket not in ("last", "session"):
            raise ValueError(f"FPMC basket must be 'last' or 'session', got {config.basket!r}")
        n = spec.n_items + 1
        self.V_IL = nn.Embedding(n, config.dim, padding_idx=0)   # candidate side of the chain
        self.V_LI = nn.Embedding(n, config.dim, padding_idx=0)   # previous-basket side
        for e in (self.V_IL, self.V_LI):
            nn.init.normal_(e.weight, 0.0, config.init_std)
            with torch.no_grad():
                e.weight[0].zero_()

    def encode(self, batch: Batch) -> torch.Tensor:
        """(B, d): mean of V_LI over the previous basket (the last item, or the whole prefix)."""
        if self.config.basket == "last":
            last = batch.items[torch.arange(len(batch), device=batch.items.device), batch.lengths - 1]
            return self.V_LI(last)
        m = batch.mask.to(torch.float32)
        return (self.V_LI(batch.items) * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)

    def item_embeddings(self) -> torch.Tensor:
        return self.V_IL.weight

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        s = self.encode(batch)                                                          # (B, d)
        neg = torch.randint(1, self.spec.n_items + 1, (len(batch), self.config.n_negatives),
                            device=s.device)
        pos = (s * self.V_IL(batch.targets)).sum(-1)
        negs = torch.bmm(self.V_IL(neg), s[:, :, None]).squeeze(-1)
        return bpr_loss(pos, negs, neg != batch.targets[:, None])
