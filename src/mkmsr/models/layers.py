"""Building blocks shared by the graph models: the session graph, GGNN, soft attention, TransH."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SessionGraph:
    """The weighted directed graph of each session prefix (paper §3.3.2), batched.

    nodes     (B, N) int64 item_idx of each unique item (first-occurrence order), 0-padded
    alias     (B, L) int64 node index of each position (0 on padding positions)
    A_in      (B, N, N) A_in[v, u]  = c(u->v) / #(v as a succeeding item)    (incoming)
    A_out     (B, N, N) A_out[u, v] = c(u->v) / #(u as a preceding item)     (outgoing)
    node_mask (B, N) bool

    c(u->v) counts how often v directly follows u; the outgoing weight is exactly the paper's
    "occurrence frequency of {i_{k-1}, i_k} divided by the frequency that i_{k-1} occurs as a
    preceding item"; the incoming one is by default normalised by how often the target node is
    entered (as in SR-GNN and the authors' code), or, with ``adjacency="paper"``, the same
    weight read backwards (A_in = A_out^T, the paper's one weight per edge).
    """

    nodes: torch.Tensor
    alias: torch.Tensor
    A_in: torch.Tensor
    A_out: torch.Tensor
    node_mask: torch.Tensor


def session_graph(items: torch.Tensor, lengths: torch.Tensor, edge_weight: str = "count",
                  adjacency: str = "srgnn") -> SessionGraph:
    """Build SessionGraph from right-padded ``items`` (B, L) and ``lengths`` (B,), vectorised.

    ``edge_weight``: ``count`` (paper: repeated transitions weigh more) or ``binary`` (each
    distinct edge counts once, as in the original SR-GNN code).
    ``adjacency``: ``srgnn`` (default; SR-GNN's and the authors' code: the incoming matrix is
    normalised by how often the target node is entered, c(u->v) / in(v)) or ``paper`` (§3.3.2:
    each edge has one weight c(u->v) / out(u), used in both matrices, A_in = A_out^T).
    """
    B, L = items.shape
    dev = items.device
    ar = torch.arange(L, device=dev)
    mask = ar[None, :] < lengths[:, None]
    # first position j holding the same item as position i
    eq = (items[:, :, None] == items[:, None, :]) & mask[:, None, :]
    first = eq.to(torch.uint8).argmax(dim=2)
    is_first = (first == ar[None, :]) & mask
    rank = is_first.to(torch.int64).cumsum(dim=1) - 1
    alias = rank.gather(1, first).masked_fill(~mask, 0)
    n_nodes = is_first.sum(dim=1)
    N = max(int(n_nodes.max()), 1)
    nodes = torch.zeros(B, N, dtype=items.dtype, device=dev)
    bi, pi = is_first.nonzero(as_tuple=True)
    nodes[bi, rank[bi, pi]] = items[bi, pi]
    emask = mask[:, 1:]
    flat = (torch.arange(B, device=dev)[:, None] * (N * N) + alias[:, :-1] * N + alias[:, 1:])[emask]
    C = torch.bincount(flat, minlength=B * N * N).view(B, N, N).to(torch.float32)
    if edge_weight == "binary":
        C = (C > 0).to(torch.float32)
    elif edge_weight != "count":
        raise ValueError(f"edge_weight must be 'count' or 'binary', got {edge_weight!r}")
    A_out = C / C.sum(dim=2, keepdim=True).clamp(min=1.0)
    if adjacency == "paper":
        A_in = A_out.transpose(1, 2)
    elif adjacency == "srgnn":
        Ct = C.transpose(1, 2)
        A_in = Ct / Ct.sum(dim=2, keepdim=True).clamp(min=1.0)
    else:
        raise ValueError(f"adjacency must be 'srgnn' or 'paper', got {adjacency!r}")
    node_mask = torch.arange(N, device=dev)[None, :] < n_nodes[:, None]
    return SessionGraph(nodes, alias, A_in, A_out, node_mask)


class GGNN(nn.Module):
    """Gated graph neural network over a SessionGraph, ``steps`` propagation steps.

    mode ``sum`` is the paper's Eq. 1: a = (A_in + A_out) H + b, then the GRU-like gates
    z, r, c with d x d matrices (no further biases). mode ``concat`` is SR-GNN's cell, which
    the MKM-SR authors' code also uses: separate linear maps for incoming and outgoing messages,
    concatenated to a 2d input of a standard GRU cell.
    """

    def __init__(self, dim: int, steps: int = 1, mode: str = "sum"):
        super().__init__()
        if mode not in ("sum", "concat"):
            raise ValueError(f"gnn mode must be 'sum' or 'concat', got {mode!r}")
        self.dim, self.steps, self.mode = dim, steps, mode
        if mode == "sum":
            self.b = nn.Parameter(torch.zeros(dim))
            self.W_a = nn.Linear(dim, 3 * dim, bias=False)  # [W_az; W_ar; W_ac]
            self.W_h = nn.Linear(dim, 2 * dim, bias=False)  # [W_hz; W_hr]
            self.W_hc = nn.Linear(dim, dim, bias=False)
        else:
            self.edge_in = nn.Linear(dim, dim)
            self.edge_out = nn.Linear(dim, dim)
            self.b_iah = nn.Parameter(torch.zeros(dim))
            self.b_oah = nn.Parameter(torch.zeros(dim))
            self.w_ih = nn.Linear(2 * dim, 3 * dim)
            self.w_hh = nn.Linear(dim, 3 * dim)

    def cell(self, A_in: torch.Tensor, A_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "sum":
            a = torch.bmm(A_in + A_out, h) + self.b                       # (B, N, d)
            az, ar, ac = self.W_a(a).chunk(3, dim=-1)
            hz, hr = self.W_h(h).chunk(2, dim=-1)
            z = torch.sigmoid(az + hz)
            r = torch.sigmoid(ar + hr)
            c = torch.tanh(ac + self.W_hc(r * h))
            return (1 - z) * h + z * c
        a = torch.cat([torch.bmm(A_in, self.edge_in(h)) + self.b_iah,
                       torch.bmm(A_out, self.edge_out(h)) + self.b_oah], dim=-1)  # (B, N, 2d)
        i_r, i_i, i_n = self.w_ih(a).chunk(3, dim=-1)
        h_r, h_i, h_n = self.w_hh(h).chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_i + h_i)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n)

    def forward(self, A_in: torch.Tensor, A_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            h = self.cell(A_in, A_out, h)
        return h


class SoftAttention(nn.Module):
    """Eq. 6-7: alpha_t = beta^T sigmoid(W1 m_L + W2 m_t + b_alpha); s_g = sum_t alpha_t m_t.

    Padding positions get alpha = 0. (As in the paper and SR-GNN the weights are not
    softmax-normalised.)
    """

    def __init__(self, dim: int):
        super().__init__()
        self.W1 = nn.Linear(dim, dim, bias=False)
        self.W2 = nn.Linear(dim, dim, bias=True)  # its bias is b_alpha
        self.beta = nn.Linear(dim, 1, bias=False)

    def forward(self, M: torch.Tensor, last: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M (B, L, D), last (B, D), mask (B, L) -> s_g (B, D), alpha (B, L)."""
        alpha = self.beta(torch.sigmoid(self.W1(last)[:, None, :] + self.W2(M))).squeeze(-1)
        alpha = alpha.masked_fill(~mask, 0.0)
        return torch.bmm(alpha[:, None, :], M).squeeze(1), alpha


class TransH(nn.Module):
    """TransH relation parameters: a hyperplane normal w_r and a translation d_r per relation.

    Two separate tables (operations are not relations). ||w_r|| = 1 is enforced by
    normalising in every use, so it holds exactly whatever the optimiser does to the raw table.
    """

    def __init__(self, n_relations: int, dim: int, init_std: float = 0.1):
        super().__init__()
        self.w = nn.Embedding(max(n_relations, 1), dim)
        self.d = nn.Embedding(max(n_relations, 1), dim)
        nn.init.normal_(self.w.weight, 0.0, init_std)
        nn.init.normal_(self.d.weight, 0.0, init_std)

    def normals(self, r: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        return F.normalize(F.embedding(r, self.w.weight, sparse=sparse), dim=-1)

    @staticmethod
    def project(e: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Eq. 11: e_perp = e - (w^T e) w, row by row."""
        return e - (e * w).sum(dim=-1, keepdim=True) * w

    def score(self, h: torch.Tensor, r: torch.Tensor, t: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """h, t (n, d) entity embeddings, r (n,) relation_idx -> (n,) ||h_perp + d_r - t_perp||^2."""
        w = self.normals(r, sparse)
        diff = self.project(h, w) + F.embedding(r, self.d.weight, sparse=sparse) - self.project(t, w)
        return (diff * diff).sum(dim=-1)


class _FullSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy of ``s @ E[1:].T`` against ``targets``, with fewer passes over
    the (B, N) score matrix than ``F.cross_entropy(s @ E[1:].T, targets)``.

    With a catalogue of 139k items the (B, N) matrix is 71 MB per batch of 128 and, next to the
    three GEMMs, the step is bound by its memory traffic. Forward: the logits GEMM over the whole
    table (row 0, padding, is masked, so no slice of the table is copied) and one log-softmax
    pass, whose output is kept. Backward: P = exp(log P) in place; with a = grad / B,
    dL/ds = a (P E - E[t]) and dL/dE = a (P^T s - onehot(t)^T s): the scaling and the one-hot
    terms touch only (B, d) and B rows, so P feeds the two gradient GEMMs as it is (no
    log-softmax output, no zero-filled gradient matrix, no pass to subtract the one-hot). The
    same formulas as PyTorch's: the results agree to float rounding (tests/test_fast_paths.py).
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, E: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = s @ E.T                                                   # (B, N + 1)
        logits[:, 0] = float("-inf")                                       # padding is no candidate
        logp = torch.log_softmax(logits, dim=1)                            # one fused pass per row
        del logits
        ctx.save_for_backward(s, E, targets, logp)
        return -logp.gather(1, targets[:, None]).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s, E, targets, logp = ctx.saved_tensors
        P = logp.exp_()  # in place: the log-probabilities are not needed after this (one backward)
        a = grad / P.shape[0]
        grad_s = grad_E = None
        if ctx.needs_input_grad[0]:
            grad_s = (P @ E - E[targets]).mul_(a)                           # (B, d)
        if ctx.needs_input_grad[1]:
            grad_E = (P.T @ s).mul_(a)                                     # (N + 1, d); row 0 stays 0
            grad_E.index_add_(0, targets, s, alpha=-float(a))
        return grad_s, grad_E, None


def full_softmax_ce(s: torch.Tensor, E: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -log softmax(s E[1:]^T)[b, targets[b] - 1].

    s (B, d) session vectors, E (N + 1, d) the item table with row 0 = padding (never a
    candidate), targets (B,) int64 item_idx in 1..N. Equals
    ``F.cross_entropy(s @ E[1:].T, targets - 1)``.
    """
    return _FullSoftmaxCE.apply(s, E, targets)


def unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique rows of a 2-D integer tensor, inverse (B,) so that ``unique[inverse] == x``)."""
    return torch.unique(x, dim=0, return_inverse=True)


class _CosineItemVectors(torch.autograd.Function):
    """V = normalize(E * keep + A @ W) row-wise, with a hand-written backward: every row of the
    item table passes through it at every training step (mkmsr+, mkmsr-rn), and autograd's
    version of the same three operations makes ~12 passes over the (n_items + 1, d) table plus a
    COO sparse product (11.8 ms per step on the Demo's 12,196 items, 2 cores) where this one
    makes 5 passes and two CSR products (4.6 ms). Same values and gradients (tested)."""

    @staticmethod
    def forward(ctx, E, W, keep, A, AT, eps: float):
        X = A @ W                                                            # (n + 1, d)
        if keep is None:
            X.add_(E)
        else:
            X.addcmul_(E, keep[:, None])                                     # no (n + 1, d) temporary
        n = torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min_(eps)
        V = X.div_(n)
        ctx.save_for_backward(V, n, keep if keep is not None else torch.empty(0))
        ctx.has_keep = keep is not None
        ctx.AT = AT
        return V

    @staticmethod
    def backward(ctx, g):
        V, n, keep = ctx.saved_tensors
        # d normalize(x) = (g - v <g, v>) / |x|
        dX = torch.addcmul(g, V, (g * V).sum(dim=1, keepdim=True), value=-1.0).div_(n)
        dW = ctx.AT @ dX if ctx.needs_input_grad[1] else None
        dE = None
        if ctx.needs_input_grad[0]:
            dE = dX.mul_(keep[:, None]) if ctx.has_keep else dX              # in place: dW is taken
        return dE, dW, None, None, None, None


def cosine_item_vectors(E: torch.Tensor, W: torch.Tensor, A: torch.Tensor, AT: torch.Tensor,
                        keep: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """(n_items + 1, d) ``F.normalize(E * keep[:, None] + A @ W, dim=-1)`` in one fused autograd
    step. ``A`` (n_items + 1, n_attr) and ``AT`` = ``A.T``: sparse CSR matrices (the attribute
    means and their transpose, built once); ``keep`` (n_items + 1,) or None (all ones)."""
    return _CosineItemVectors.apply(E, W, keep, A, AT, eps)
