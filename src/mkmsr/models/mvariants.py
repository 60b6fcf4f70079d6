"""MKM-SR's session-modelling ablations (paper §4.1.2), all without the knowledge loss:

* M(GRU)-SR: a micro-behaviour (item, operation) is one token with its own embedding, learned
  directly; one GRU reads the token sequence;
* M(GGNN)-SR: the same tokens, read by one GGNN over the session graph of tokens (§3.3.2 built
  on micro-behaviours instead of items);
* M(GGNNx2)-SR: items through a GGNN (as MKM-SR) and operations through a second GGNN over the
  operation graph, instead of MKM-SR's GRU.

Everything after the micro-behaviour embeddings is MKM-SR's: soft attention (Eq. 6-7),
s = W3 [m_L; s_g] (Eq. 8), and dot-product scores against item embeddings. For M(GRU)/M(GGNN)
the candidate items have their own embedding table (a micro-behaviour token is not an item).
Token id = item_idx * n_ops + op_idx, so token 0 is padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import Batch
from .base import SessionModel
from .layers import GGNN, SoftAttention, session_graph
from .mkmsr import MKMSR, MKMSRConfig


@dataclass
class MicroConfig:
    dim: int = 100
    encoder: str = "gru"        # gru = M(GRU)-SR | ggnn = M(GGNN)-SR
    gnn_steps: int = 1          # H (paper: 1)
    gnn_mode: str = "sum"       # paper Eq. 1
    edge_weight: str = "count"  # paper §3.3.2
    adjacency: str = "srgnn"    # srgnn: A_in normalised by in-degree (SR-GNN) | paper: A_in = A_out^T
    init_std: float = 0.1


class MicroBehaviourSR(SessionModel):
    """M(GRU)-SR / M(GGNN)-SR: micro-behaviour embeddings learned directly."""

    Config = MicroConfig
    softmax_loss = True  # sr_loss: the full softmax over session_vectors . candidate_vectors

    def __init__(self, config: MicroConfig, spec):
        super().__init__(config, spec)
        if config.encoder not in ("gru", "ggnn"):
            raise ValueError(f"encoder must be 'gru' or 'ggnn', got {config.encoder!r}")
        d = config.dim
        self.token_embedding = nn.Embedding((spec.n_items + 1) * spec.n_ops, d, padding_idx=0)
        self.item_embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        if config.encoder == "gru":
            self.gru = nn.GRU(d, d, batch_first=True)
        else:
            self.ggnn = GGNN(d, config.gnn_steps, config.gnn_mode)
        self.attention = SoftAttention(d)
        self.W3 = nn.Linear(2 * d, d, bias=False)
        bound = 1.0 / d ** 0.5
        for name, p in self.named_parameters():
            if name.startswith(("token_embedding.", "item_embedding.")):
                nn.init.normal_(p, 0.0, config.init_std)
            else:
                nn.init.uniform_(p, -bound, bound)
        with torch.no_grad():
            self.token_embedding.weight[0].zero_()
            self.item_embedding.weight[0].zero_()

    def tokens(self, batch: Batch) -> torch.Tensor:
        """(B, L) micro-behaviour token ids (0 on padding)."""
        return torch.where(batch.mask, batch.items * self.spec.n_ops + batch.ops, torch.zeros_like(batch.items))

    def micro_behaviours(self, batch: Batch) -> torch.Tensor:
        tok = self.tokens(batch)
        if self.config.encoder == "gru":
            M, _ = self.gru(self.token_embedding(tok))
            return M
        g = session_graph(tok, batch.lengths, self.config.edge_weight, self.config.adjacency)
        h = self.ggnn(g.A_in, g.A_out, self.token_embedding(g.nodes))
        return h.gather(1, g.alias[:, :, None].expand(-1, -1, h.shape[-1]))

    def encode(self, batch: Batch) -> torch.Tensor:
        M = self.micro_behaviours(batch)
        last = M[torch.arange(M.shape[0], device=M.device), batch.lengths - 1]
        s_g, _ = self.attention(M, last, batch.mask)
        return self.W3(torch.cat([last, s_g], dim=-1))

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight


class MGGNNx2SR(MKMSR):
    """M(GGNNx2)-SR: MKM-SR with the operation GRU replaced by a second GGNN (over operations)."""

    Config = MKMSRConfig

    def __init__(self, config: MKMSRConfig, spec):
        if not config.use_operations:
            raise ValueError("M(GGNNx2)-SR needs use_operations=True")
        super().__init__(config, spec)
        del self.op_gru
        self.op_ggnn = GGNN(config.dim, config.gnn_steps, config.gnn_mode)
        self._init(config.init_std)

    def micro_behaviours(self, batch: Batch, V: torch.Tensor | None = None) -> torch.Tensor:
        g = session_graph(batch.items, batch.lengths, self.config.edge_weight, self.config.adjacency)
        if V is None:
            V = self.item_embeddings()
        h = self.ggnn(g.A_in, g.A_out, F.embedding(g.nodes, V, sparse=self.sparse_rows))
        I = h.gather(1, g.alias[:, :, None].expand(-1, -1, h.shape[-1]))      # (B, L, d)
        go = session_graph(batch.ops, batch.lengths, self.config.edge_weight, self.config.adjacency)
        ho = self.op_ggnn(go.A_in, go.A_out, self.op_embedding(go.nodes))
        O = ho.gather(1, go.alias[:, :, None].expand(-1, -1, ho.shape[-1]))   # (B, L, d)
        return torch.cat([I, O], dim=-1)
