"""MKM-SR-RN: MKM-SR with learned Repeats, Neighbourhood evidence and knowledge-only cold items.

Not in the paper: this project's model for the lead issue, kept beside the faithful ``mkmsr``
and ``mkmsr+`` (whose encoder it shares: GGNN over items, GRU over operations, soft attention,
TransH knowledge, item vector = id embedding + mean attribute embedding, cosine scoring).
Three parts, each switchable for the ablations:

* **Repeat / explore mixture, learned end to end** (RepeatNet, Ren et al. AAAI 2019, conditioned
  on micro-behaviours). With M the (B, L, 2d) micro-behaviour states (item GNN state ++
  operation-GRU state, Eq. 5) and s the session vector (Eq. 8):

      a_t   = v^T tanh(W_m m_t + W_s s + R[min(L - t, R - 1)])      (recency bucket R[.])
      alpha = softmax_t(a_t) over the session's positions
      p_rep(i) = sum_t alpha_t 1[x_t = i]
      g     = sigmoid(w_g^T [s ; m_L] + b_g)                         (P(repeat | session))
      p(i)  = g p_rep(i) + (1 - g) softmax(e)(i)

  so whether and what the user re-consumes depends on the operations (the GRU state of every
  position: cart then order of the same item) and on recency, instead of one inference-time
  constant (MKM-SR+'s ``repeat_boost``). Trained by the NLL of p(target); the score is log p(i).
* **Neighbourhood evidence** in the explore logits: e(i) = scale cos(s, v_i) + w_1 n(i) +
  w_2 1[n(i) > 0], with n the STAN scores (Garg et al. 2019; ``mkmsr.models.stan``) of the
  session against the train split, divided by the row's maximum, and w_1, w_2 learned. STAN is
  fitted on the train split only; on a training prefix its own train session is left out of the
  neighbourhood (it holds the target). The STAN options are ``nb_*`` (the benchmark passes STAN's
  validation-tuned ones).
* **Cold items through knowledge**: an item that never occurs in the train split has an
  untrained id embedding; with ``cold_items="attributes"`` its vector is its attribute mean alone
  (brand, shop, category, launch month...). To make such vectors rank, training replaces the id
  part of a random ``id_dropout`` fraction of the items by zero in each batch (for the GGNN input
  and the candidates alike), so the attribute embeddings learn to stand in for an item.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import Batch
from ..data.dataset import DatasetSpec
from .mkmsr import MKMSR, MKMSRConfig
from .stan import STAN, STANConfig

NB_SCALE = 8.0


@dataclass
class MKMSRRNConfig(MKMSRConfig):
    # MKM-SR+'s encoder settings
    item_repr: str = "id+attributes"
    scoring: str = "cosine"
    kg_loss: str = "margin"
    kg_passes: float = 3.0
    # the three parts
    repeat: bool = True            # learned repeat/explore mixture (False: explore logits only)
    recency_buckets: int = 10      # R: positions from the end 0..R-2, then one shared bucket
    neighbours: bool = True        # STAN scores in the explore logits
    nb_k: int = 100
    nb_sample_size: int = 5000
    nb_lambda_spw: float = 1.02
    nb_lambda_snh: float = 5.0
    nb_lambda_inh: float = 2.05
    nb_init: tuple = (48.0, 48.0, 4.0)  # initial weights of the neighbourhood features (learned)
    # inference-time calibration, chosen on validation after training (``calibration_grid``)
    nb_multiplier: float = 1.0     # x the learned neighbourhood weights
    gate_shift: float = 0.0        # + the logit of P(repeat)
    calibrate: bool = True
    cold_items: str = "attributes"  # attributes: never-trained items scored by attributes alone | id
    id_dropout: float = 0.1        # training: share of items whose id part is zeroed per batch


class MKMSRRN(MKMSR):
    Config = MKMSRRNConfig

    def __init__(self, config: MKMSRRNConfig, spec: DatasetSpec):
        super().__init__(config, spec)
        if config.repeat_boost or config.repeat_boost_grid:
            raise ValueError("mkmsr-rn learns its repeats: repeat_boost / repeat_boost_grid do not apply")
        if config.cold_items not in ("attributes", "id"):
            raise ValueError(f"cold_items must be 'attributes' or 'id', got {config.cold_items!r}")
        if config.cold_items == "attributes" and config.item_repr != "id+attributes":
            raise ValueError("cold_items='attributes' needs item_repr='id+attributes' (the attribute part)")
        if not 0.0 <= config.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {config.id_dropout}")
        if config.recency_buckets < 1:
            raise ValueError(f"recency_buckets must be >= 1, got {config.recency_buckets}")
        d = config.dim
        m = 2 * d if config.use_operations else d
        if config.repeat:
            self.rep_m = nn.Linear(m, d, bias=False)
            self.rep_s = nn.Linear(d, d)
            self.rep_pos = nn.Embedding(config.recency_buckets, d)
            self.rep_v = nn.Linear(d, 1, bias=False)
            self.gate = nn.Linear(d + m, 1)
            nn.init.normal_(self.rep_pos.weight, 0.0, config.init_std)
        if config.neighbours:
            self.stan = STAN(STANConfig(k=config.nb_k, sample_size=config.nb_sample_size,
                                        lambda_spw=config.nb_lambda_spw, lambda_snh=config.nb_lambda_snh,
                                        lambda_inh=config.nb_lambda_inh), spec)
            # weights of the features (n, log1p(n / 0.01) / log1p(100), 1[n > 0]); stored / NB_SCALE so
            # that Adam moves them NB_SCALE times faster than a unit-scale weight
            self.nb_weight = nn.Parameter(torch.tensor(config.nb_init) / NB_SCALE)
        # items seen in the train split (filled by fit_statistics; all warm until then)
        self.register_buffer("warm", torch.ones(spec.n_items + 1))

    def calibration_grid(self) -> dict[str, tuple]:
        """The inference-time options the trainer picks on validation after training (see the
        module docstring): the weights of the mixture learned on training prefixes lean towards
        the neural term, which has memorised them."""
        if not self.config.calibrate:
            return {}
        grid: dict[str, tuple] = {}
        if self.config.neighbours:
            grid["nb_multiplier"] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
        if self.config.repeat:
            grid["gate_shift"] = (-1.0, 0.0, 0.5, 1.0, 2.0, 3.0)
        return grid

    # ---- statistics ------------------------------------------------------------------------
    def fit_statistics(self, data) -> None:
        super().fit_statistics(data)
        if self.config.neighbours:
            self.stan.fit_statistics(data)
        counts = torch.from_numpy(data.item_train_count).to(self.warm.device)
        self.warm = (counts > 0).to(self.warm.dtype)
        self.warm[0] = 1.0

    # ---- item side ---------------------------------------------------------------------------
    def item_embeddings(self) -> torch.Tensor:
        E = self.item_embedding.weight
        if self.config.cold_items == "attributes":
            keep = self.warm
            if self.training and self.config.id_dropout > 0 and torch.is_grad_enabled():
                keep = keep * (torch.rand_like(keep) >= self.config.id_dropout).to(keep.dtype)
            E = E * keep[:, None]
        if self.config.item_repr == "id":
            return E
        return E + torch.sparse.mm(self._attribute_matrix(), self.attr_embedding.weight)

    def scoring_vectors(self) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self._scoring_vectors()
        E = self.item_embedding.weight
        key = (E._version, E.data_ptr(), self.attr_embedding.weight._version, E.device, self.warm._version,
               self.warm.data_ptr())
        cache = getattr(self, "_vec_cache", None)
        if cache is None or cache[0] != key:
            self._vec_cache = cache = (key, self._scoring_vectors())
        return cache[1]

    def candidate_vectors(self) -> torch.Tensor:
        raise NotImplementedError("mkmsr-rn mixes per-session repeat and neighbourhood terms; use score()")

    # ---- session side ------------------------------------------------------------------------
    def _parts(self, batch: Batch, V: torch.Tensor, own_excluded: bool):
        """-> (explore logits (B, n_items), log g (B,) or None, log(1-g) (B,), p_rep (B, n+1) or None)."""
        M = self.micro_behaviours(batch, V)
        B, L = batch.items.shape
        ar = torch.arange(B, device=M.device)
        last = M[ar, batch.lengths - 1]
        s_g, _ = self.attention(M, last, batch.mask)
        s_raw = self.W3(torch.cat([last, s_g], dim=-1))                          # (B, d)
        s = s_raw
        if self.config.scoring == "cosine":
            s = self.config.score_scale * F.normalize(s_raw, dim=-1)
        e = s @ V[1:].T                                                          # (B, n)
        if self.config.neighbours:
            with torch.no_grad():
                nb = self.stan.logits(batch, exclude_own=own_excluded)
                top = nb.amax(dim=1, keepdim=True)
                nb = torch.where(top > 0, nb / top.clamp(min=1e-30), nb)
            w = self.nb_weight * (NB_SCALE * self.config.nb_multiplier)
            e = (e + w[0] * nb + w[1] * (torch.log1p(nb / 0.01) / math.log1p(100.0))
                 + w[2] * (nb > 0).to(e.dtype))
        if not self.config.repeat:
            return e, None, None, None
        mask = batch.mask
        rec = (batch.lengths[:, None] - 1 - torch.arange(L, device=M.device)[None, :])
        rec = rec.clamp(0, self.config.recency_buckets - 1)
        h = torch.tanh(self.rep_m(M) + self.rep_s(s_raw)[:, None, :] + self.rep_pos(rec))
        a = self.rep_v(h).squeeze(-1).masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(a, dim=1) * mask                                   # (B, L)
        p_rep = torch.zeros(B, self.spec.n_items + 1, dtype=alpha.dtype, device=alpha.device)
        p_rep.scatter_add_(1, batch.items, alpha)
        p_rep[:, 0] = 0.0
        g = self.gate(torch.cat([s_raw, last], dim=-1)).squeeze(-1) + self.config.gate_shift  # logit P(repeat)
        return e, F.logsigmoid(g), F.logsigmoid(-g), p_rep

    def logits(self, batch: Batch) -> torch.Tensor:
        """log p(i) of every item (or the explore logits alone with ``repeat=False``)."""
        V = self.scoring_vectors()
        e, log_g, log_1mg, p_rep = self._parts(batch, V, own_excluded=False)
        if p_rep is None:
            return e
        log_exp = torch.log_softmax(e, dim=1) + log_1mg[:, None]                # (B, n)
        # the repeat term touches only the session's own items: mix there, in (B, n + 1) space
        full = F.pad(log_exp, (1, 0))
        cols = batch.items                                                       # padding -> column 0
        pr = p_rep.gather(1, cols)
        mixed = torch.where(pr > 0, torch.logaddexp(full.gather(1, cols), torch.log(pr.clamp(min=1e-30)) + log_g[:, None]),
                            full.gather(1, cols))
        full = full.scatter(1, cols, mixed)
        return full[:, 1:]

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        """NLL of the target under the mixture, computed at the target only (one logsumexp over
        the catalogue); on training prefixes the neighbourhood leaves out the prefix's own session."""
        V = self.scoring_vectors()
        own = batch.train_sessions is not None
        e, log_g, log_1mg, p_rep = self._parts(batch, V, own_excluded=own)
        t = batch.targets
        if p_rep is None:
            return F.cross_entropy(e, t - 1)
        log_exp_t = e.gather(1, (t - 1)[:, None]).squeeze(1) - torch.logsumexp(e, dim=1) + log_1mg
        pr = p_rep.gather(1, t[:, None]).squeeze(1)
        lp = torch.where(pr > 0, torch.logaddexp(log_exp_t, torch.log(pr.clamp(min=1e-30)) + log_g), log_exp_t)
        return -lp.mean()
