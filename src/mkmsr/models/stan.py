"""STAN: sequence- and time-aware neighbourhood (Garg et al., SIGIR 2019), with the session-rec
framework's definitions (``algorithms/knn/stan.py``).

For a current session s = (x_1, ..., x_L):

* item weights (factor 1, recency in s): w(x) = exp((p(x) - L) / lambda_spw), p(x) the position
  of x's latest occurrence;
* similarity to a train session n (its item set): cosine with these weights,
  sim(s, n) = sum_{x in s and n} w(x) / (sqrt(sum_{x in s} w(x)^2) * sqrt(|set(n)|)),
  times (factor 2, recency of n) exp(-(t(s) - t(n)) / lambda_snh) with lambda_snh in days;
* candidates: train sessions sharing an item with s, the ``sample_size`` most recent;
  neighbours: the ``k`` most similar;
* item score (factor 3, position in the neighbour): score(i) = sum_{n, i in n}
  sim(s, n) * exp(-|q(i, n) - q*(n)| / lambda_inh), q(i, n) the position of i's latest
  occurrence in n and q*(n) the latest position of n holding an item of s.

Time: a batch carries no clock, so t(s) is taken as the latest train-session time t_max for
every session. exp(-(t(s) - t(n))/l) = exp(-(t(s) - t_max)/l) * exp(-(t_max - t(n))/l): the first
factor is the same for every neighbour of s, so neither the neighbour choice nor the ranking
changes. Train sessions are timed by their start (sessions last at most an hour; lambda_snh is
days).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .counting import SessionKNNBase, scatter_items


@dataclass
class STANConfig:
    k: int = 100                 # neighbours
    sample_size: int = 5000      # most recent candidate sessions considered (0 = all; session-rec default 5000)
    lambda_spw: float = 1.02     # factor 1 (positions in the current session); session-rec default
    lambda_snh: float = 5.0      # factor 2 (neighbour recency), days
    lambda_inh: float = 2.05     # factor 3 (positions in the neighbour)
    repeat_boost: float = 0.0       # reminder: scores / row max + beta * 1[item in the session] (0 = off)
    repeat_boost_grid: tuple = ()   # if given, the trainer picks repeat_boost from it on validation


class STAN(SessionKNNBase):
    Config = STANConfig

    def __init__(self, config: STANConfig, spec):
        super().__init__(config, spec)
        for name in ("lambda_spw", "lambda_snh", "lambda_inh"):
            if getattr(config, name) <= 0:
                raise ValueError(f"STAN {name} must be > 0, got {getattr(config, name)}")

    def item_weights(self, pos: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        p = pos.to(torch.float32)
        w = torch.exp((p - lengths.to(torch.float32)[:, None]) / self.config.lambda_spw)
        return torch.where(pos > 0, w, torch.zeros_like(w))

    def similarity(self, pos, lengths, d):
        w = self.item_weights(pos, lengths)
        dot = torch.sparse.mm(d["S"], w.T).T                                # (B, N)
        norm = torch.sqrt((w * w).sum(dim=1, keepdim=True)) * torch.sqrt(d["n_unique"].clamp(min=1.0))[None, :]
        age = (self.sess_time.max() - self.sess_time).to(torch.float32)    # seconds before t_max
        decay = torch.exp(-age / (self.config.lambda_snh * 86400.0))
        return dot / norm * decay[None, :]

    def item_scores(self, pos, lengths, nb, w, d):
        items = self.sess_items[nb]                                        # (B, k, Lmax)
        B, k, L = items.shape
        q = torch.arange(1, L + 1, device=items.device).expand(B, k, L)
        shared = pos.gather(1, items.reshape(B, -1)).view(B, k, L) > 0     # 0-padding never shared
        q_star = torch.where(shared, q, torch.zeros_like(q)).amax(dim=2)   # (B, k)
        last = d["is_last"][nb]                                            # (B, k, Lmax)
        contrib = w[:, :, None] * torch.exp(-(q - q_star[:, :, None]).abs().to(torch.float32) / self.config.lambda_inh)
        contrib = torch.where(last & (q_star[:, :, None] > 0), contrib, torch.zeros_like(contrib))
        return scatter_items(self.spec.n_items + 1, items, contrib)
