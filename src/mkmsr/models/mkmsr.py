"""MKM-SR (Meng, Yang, Xiao; SIGIR 2020) and its ablations KM-SR and M-SR.

Session encoder (paper §3.3):

* items: the session graph (§3.3.2) through a GGNN (Eq. 1), H steps -> I~ (B, L, d) (Eq. 2);
* operations: a GRU over operation embeddings with h_0 = the first operation's embedding
  (Eq. 3) -> O~ (B, L, d) (Eq. 4);
* micro-behaviours m_t = i_t (+) o_t (Eq. 5), soft attention (Eq. 6-7) and
  s = W3 [m_L; s_g] (Eq. 8).

Scoring. The paper writes y = softmax(MLP(s (+) i_j)). With a linear MLP, w^T[s; i_j] =
w_s^T s + w_i^T i_j and the session term is the same for every candidate j, so it cancels
under the softmax: the "recommendation" would ignore the session. We therefore score with
the dot product s^T i_j over all items, as the authors' code (and SR-GNN) does.

Knowledge (§3.4): items and attribute values share one entity table; TransH (Eq. 11-12) with
its own relation tables. ``kg_loss="squared"`` is the paper's plain sum of squared distances
(no negatives: it can pull embeddings together, which the training log watches through the
mean item-embedding norm); ``kg_loss="margin"`` is TransH's original margin loss with
corrupted tails drawn from the same relation's values.

Variants: KM-SR = ``use_operations=False`` (m_t = i_t); M-SR = ``use_knowledge=False``.
SR-GNN (Wu et al., AAAI 2019) is exactly the item-only, knowledge-free encoder with its own GGNN
cell (``gnn_mode="concat"``), binary edges, a biased final map and uniform initialisation.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import Batch
from ..data.dataset import DatasetSpec
from .attributes import AttributeMean
from .base import SessionModel
from .layers import GGNN, SoftAttention, TransH, cosine_item_vectors, full_softmax_ce, session_graph, unique_rows


@dataclass
class MKMSRConfig:
    dim: int = 100                 # d, the embedding size (paper: 100)
    gnn_steps: int = 1             # H (paper: 1)
    gnn_mode: str = "sum"          # sum = paper Eq. 1 | concat = SR-GNN / authors' code
    edge_weight: str = "count"     # count = paper §3.3.2 | binary = original SR-GNN
    adjacency: str = "srgnn"       # srgnn: A_in = c(u->v)/in(v) (SR-GNN, authors' code) | paper: one
                                   # weight c(u->v)/out(u) per edge in both matrices (§3.3.2)
    use_operations: bool = True    # False gives KM-SR
    use_knowledge: bool = True     # False gives M-SR
    op_h0: str = "first"           # first = paper Eq. 3 (h_0 = o_1) | zeros = authors' code
    kg_loss: str = "squared"       # squared = paper Eq. 12 | margin = TransH margin loss
    kg_margin: float = 1.0         # margin gamma of the margin loss
    repeat_boost: float = 0.0      # added at inference to the score of items already in the session
                                   # (repeat consumption; not in the paper, not used in training)
    repeat_boost_grid: tuple = ()  # if given, training picks repeat_boost from it on validation
    kg_passes: float = 1.0         # passes over all triplets per epoch in alternating training (sets the
                                   # KG batch size unless the training config gives one)
    init_std: float = 0.1          # embeddings ~ N(0, init_std) (paper §4.1.4)
    init: str = "paper"            # paper: embeddings N(0, init_std) | srgnn: all U(-1/sqrt(d), 1/sqrt(d))
    w3_bias: bool = False          # Eq. 8 has no bias; SR-GNN's final linear map has one
    item_repr: str = "id"          # id = paper | id+attributes: item vector = own embedding + mean of
                                   # its attribute-value embeddings (cold-start improvement, not in the paper)
    scoring: str = "dot"           # dot = s^T i_j (authors' code) | cosine = scale * cos(s, i_j), items
                                   # also normalised at the GGNN input (NISER, Gupta et al. 2019)
    score_scale: float = 16.0      # the scale of cosine scoring (NISER's sigma)


class MKMSR(AttributeMean, SessionModel):
    Config = MKMSRConfig
    softmax_loss = True  # sr_loss: the full softmax over s^T i_j (the repeat boost is inference-only)

    def __init__(self, config: MKMSRConfig, spec: DatasetSpec):
        super().__init__(config, spec)
        d = config.dim
        if config.op_h0 not in ("first", "zeros"):
            raise ValueError(f"op_h0 must be 'first' or 'zeros', got {config.op_h0!r}")
        if config.init not in ("paper", "srgnn"):
            raise ValueError(f"init must be 'paper' or 'srgnn', got {config.init!r}")
        if config.item_repr not in ("id", "id+attributes"):
            raise ValueError(f"item_repr must be 'id' or 'id+attributes', got {config.item_repr!r}")
        if config.kg_loss not in ("squared", "margin"):
            raise ValueError(f"kg_loss must be 'squared' or 'margin', got {config.kg_loss!r}")
        # One entity index space (items 1..n_items, then attribute values), stored as two blocks:
        # the SR loss touches only items, so its gradient never has to be padded out to (and
        # added into) a table that also holds the attribute values. ``entity_table()`` joins them.
        self.item_embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.attr_embedding = nn.Embedding(max(spec.n_entities - spec.n_items - 1, 1), d)
        self.ggnn = GGNN(d, config.gnn_steps, config.gnn_mode)
        m = d
        if config.use_operations:
            self.op_embedding = nn.Embedding(spec.n_ops, d, padding_idx=0)
            self.op_gru = nn.GRU(d, d, batch_first=True)
            m = 2 * d
        self.attention = SoftAttention(m)
        self.W3 = nn.Linear(2 * m, d, bias=config.w3_bias)
        if config.use_knowledge:
            self.transh = TransH(spec.n_relations, d, config.init_std)
        if config.scoring not in ("dot", "cosine"):
            raise ValueError(f"scoring must be 'dot' or 'cosine', got {config.scoring!r}")
        if config.item_repr == "id+attributes":
            self._init_attribute_buffers()
        self._init(config.init_std)

    def fit_statistics(self, data) -> None:
        if self.config.item_repr == "id+attributes":
            self._fit_attributes(data)

    def _init(self, std: float) -> None:
        # Embeddings ~ N(0, 0.1) as the paper says; other weights U(-1/sqrt(d), 1/sqrt(d)) as SR-GNN.
        bound = 1.0 / self.config.dim ** 0.5
        for name, p in self.named_parameters():
            if self.config.init == "paper" and name.startswith(
                    ("item_embedding.", "attr_embedding.", "op_embedding.", "transh.")):
                nn.init.normal_(p, 0.0, std)
            else:
                nn.init.uniform_(p, -bound, bound)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            if self.config.use_operations:
                self.op_embedding.weight[0].zero_()

    @property
    def uses_knowledge(self) -> bool:
        return self.config.use_knowledge and self.spec.n_relations > 0

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, d) item vectors: the item's own embedding, plus (item_repr=id+attributes)
        the mean embedding of its attribute values."""
        E = self.item_embedding.weight
        if self.config.item_repr == "id":
            return E
        # one sparse (n_items + 1, n_attributes) x dense product: ~5x faster on CPU than a gather
        # plus index_add, whose backward is a slow accumulate
        return E + torch.sparse.mm(self._attribute_matrix(), self.attr_embedding.weight)

    def supports_sparse_rows(self) -> bool:
        # the item vectors are the table itself (no attribute mean, no normalisation) and the
        # GGNN input, the sampled candidates and the TransH heads are row lookups into it
        return self.config.item_repr == "id" and self.config.scoring == "dot" and self.softmax_loss

    def _attribute_csr(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean-of-attributes matrix and its transpose as sparse CSR (cached like
        :meth:`_attribute_matrix`): their products are ~3x faster on CPU than the COO ones."""
        S = self._attribute_matrix()
        cache = getattr(self, "_attr_csr_cache", None)
        if cache is None or cache[0] is not S:
            with warnings.catch_warnings():       # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                self._attr_csr_cache = cache = (S, S.to_sparse_csr(), S.t().coalesce().to_sparse_csr())
        return cache[1], cache[2]

    def _item_keep(self) -> torch.Tensor | None:
        """(n_items + 1,) weights of the items' own embeddings in their vectors (None: all 1)."""
        return None

    def scoring_vectors(self) -> torch.Tensor:
        """(n_items + 1, d) the item vectors used as GGNN input and for scoring. Without autograd
        (evaluation, serving) they are computed once per parameter version and reused."""
        if torch.is_grad_enabled():
            return self._scoring_vectors()
        E = self.item_embedding.weight
        key = (E._version, E.data_ptr(), self.attr_embedding.weight._version, E.device)
        cache = getattr(self, "_vec_cache", None)
        if cache is None or cache[0] != key:
            self._vec_cache = cache = (key, self._scoring_vectors())
        return cache[1]

    def _scoring_vectors(self) -> torch.Tensor:
        if self.config.scoring == "cosine" and self.config.item_repr == "id+attributes":
            # normalize(E * keep + mean of attributes), fused (= the two lines below)
            A, AT = self._attribute_csr()
            return cosine_item_vectors(self.item_embedding.weight, self.attr_embedding.weight, A, AT,
                                       self._item_keep())
        V = self.item_embeddings()
        return F.normalize(V, dim=-1) if self.config.scoring == "cosine" else V

    def candidate_vectors(self) -> torch.Tensor:
        if self.config.repeat_boost:
            # scores add a per-session bonus: a cached item matrix alone cannot reproduce them
            raise NotImplementedError("scores include a per-session repeat boost; use score()")
        return self.scoring_vectors()

    def session_vectors(self, batch: Batch, V: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) session vectors ready for the dot product with ``candidate_vectors()``."""
        if V is None:
            V = self.scoring_vectors()
        s = self.encode(batch, V)
        if self.config.scoring == "cosine":
            s = self.config.score_scale * F.normalize(s, dim=-1)
        return s

    def _scored(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(session vectors (B, d) ready for a dot product, item vectors (n_items + 1, d))."""
        V = self.scoring_vectors()
        return self.session_vectors(batch, V), V

    def logits(self, batch: Batch) -> torch.Tensor:
        s, V = self._scored(batch)
        lg = s @ V[1:].T
        if self.config.repeat_boost:
            # presence (B, n_items + 1) of each item in its session; padding maps to column 0
            present = torch.zeros(lg.shape[0], lg.shape[1] + 1, dtype=lg.dtype, device=lg.device)
            present.scatter_reduce_(1, batch.items, batch.mask.to(lg.dtype), reduce="amax")
            lg = lg + self.config.repeat_boost * present[:, 1:]
        return lg

    def micro_behaviours(self, batch: Batch, V: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, 2d) micro-behaviour embeddings M~ (Eq. 5), or (B, L, d) item ones for KM-SR.
        ``V``: the item vectors (default ``item_embeddings()``)."""
        g = session_graph(batch.items, batch.lengths, self.config.edge_weight, self.config.adjacency)
        if V is None:
            V = self.item_embeddings()
        h = self.ggnn(g.A_in, g.A_out, F.embedding(g.nodes, V, sparse=self.sparse_rows))   # (B, N, d)
        I = h.gather(1, g.alias[:, :, None].expand(-1, -1, h.shape[-1]))  # (B, L, d)
        if not self.config.use_operations:
            return I
        # The GRU sees only the operation sequence, over a handful of operation types, so many
        # prefixes of a batch share it: run the GRU once per distinct sequence, then gather.
        ops, inverse = unique_rows(batch.ops)                             # (U, L), (B,)
        o0 = self.op_embedding(ops)                                       # (U, L, d)
        h0 = o0[:, 0] if self.config.op_h0 == "first" else torch.zeros_like(o0[:, 0])
        O, _ = self.op_gru(o0, h0[None].contiguous())                     # (U, L, d)
        return torch.cat([I, O[inverse]], dim=-1)

    def encode(self, batch: Batch, V: torch.Tensor | None = None) -> torch.Tensor:
        M = self.micro_behaviours(batch, V)
        B = M.shape[0]
        last = M[torch.arange(B, device=M.device), batch.lengths - 1]     # m_L (B, m)
        s_g, _ = self.attention(M, last, batch.mask)
        return self.W3(torch.cat([last, s_g], dim=-1))                    # (B, d)

    def softmax_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.softmax_loss:  # a subclass with a loss of its own
            return super().softmax_inputs(batch)
        return self._scored(batch)

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        """Softmax cross-entropy over the full catalogue (as the base class), fused: fewer passes
        over the (B, n_items) score matrix (see mkmsr.models.layers.full_softmax_ce)."""
        s, V = self._scored(batch)
        return full_softmax_ce(s, V, batch.targets)  # the repeat boost is an inference-time term

    def triplet_scores(self, triplets: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """(n, 3) int64 (head, relation, tail) -> (n,) TransH distances f(h, r, t).

        ``sparse=True`` makes the gradients of the embedding tables sparse (only the rows the
        triplets touch), for a row-wise optimiser step.
        """
        h, r, t = triplets.unbind(dim=1)
        # heads are items and tails attribute values (the artifact's layout, see mkmsr.prepare)
        he = F.embedding(h, self.item_embedding.weight, sparse=sparse)
        te = F.embedding(t - (self.spec.n_items + 1), self.attr_embedding.weight, sparse=sparse)
        return self.transh.score(he, r, te, sparse)

    def kg_loss(self, triplets: torch.Tensor, weights: torch.Tensor | None = None,
                corrupt_tails: torch.Tensor | None = None, sparse: bool = False) -> torch.Tensor:
        """Eq. 12 summed over ``triplets`` (optionally weighted per triplet).

        With ``kg_loss="margin"`` ``corrupt_tails`` (n,) gives a wrong tail per triplet and the
        loss is sum max(0, f(pos) + gamma - f(neg)).
        """
        f = self.triplet_scores(triplets, sparse)
        if self.config.kg_loss == "margin":
            if corrupt_tails is None:
                raise ValueError("the margin loss needs corrupt_tails")
            neg = triplets.clone()
            neg[:, 2] = corrupt_tails
            f = torch.relu(f + self.config.kg_margin - self.triplet_scores(neg, sparse))
        if weights is not None:
            f = f * weights
        return f.sum()
