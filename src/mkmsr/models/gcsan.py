"""GC-SAN (Xu, Zhao, Liu, Zhou, Sheng, Cui, Zhuang, Zhou; IJCAI 2019): graph contextualized
self-attention network for session-based recommendation.

* Dynamic graph structure: the session graph of SR-GNN (binary edges,
  incoming and outgoing adjacency normalised by degree) through SR-GNN's gated GNN, ``gnn_steps``
  steps, gives one vector h_t per position (the vector of the position's item node);
* self-attention layers: E = softmax((H W^Q)(H W^K)^T / sqrt(d)) (H W^V),
  F = ReLU(E W1 + b1) W2 + b2 + E, stacked k times (F^(k) = SAN(F^(k-1))), every position
  attending to every real position of the session (padding keys masked), with dropout;
* prediction: S_f = omega F^(k)_n + (1 - omega) h_n, the attention output and
  the GNN vector at the last position, and score(v_i) = S_f^T v_i with the item embedding,
  trained by a softmax cross-entropy over the full catalogue.

Defaults: one GNN step, one self-attention layer with one head, omega = 0.6, dropout 0.2 (the
paper sweeps k and omega; these are RecBole's defaults for GC-SAN). The attention layer
is torch's standard post-LayerNorm transformer layer (residual + LayerNorm around the attention
and around the feed-forward net, as RecBole's GC-SAN); the paper writes only the feed-forward
residual. Embeddings ~ N(0, 0.1) as every model here, the GNN U(-1/sqrt(d), 1/sqrt(d)) as SR-GNN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.batching import Batch
from .base import SessionModel
from .layers import GGNN, full_softmax_ce, session_graph
from .seqtools import at_last


@dataclass
class GCSANConfig:
    dim: int = 100            # d (paper: 120 on Diginetica / 100 elsewhere; 100 for every row here)
    gnn_steps: int = 1
    n_layers: int = 1         # k, stacked self-attention layers
    n_heads: int = 1
    dropout: float = 0.2
    omega: float = 0.6        # weight of the self-attention output in S_f
    init_std: float = 0.1


class GCSAN(SessionModel):
    Config = GCSANConfig
    softmax_loss = True  # sr_loss: the full softmax over session_vectors . candidate_vectors

    def __init__(self, config: GCSANConfig, spec):
        super().__init__(config, spec)
        d = config.dim
        if not 0.0 <= config.omega <= 1.0:
            raise ValueError(f"omega must lie in [0, 1], got {config.omega}")
        self.item_embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.ggnn = GGNN(d, config.gnn_steps, mode="concat")      # SR-GNN's cell
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, config.n_heads, dim_feedforward=d, dropout=config.dropout,
                                       activation="relu", batch_first=True)
            for _ in range(config.n_layers))
        bound = 1.0 / d ** 0.5
        for p in self.ggnn.parameters():
            nn.init.uniform_(p, -bound, bound)
        nn.init.normal_(self.item_embedding.weight, 0.0, config.init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def gnn_states(self, batch: Batch) -> torch.Tensor:
        """(B, L, d) the GNN vector of each position's item node."""
        g = session_graph(batch.items, batch.lengths, edge_weight="binary")
        h = self.ggnn(g.A_in, g.A_out, self.item_embedding(g.nodes))          # (B, N, d)
        return h.gather(1, g.alias[:, :, None].expand(-1, -1, h.shape[-1]))

    def encode(self, batch: Batch) -> torch.Tensor:
        H = self.gnn_states(batch)                                            # (B, L, d)
        Fk = H
        pad = ~batch.mask
        for layer in self.layers:
            Fk = layer(Fk, src_key_padding_mask=pad)                          # (B, L, d)
        w = self.config.omega
        return w * at_last(Fk, batch.lengths) + (1 - w) * at_last(H, batch.lengths)   # S_f (B, d)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        return full_softmax_ce(self.encode(batch), self.item_embedding.weight, batch.targets)

