"""CORE (Hou, Hu, Zhang, Zhao, Wen; SIGIR 2022): a simple and effective framework to unify the
representation space for session-based recommendation; the CORE-trm variant.

The session vector lives in the same space as the candidate items:

* Representation-consistent encoding: with the (dropout-perturbed) embeddings
  x_1..x_n of the session's items, a transformer reads x_t + p_t (learned positions, LayerNorm,
  dropout; causal attention as in the authors' code), a linear map gives one weight per
  position, alpha = softmax_t(w^T F_t) over the real positions, and the session vector is the
  weighted sum of the *item embeddings themselves*: h_s = sum_t alpha_t x_t (no non-linear
  transform of the output, so h_s is in the span of the session's item embeddings);
* Robust distance measuring: score(v) = cos(h_s, x_v) / tau with temperature
  tau, item embeddings dropped out (``item_dropout``) on the candidate side during training,
  and a softmax cross-entropy over the full catalogue.

Defaults are the paper's and the authors' config: 2 layers, 2 heads, feed-forward size
256, dropout 0.5 in the transformer, session-item dropout 0.2, item dropout 0.2, tau = 0.07,
parameters ~ N(0, 0.02), at most the latest 50 items. d = 100 (paper: 64), as every row here.

Not in the paper: ``item_repr="id+attributes"`` (registered as ``core-kg``) composes every item
vector, on the session side and the candidate side alike, as MKM-SR+ does: the item's own
embedding plus the mean embedding of its attribute values (``mkmsr.models.attributes``), so the
many rare items of a sparse log borrow what the items of their brand, shop or category learned.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import Batch
from .attributes import AttributeMean
from .base import SessionModel
from .seqtools import causal_mask, latest


@dataclass
class COREConfig:
    dim: int = 100              # d (paper: 64)
    n_layers: int = 2
    n_heads: int = 2
    ffn_dim: int = 256          # inner size of the transformer's feed-forward net
    hidden_dropout: float = 0.5  # dropout inside the transformer (attention and feed-forward)
    sess_dropout: float = 0.2   # dropout on the session's item embeddings x_t
    item_dropout: float = 0.2   # dropout on the candidate item embeddings (training only)
    temperature: float = 0.07   # tau
    max_len: int = 50           # number of position embeddings; longer prefixes keep the latest
    init_std: float = 0.02      # all weights ~ N(0, init_std) (authors' code)
    item_repr: str = "id"       # id (paper) | id+attributes: + the mean of the item's attribute embeddings


class CORE(AttributeMean, SessionModel):
    Config = COREConfig

    def __init__(self, config: COREConfig, spec):
        super().__init__(config, spec)
        d = config.dim
        if config.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {config.temperature}")
        if d % config.n_heads:
            raise ValueError(f"dim {d} must be divisible by n_heads {config.n_heads}")
        if config.item_repr not in ("id", "id+attributes"):
            raise ValueError(f"item_repr must be 'id' or 'id+attributes', got {config.item_repr!r}")
        self.item_embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        if config.item_repr == "id+attributes":
            self.attr_embedding = nn.Embedding(max(spec.n_entities - spec.n_items - 1, 1), d)
            self._init_attribute_buffers()
        self.sess_drop = nn.Dropout(config.sess_dropout)
        self.item_drop = nn.Dropout(config.item_dropout)
        # the representation-driven weighting network ("RDM" transformer)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.input_norm = nn.LayerNorm(d, eps=1e-12)
        self.input_drop = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, config.n_heads, dim_feedforward=config.ffn_dim,
                                       dropout=config.hidden_dropout, activation="gelu",
                                       layer_norm_eps=1e-12, batch_first=True)
            for _ in range(config.n_layers))
        self.weight_head = nn.Linear(d, 1)
        for name, p in self.named_parameters():
            if "norm" in name:
                continue
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, config.init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def position_weights(self, batch: Batch, X: torch.Tensor) -> torch.Tensor:
        """(B, L) alpha: softmax over the real positions of w^T F_t; 0 on padding.
        ``X`` (B, L, d) the session's item embeddings (after session dropout)."""
        L = X.shape[1]
        pos = torch.arange(L, device=X.device)
        H = self.input_drop(self.input_norm(X + self.position_embedding(pos)[None]))  # (B, L, d)
        mask = causal_mask(L, X.device)
        pad = ~batch.mask
        for layer in self.layers:
            H = layer(H, src_mask=mask, src_key_padding_mask=pad)
        logits = self.weight_head(H).squeeze(-1)                                  # (B, L)
        return torch.softmax(logits.masked_fill(pad, float("-inf")), dim=1)

    def encode(self, batch: Batch) -> torch.Tensor:
        """(B, d) h_s = sum_t alpha_t x_t, unnormalised."""
        batch = latest(batch, self.config.max_len)
        X = self.sess_drop(F.embedding(batch.items, self.item_embeddings(), padding_idx=0))  # (B, L, d)
        alpha = self.position_weights(batch, X)
        return torch.bmm(alpha[:, None, :], X).squeeze(1)

    def fit_statistics(self, data) -> None:
        if self.config.item_repr == "id+attributes":
            self._fit_attributes(data)

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, d) the item vectors: own embedding (+ attribute mean); row 0 is 0.
        Without autograd (evaluation, serving, a frozen explore expert) the attribute mean is
        computed once per parameter and knowledge-graph version and reused."""
        E = self.item_embedding.weight
        if self.config.item_repr == "id":
            return E
        if torch.is_grad_enabled():
            return E + torch.sparse.mm(self._attribute_matrix(), self.attr_embedding.weight)
        key = (E._version, E.data_ptr(), self.attr_embedding.weight._version, self.attr_embedding.weight.data_ptr(),
               self.attr_item.data_ptr(), self.attr_item.numel(), E.device)
        cache = getattr(self, "_emb_cache", None)
        if cache is None or cache[0] != key:
            self._emb_cache = cache = (key, E + torch.sparse.mm(self._attribute_matrix(), self.attr_embedding.weight))
        return cache[1]

    def session_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, d) h_s / (||h_s|| tau): its dot product with ``candidate_vectors`` is cos / tau."""
        return F.normalize(self.encode(batch), dim=-1) / self.config.temperature

    def candidate_vectors(self) -> torch.Tensor:
        """(n_items + 1, d) unit-norm item embeddings (row 0, padding, stays 0)."""
        return F.normalize(self.item_embeddings(), dim=-1)

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        E = F.normalize(self.item_drop(self.item_embeddings()[1:]), dim=-1)      # (n_items, d)
        return F.cross_entropy(self.session_vectors(batch) @ E.T, batch.targets - 1)
