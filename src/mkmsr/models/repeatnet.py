"""RepeatNet (Ren, Chen, Li, Ren, Zhao, Ma, de Rijke; AAAI 2019): a repeat aware neural
recommendation machine for session-based recommendation.

Encoder: item embeddings through a GRU give h_1..h_t (h_t the last). Three additive
attentions over the positions tau, each a_tau = v^T tanh(W h_tau + U h_t), softmax over the real
positions (padding gets weight 0):

* repeat-explore mechanism: c^re = sum_tau a^re_tau h_tau and
  [P(r), P(e)] = softmax(W^re c^re) (W^re: 2 x h);
* repeat decoder: P(i | r) = sum over the positions tau holding item i of
  a^r_tau, so an item clicked twice accumulates both weights; 0 for items outside the session;
* explore decoder: c^e = sum_tau a^e_tau h_tau, and
  P(i | e) = softmax(W^e [c^e; h_t] + f)_i with f_i = -inf for the session's own items
  (W^e: n_items x 2h, one output row per item);
* P(i) = P(r) P(i | r) + P(e) P(i | e), trained by its negative log-likelihood.

The two decoders' supports are disjoint (session items / all other items), so
log P(i) = log P(r) + log P(i | r) on the session's items and log P(e) + log P(i | e) elsewhere:
the model scores with that exact log-probability (finite everywhere but the padding column 0;
a repeat probability that underflows float32 is floored at its smallest normal value). It is no
dot product of a session vector with a fixed item matrix, so ``candidate_vectors`` raises and
servers rank by ``score`` (see mkmsr.recommend).

``mode_loss=True`` adds a mode-prediction term
-[1(target in session) log P(r) + 1(target not in session) log P(e)] (RecBole's ``joint_train``,
off by default there and here). Dropout inside the attentions (RecBole: 0.5) is ``dropout``,
default 0. d = h = 100, embeddings ~ N(0, 0.1) as every model here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import Batch
from .base import SessionModel
from .seqtools import at_last


@dataclass
class RepeatNetConfig:
    dim: int = 100          # item embedding size
    hidden: int = 100       # GRU hidden size h
    dropout: float = 0.0    # on the attention projections (RecBole: 0.5)
    mode_loss: bool = False  # add the mode-prediction loss (RecBole's joint_train)
    init_std: float = 0.1


class AdditiveAttention(nn.Module):
    """a_tau = softmax over real positions of v^T tanh(W h_tau + U h_t): (B, L, h), (B, h) -> (B, L)."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.W = nn.Linear(hidden, hidden, bias=False)
        self.U = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, H: torch.Tensor, last: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.v(torch.tanh(self.drop(self.W(H)) + self.drop(self.U(last))[:, None, :])).squeeze(-1)
        return torch.softmax(e.masked_fill(~mask, float("-inf")), dim=1)


class RepeatNet(SessionModel):
    Config = RepeatNetConfig

    def __init__(self, config: RepeatNetConfig, spec):
        super().__init__(config, spec)
        d, h = config.dim, config.hidden
        self.item_embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.gru = nn.GRU(d, h, batch_first=True)
        self.att_mode = AdditiveAttention(h, config.dropout)
        self.W_mode = nn.Linear(h, 2, bias=False)                        # W^re
        self.att_repeat = AdditiveAttention(h, config.dropout)
        self.att_explore = AdditiveAttention(h, config.dropout)
        self.W_explore = nn.Linear(2 * h, spec.n_items + 1, bias=False)  # W^e, row = item_idx
        nn.init.normal_(self.item_embedding.weight, 0.0, config.init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, d) the encoder's input item embeddings (not a scoring matrix)."""
        return self.item_embedding.weight

    def candidate_vectors(self) -> torch.Tensor:
        raise NotImplementedError("RepeatNet's scores are a repeat/explore mixture; use score()")

    def session_vectors(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError("RepeatNet's scores are a repeat/explore mixture; use score()")

    def components(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The mixture's parts, each over item_idx 0..n_items (column 0 = padding):

        log_mode  (B, 2) log [P(r), P(e)]
        repeat    (B, n_items + 1) P(i | r): attention mass summed per item, 0 off the session
        explore   (B, n_items + 1) log P(i | e): log-softmax with the session's items (and the
                  padding column) masked to a large negative value (not -inf, so a session
                  holding every item still gives finite numbers; those entries are never used)
        present   (B, n_items + 1) bool, item i occurs in the session
        """
        mask = batch.mask
        H, _ = self.gru(self.item_embedding(batch.items))                      # (B, L, h)
        last = at_last(H, batch.lengths)                                       # h_t (B, h)
        a_re = self.att_mode(H, last, mask)
        log_mode = F.log_softmax(self.W_mode(torch.bmm(a_re[:, None], H).squeeze(1)), dim=-1)
        n = self.spec.n_items + 1
        a_r = self.att_repeat(H, last, mask)                                   # (B, L), 0 on padding
        repeat = H.new_zeros(H.shape[0], n).scatter_add_(1, batch.items, a_r)
        present = torch.zeros(H.shape[0], n, dtype=torch.bool, device=H.device)
        present.scatter_(1, batch.items, mask)
        present[:, 0] = False
        a_e = self.att_explore(H, last, mask)
        c_e = torch.bmm(a_e[:, None], H).squeeze(1)                            # (B, h)
        z = self.W_explore(torch.cat([c_e, last], dim=-1))                    # (B, n_items + 1)
        blocked = present.clone()
        blocked[:, 0] = True
        explore = F.log_softmax(z.masked_fill(blocked, -1e9), dim=-1)
        return {"log_mode": log_mode, "repeat": repeat, "explore": explore, "present": present}

    def logits(self, batch: Batch) -> torch.Tensor:
        """(B, n_items) log P(i) of item_idx 1..n_items (column j is item j + 1)."""
        return self._log_probs(self.components(batch))

    @staticmethod
    def _log_probs(c: dict[str, torch.Tensor]) -> torch.Tensor:
        present = c["present"][:, 1:]
        rep = c["repeat"][:, 1:]
        tiny = torch.finfo(rep.dtype).tiny
        # log of the repeat probability only where it is defined (elsewhere 1, whose log is 0 and
        # whose gradient is harmless), so no log(0) enters the graph
        log_rep = torch.where(present, rep, torch.ones_like(rep)).clamp(min=tiny).log()
        lm = c["log_mode"]
        return torch.where(present, lm[:, :1] + log_rep, lm[:, 1:] + c["explore"][:, 1:])

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        """Negative log-likelihood of the mixture, averaged over the batch; plus the
        mode-prediction loss with ``mode_loss``."""
        c = self.components(batch)
        loss = F.nll_loss(self._log_probs(c), batch.targets - 1)
        if self.config.mode_loss:
            repeated = c["present"].gather(1, batch.targets[:, None]).squeeze(1)
            loss = loss + F.nll_loss(c["log_mode"], (~repeated).long())         # class 0 = repeat
        return loss
