"""V-SKNN: vector-multiplication session-kNN (Ludewig & Jannach, UMUAI 2018), with the session-rec
framework's definitions (``algorithms/knn/vsknn.py``).

For a current session s = (x_1, ..., x_L):

* item weights: w(x) = f(p(x), L) with p(x) the 1-based position of x's latest occurrence and
  f the ``weighting`` decay: ``div`` p/L (default), ``quadratic`` (p/L)^2, ``linear``
  max(0, 1 - 0.1 (L - p)), ``log`` 1/log10(L - p + 1.7), ``same`` 1;
* similarity to a train session n (its item *set*): sim(s, n) = sum_{x in s and n} w(x) / |set(s)|;
* candidates: train sessions sharing an item with s, the ``sample_size`` most recent of them;
  neighbours: the ``k`` most similar;
* item score: score(i) = sum_{n in neighbours, i in n} sim(s, n) * g(step_n) * (1 + idf_weighting * idf(i)),
  step_n = L - p* + 1 with p* the latest position of s whose item is in n, and g the
  ``weighting_score`` decay: ``div`` 1/step (default), ``quadratic`` 1/step^2, ``linear``
  max(0, 1 - 0.1 step), ``log`` 1/log10(step + 1.7), ``same`` 1.

Items of the current session are scored like any other ("remind", session-rec's default). The
final max-normalisation of session-rec does not change a ranking and is left out; the
``repeat_boost`` option (registered as ``v-sknn-remind``) adds a validation-tuned reminder
(see :func:`mkmsr.models.counting.remind`).
(session-rec's ``linear`` weighting zeroes positions beyond 10 by a slip; we use the intended decay.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .counting import SessionKNNBase, scatter_items

WEIGHTINGS = ("div", "quadratic", "linear", "log", "same")


def position_weight(p: torch.Tensor, L: torch.Tensor, kind: str) -> torch.Tensor:
    """f(p, L) for positions p >= 1 (float tensors, broadcastable)."""
    if kind == "div":
        return p / L
    if kind == "quadratic":
        return (p / L) ** 2
    if kind == "linear":
        return (1.0 - 0.1 * (L - p)).clamp(min=0.0)
    if kind == "log":
        return 1.0 / torch.log10(L - p + 1.7)
    if kind == "same":
        return torch.ones_like(p / L)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {kind!r}")


def step_weight(step: torch.Tensor, kind: str) -> torch.Tensor:
    """g(step) for steps >= 1."""
    if kind == "div":
        return 1.0 / step
    if kind == "quadratic":
        return 1.0 / step ** 2
    if kind == "linear":
        return (1.0 - 0.1 * step).clamp(min=0.0)
    if kind == "log":
        return 1.0 / torch.log10(step + 1.7)
    if kind == "same":
        return torch.ones_like(step)
    raise ValueError(f"weighting_score must be one of {WEIGHTINGS}, got {kind!r}")


@dataclass
class VSKNNConfig:
    k: int = 100                    # neighbours (session-rec default 100)
    sample_size: int = 1000         # most recent candidate sessions considered (0 = all)
    weighting: str = "div"          # position decay of the current session's items
    weighting_score: str = "div"    # decay by how far back the neighbour's match lies
    idf_weighting: float = 0.0      # 0 = off
    repeat_boost: float = 0.0       # reminder: scores / row max + beta * 1[item in the session] (0 = off)
    repeat_boost_grid: tuple = ()   # if given, the trainer picks repeat_boost from it on validation


class VSKNN(SessionKNNBase):
    Config = VSKNNConfig

    def __init__(self, config: VSKNNConfig, spec):
        super().__init__(config, spec)
        for name in ("weighting", "weighting_score"):
            if getattr(config, name) not in WEIGHTINGS:
                raise ValueError(f"{name} must be one of {WEIGHTINGS}, got {getattr(config, name)!r}")

    def item_weights(self, pos: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, n+1) w(x) of each item of the current session (0 elsewhere)."""
        p = pos.to(torch.float32)
        w = position_weight(p.clamp(min=1.0), lengths.to(torch.float32)[:, None], self.config.weighting)
        return torch.where(pos > 0, w, torch.zeros_like(w))

    def similarity(self, pos, lengths, d):
        w = self.item_weights(pos, lengths)
        n_cur = (pos > 0).sum(dim=1, keepdim=True).to(torch.float32)
        return torch.sparse.mm(d["S"], w.T).T / n_cur

    def item_scores(self, pos, lengths, nb, w, d):
        items = self.sess_items[nb]                                        # (B, k, Lmax)
        p_star = pos.gather(1, items.reshape(items.shape[0], -1)).view(items.shape).amax(dim=2)  # (B, k)
        step = (lengths[:, None] - p_star + 1).clamp(min=1).to(torch.float32)
        weight = w * step_weight(step, self.config.weighting_score) * (p_star > 0)
        uniq = d["uniq"][nb]                                               # (B, k, U)
        contrib = weight[:, :, None].expand(uniq.shape)
        if self.config.idf_weighting:
            contrib = contrib * (1.0 + self.config.idf_weighting * self.idf[uniq])
        return scatter_items(self.spec.n_items + 1, uniq, contrib)
