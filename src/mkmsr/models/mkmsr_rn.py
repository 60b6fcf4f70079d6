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
  With cold items (below) a third component joins the mixture: softmax(c) over the cold items,
  c(i) = scale cos(s, attribute vector of i), so the gate (a softmax over the components) also
  predicts whether the next item is one the training log never showed.
* **Neighbourhood evidence** (``neighbours=True``, registered as ``mkmsr-rn-nb``; off by default:
  once the CORE-KG expert joined the explore logits, validation preferred the model without it on
  two datasets of three and was level on the third) in the explore logits: e(i) = scale cos(s, v_i) + w . f(n(i)), with
  n the STAN scores (Garg et al. 2019; ``mkmsr.models.stan``) of the session against the train
  split divided by the row's maximum, features f(n) = (n, log1p(n / 0.01) / log1p(100), 1[n > 0])
  and w learned. STAN is fitted on the train split only; on a training prefix its own train
  session is left out of the neighbourhood (it holds the target). The STAN options are ``nb_*``
  (the benchmark passes STAN's validation-tuned ones).
* **Cold items through knowledge**: an item that never occurs in the train split has an
  untrained id embedding; its vector is its attribute mean alone (brand, shop, category, launch
  month...). It has no neighbourhood evidence, so among
  the warm items it rarely ranks; ``cold_items="component"`` ranks the cold items in a third
  mixture component of their own, trained by zeroing the id part of a random ``id_dropout``
  share of the items in each batch (for the GGNN input and the candidates alike: they are that
  batch's cold items, so the attribute embeddings learn to stand in for an item and the gate
  learns when a new item comes next). On the JDATA Demo(N) neither ranks first-time cold targets
  above chance (docs/results-lead.md), and the component's gate, trained with a cold share that
  differs from deployment, cost accuracy on the warm targets. What does rank them (default,
  ``cold_items="match"``): a **knowledge-match component**, the cold items that share attribute
  values with the session's items (recency-weighted counts, optionally idf-weighted), mixed in
  with a gate ``sigmoid(match_alpha + match_beta * max match)``; training prefixes never have
  cold targets, so its four options are chosen on validation with the calibration below
  (``match_alpha = -20``: off, which the calibration picks where validation has no cold
  targets: the result is then exactly ``cold_items="attributes"``, registered as
  ``mkmsr-rn-no-match``).

* **The repeat hurdle** (``repeat_hurdle``, inference only, calibrated): the mixture's mass on the
  session's items does not tell repeat from first-time targets (``benchmarks/rank_split.py``: repeat
  AUC 0.52 on the Demo and Taobao, as for every other row; its own gate 0.57 on the Demo), while a
  logistic regression on a few session features (:func:`repeat_features`: length, distinct items,
  repeated steps, operations) does better (test AUC 0.65 Demo, 0.61 Taobao). So the final
  distribution p is split into its part on the session's items and the rest, each renormalised and
  weighted

      q = sigmoid(T z + b),  z = the regression's logit (fitted on the train split in fit_statistics)

  and 1 - q; the order within each part stays the model's. (T, b) are calibrated (b = -20: off, the
  model before it, registered as ``mkmsr-rn-no-hurdle``). The calibration picks a large b on the
  JD data: the session's items go above the new items unless the session looks unlike a repeat,
  which is S-POP's placement with the mixture's (better) order among them.

Inference-time calibration (``calibration_grid``): the mixture weights learned on training
prefixes lean towards the neural term, which has memorised them, and the share of cold targets
differs between training (``id_dropout``) and deployment; a multiplier of the neighbourhood
weights and shifts of the gate logits are therefore chosen on validation after training (held-out
stacking; the test split is never looked at). So are a weight of the neural term in the explore
logits (``explore_neural``; 0 leaves the explore ranking to the neighbourhood evidence) and a recency tilt of the repeat attention
(``repeat_recency``): trained on prefixes, the attention orders a session's items much as
count-then-recency does (Demo(N) seed 0, repeat targets ranked among the session's items: MRR
69.60 vs 69.41 for count-then-recency), while the JD test periods reward pure recency (S-POP's
validation-chosen rule: 71.28). And a weight of the explore evidence in the repeat attention
(``repeat_explore``): the attention of a session item gets + omega times its explore logit, so
the repeat mass goes to the session items the explore ranking (neighbourhood, expert) also
favours and the rest fall below the best new items; on the Demo the session's items otherwise
sit above nearly every first-time target (``benchmarks/rank_split.py``: 3.95 of them on average
against CORE's 2.98).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import Batch, make_batch
from ..data.dataset import DatasetSpec
from .mkmsr import MKMSR, MKMSRConfig
from .stan import STAN, STANConfig

#: repeat_features: length, distinct items, repeated share, last item repeated; then 2 x n_ops
REPEAT_FEATURES_BASE = 4
NB_SCALE = 8.0
#: entries further than this below their row's maximum are lifted to it inside a logsumexp: their
#: share of the sum is below e^-80 (~1e-35), but exp() of them gives float32 subnormals, which
#: this CPU computes ~50x slower (the neighbourhood features spread a row over ~100 nats)
LSE_FLOOR = 80.0
#: the most bytes :meth:`MKMSRRN.calibration_memo` keeps (beyond it the parts are computed afresh)
MEMO_BYTES = 2 << 30
#: the inference-time options that act only in the last two stages of a forward pass (the
#: knowledge prior, then the repeat hurdle): the calibration memo reuses the stages before them
PRIOR_OPTIONS = ("prior_weight", "prior_idf", "prior_recency")
HURDLE_OPTIONS = ("hurdle_shift", "hurdle_temperature")


def repeat_features(batch: Batch, n_ops: int) -> torch.Tensor:
    """(B, 4 + 2 n_ops) float32 features of each prefix for the repeat hurdle: log length, log
    distinct items, share of repeated steps, whether the last item occurred before, the share of
    each operation, the last operation (one-hot)."""
    B = batch.items.shape[0]
    ar = torch.arange(B, device=batch.items.device)
    m = batch.mask
    x = batch.items.masked_fill(~m, 0).sort(dim=1).values
    distinct = ((x != 0) & F.pad(x[:, 1:] != x[:, :-1], (1, 0), value=True)).sum(1).float()
    last = batch.items[ar, batch.lengths - 1]
    last_count = ((batch.items == last[:, None]) & m).sum(1)
    Lf = batch.lengths.float()
    op_share = torch.zeros(B, n_ops, device=m.device).scatter_add_(1, batch.ops, m.float()) / Lf[:, None]
    last_op = F.one_hot(batch.ops[ar, batch.lengths - 1], n_ops).float()
    return torch.cat([torch.stack([Lf.log(), distinct.log(), (Lf - distinct) / Lf, (last_count > 1).float()], 1),
                      op_share, last_op], 1)


def knowledge_prior_matrices(attr_item: torch.Tensor, attr_value: torch.Tensor, n_items: int, n_attr: int,
                             idf: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sparse CSR matrices of :func:`knowledge_prior_scores`: (n_attr, n_items + 1) value x
    item incidence, and (n_items + 1, n_attr) item x value with each value weighted
    v(a) = idf(a)^idf rescaled to mean 1 over the triplets, idf(a) = log((n + 1) / items with a)."""
    n = n_items
    dev = attr_item.device
    idx = torch.stack([attr_item, attr_value.to(dev)])
    At = torch.sparse_coo_tensor(idx.flip(0), torch.ones(idx.shape[1], device=dev), (n_attr, n + 1),
                                 check_invariants=False).coalesce().to_sparse_csr()
    support = torch.bincount(idx[1], minlength=n_attr).to(torch.float32)
    v = torch.log((n + 1) / support.clamp(min=1.0)).clamp(min=0.0) ** idf
    v = v / v[idx[1]].mean().clamp(min=1e-12)
    Av = torch.sparse_coo_tensor(idx, v[idx[1]], (n + 1, n_attr), check_invariants=False).coalesce().to_sparse_csr()
    return At, Av


@torch.no_grad()
def knowledge_prior_scores(batch: Batch, attr_item: torch.Tensor, attr_value: torch.Tensor, n_items: int,
                           n_attr: int, idf: float = 0.0, recency: float = 2.0,
                           matrices: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(B, n_items) k(s, i) = sum over the attribute values a of item i (brand, shop, category...)
    of v(a) * sum_t w_t 1[x_t has a] / sum_t w_t: the recency-weighted share of the session's
    positions whose item has a, w_t = exp(-(L - 1 - t) / recency), each value weighted
    v(a) = idf(a)^idf rescaled to mean 1 over the triplets, idf(a) = log((n + 1) / items with a).
    ``attr_item`` / ``attr_value`` (T,): the knowledge triplets' item and value indices;
    ``matrices``: :func:`knowledge_prior_matrices` of them, when already built. From the knowledge
    graph alone: a cold item scores as a warm one."""
    n = n_items
    B, L = batch.items.shape
    dev = batch.items.device
    At, Av = matrices if matrices is not None else knowledge_prior_matrices(
        attr_item.to(dev), attr_value.to(dev), n, n_attr, idf)
    rec = (batch.lengths[:, None] - 1 - torch.arange(L, device=dev)[None, :]).to(torch.float32)
    w = torch.where(batch.mask, torch.exp(-rec / recency), torch.zeros_like(rec))
    w = w / w.sum(dim=1, keepdim=True).clamp(min=1e-12)
    W = torch.zeros(B, n + 1, device=dev).index_put_((torch.arange(B, device=dev)[:, None].expand(B, L), batch.items),
                                                     w, accumulate=True)
    W[:, 0] = 0.0
    profile = At @ W.T                                                          # (n_attr, B)
    return (Av @ profile).T[:, 1:]                                              # (B, n)

def logsumexp(x: torch.Tensor) -> torch.Tensor:
    """(B, 1) log sum exp over dim 1, within e^-80 relative of the exact one and free of
    subnormals (``LSE_FLOOR``); a row of -inf gives -inf."""
    top = x.amax(dim=1, keepdim=True)
    return torch.logsumexp(torch.maximum(x, top - LSE_FLOOR), dim=1, keepdim=True)


class _ExploreLSE(torch.autograd.Function):
    """Training-time explore term of the mixture, fused: for e = s V^T (column 0, padding, and the
    ``masked`` columns at -inf) plus the neighbourhood features f at (rows, cols), returns
    (``logsumexp(e)`` per row, as :func:`logsumexp` computes it, and e at each row's target
    column). The generic path builds e, then masks, floors and exponentiates it in new (B, N)
    tensors, and autograd keeps and walks each of them back; here e is built in one buffer, turned
    into exp(e - max) in place, and that one buffer gives every gradient: dL/de = P g_lse +
    onehot(target) g_t with P the softmax, then dL/ds = dL/de V, dL/dV = dL/de^T s, dL/df =
    dL/de at (rows, cols). Same value as the generic path; the gradient differs only where an
    entry lies more than LSE_FLOOR below its row's maximum (e^-80 relative: nothing in float32).
    Checked against the generic path in tests/test_mkmsr_rn.py."""

    @staticmethod
    def forward(ctx, s, V, f, rows, cols, masked, targets):
        # s (B, d), V (N + 1, d), f (nnz,), rows / cols (nnz,) int64 (cols in 0..N, 0 = padding),
        # masked (m,) int64 columns at -inf (padding included), targets (B,) int64 columns
        e = s @ V.T                                                        # (B, N + 1)
        if f.numel():
            e.index_put_((rows, cols), f, accumulate=True)
        e.index_fill_(1, masked, float("-inf"))
        t = e.gather(1, targets[:, None]).squeeze(1)                       # -inf where the target is masked
        top = e.amax(dim=1, keepdim=True)
        e.sub_(top).clamp_(min=-LSE_FLOOR).exp_()                          # exp(e - top), free of subnormals
        e.index_fill_(1, masked, 0.0)                                      # masked entries hold no mass
        tot = e.sum(dim=1, keepdim=True)
        lse = (top + tot.log()).squeeze(1)
        ctx.save_for_backward(s, V, rows, cols, targets, e, tot)
        return lse, t

    @staticmethod
    def backward(ctx, g_lse, g_t):
        s, V, rows, cols, targets, P, tot = ctx.saved_tensors
        P.mul_(g_lse[:, None] / tot)                                       # softmax x dL/dlse, in place
        if g_t is not None:
            P.scatter_add_(1, targets[:, None], torch.where(torch.isfinite(g_t), g_t, 0.0)[:, None])
        grad_s = P @ V if ctx.needs_input_grad[0] else None
        grad_V = P.T @ s if ctx.needs_input_grad[1] else None
        grad_f = P[rows, cols] if ctx.needs_input_grad[2] else None
        return grad_s, grad_V, grad_f, None, None, None, None


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
    explore_core: str = ""         # "add": + a CORE-trm encoder's cos / tau (Hou et al. SIGIR 2022;
                                   # mkmsr.models.core) in the explore logits, trained jointly (0 on cold
                                   # items: untrained rows) | "only": it replaces the MKM-SR cosine there
                                   # (the micro-behaviour encoder still drives the repeat component and
                                   # the gate) | "": off. On the Demo, seed 0: "add" 12.74 validation
                                   # MRR@20 before calibration (epoch 1) vs 12.81 without; "only"
                                   # 12.87, after calibration 13.149 vs 13.150 (test 41.20 / 18.23 vs
                                   # 40.94 / 18.27): the calibration weights the neural term down
                                   # (explore_neural 0.25) and early stopping keeps epoch 1, before
                                   # CORE has learned (CORE alone peaks at epoch 10). Not the default
    explore_new_only: bool = False  # RepeatNet's explore mode: the explore component ranges over the
                                   # items not in the session (the repeat component alone scores those).
                                   # On the Demo (seed 0) it lost 1.9 points of validation MRR@20
                                   # before calibration (10.92 vs 12.81): sharing the session items
                                   # between the two components is better there
    neighbours: bool = False       # STAN scores in the explore logits (registered as ``mkmsr-rn-nb``).
                                   # Off by default since stop 23: with the CORE-KG expert, validation
                                   # MRR@20 (5 seeds) prefers the model without them on Taobao (29.17 vs
                                   # 28.66) and Demo(N) (13.57 vs 13.22) and is level on the Demo (13.86
                                   # vs 13.90); so did the test periods (docs/results-lead-no-nb.md,
                                   # where this configuration is the row ``mkmsr-rn-no-nb``)
    nb_k: int = 100
    nb_sample_size: int = 5000
    nb_lambda_spw: float = 1.02
    nb_lambda_snh: float = 5.0
    nb_lambda_inh: float = 2.05
    nb_init: tuple = (48.0, 48.0, 4.0)  # initial weights of the neighbourhood features (learned)
    nb_cache: bool = field(default=True, metadata={"execution_only": True})
                                   # score the neighbourhood of every train / valid / test prefix once, in
                                   # fit_statistics, instead of at every epoch (same values; serving computes live)
    # inference-time calibration, chosen on validation after training (``calibration_grid``)
    nb_multiplier: float = 1.0     # x the learned neighbourhood weights
    gate_shift: float = 0.0        # + the gate logit of the repeat component
    cold_shift: float = 0.0        # + the gate logit of the cold-item component
    explore_neural: float = field(default=1.0, metadata={"inference_only": True})
                                   # at inference, x the neural (cosine) term of the explore logits
                                   # (0: the explore component ranks by the neighbourhood evidence alone)
    repeat_recency: float = field(default=0.0, metadata={"inference_only": True})
                                   # kappa: at inference the repeat attention logit of the position
                                   # k steps from the end gets - kappa * k (0: as trained). Large kappa
                                   # orders the session's items by their last occurrence, the rule
                                   # S-POP tunes to on the JD data
    repeat_explore: float = field(default=0.0, metadata={"inference_only": True})
                                   # omega: at inference the repeat attention logit of a session item
                                   # gets + omega * its explore logit (cosine, neighbourhood evidence and
                                   # expert, as ranked by the explore component; minus the row's best), so
                                   # the evidence that ranks new items also orders the repeats, and the
                                   # repeat mass concentrates on the items both favour: the others drop
                                   # below the best new items instead of all sitting above them (0: off)
    repeat_hurdle: bool = field(default=True, metadata={"inference_only": True})
                                   # the repeat hurdle (below) joins the calibration grid (False: never
                                   # used; the model of stop 23, registered as ``mkmsr-rn-no-hurdle``)
    hurdle_shift: float = field(default=-20.0, metadata={"inference_only": True})
                                   # b of the repeat hurdle, q = sigmoid(T z + b) (<= -20: off)
    hurdle_temperature: float = field(default=1.0, metadata={"inference_only": True})
                                   # T of the repeat hurdle
    knowledge_prior: bool = field(default=True, metadata={"inference_only": True})
                                   # the knowledge prior (below) joins the calibration grid (False: never
                                   # used; the model of stop 24, registered as ``mkmsr-rn-no-prior``)
    prior_weight: float = field(default=0.0, metadata={"inference_only": True})
                                   # w of the knowledge prior: at inference every item outside the
                                   # session gets + w * k(s, i) (``knowledge_prior_scores``: the
                                   # recency-weighted, idf-weighted share of the session's attribute values
                                   # it has: same shop, brand, category...), the mass outside the session
                                   # kept (0: off). The explore logits (cosine, CORE-KG) see attributes only
                                   # through learned vectors; on the Demo this explicit prior, chosen on
                                   # validation, lifted held-out Hit@20 by 2.4-3.9 points (seeds 0-2)
    prior_idf: float = field(default=0.0, metadata={"inference_only": True})
                                   # gamma: an attribute value a counts idf(a)^gamma (idf = log((n + 1) /
                                   # items having a)), rescaled to mean 1 over the knowledge triplets, so a
                                   # small shop says more than a large category (0: every value counts 1)
    prior_recency: float = field(default=2.0, metadata={"inference_only": True})
                                   # session position weights exp(-(L - 1 - t) / prior_recency)
    calibrate: bool = field(default=True, metadata={"inference_only": True})
    calibration_starts: int = field(default=4, metadata={"inference_only": True})
                                   # starting points of the calibration's coordinate ascent: the
                                   # configured values, then random grid points (Trainer._calibrate)
    calibration_metric: str = field(default="", metadata={"inference_only": True})
                                   # the validation figure the calibration maximises: "" = the
                                   # trainer's select_metric; "a+b" = the sum of two (e.g. hit@20+mrr@20)
    cold_items: str = "match"      # match (default): as "attributes", plus the knowledge-match component
                                   # below (inference only: training is that of "attributes") |
                                   # attributes: never-trained items are scored by their attribute
                                   # vector alone (id part zeroed), among the warm items | component: the
                                   # same vectors, ranked in a third mixture component of their own | id:
                                   # as warm items (their untrained id embedding included)
    # cold_items="match": the knowledge-match component (inference only; calibrated on validation)
    match_alpha: float = field(default=-20.0, metadata={"inference_only": True})
                                   # gate logit of the component: sigmoid(alpha + beta * max match)
    match_beta: float = field(default=1.0, metadata={"inference_only": True})
    match_tau: float = field(default=2.0, metadata={"inference_only": True})
                                   # temperature of the softmax over the matching cold items
    match_idf: float = field(default=0.0, metadata={"inference_only": True})
                                   # attribute value weight idf^match_idf (0: every shared attribute counts 1)
    match_recency: float = field(default=2.0, metadata={"inference_only": True})
                                   # session position weights exp(-(L - t) / match_recency)
    match_share: str = field(default="explore", metadata={"inference_only": True})
                                   # explore: the component takes its share g of the explore
                                   # component's mass only (P(repeat) untouched) | all: of the whole
                                   # mixture (the first version: it pushed repeat targets down)
    id_dropout: float = 0.0        # training: share of items whose id part is zeroed per batch (with
                                   # "component" they are that batch's cold items)
    # the explore expert: a separately trained session model (a registered name; "" = none) whose
    # scores join the explore logits at inference, e(i) += expert_weight * expert(i) on warm items,
    # the weight chosen on validation with the calibration (0 until then, so the mixture trains and
    # its epoch is selected exactly as without one). The Trainer trains the expert first, with the
    # same training options and its own validation early stopping (``Trainer._attach_expert``),
    # and freezes it; it is saved inside this model's checkpoint. CORE-trm (Hou et al. SIGIR 2022)
    # first: on the JDATA Demo and Taobao test periods CORE's first-time ranking was the strongest of
    # every row, and held-out stacking of it with the mixture (seed 0, weight and the other axes
    # chosen on validation) gave Taobao 47.27 / 25.76 Hit@20 / MRR@20 against CORE alone 46.14 /
    # 23.99 and the mixture alone 43.86 / 25.41 (registered as ``mkmsr-rn-core-expert``). Default
    # "core-kg": CORE with this model's knowledge-composed item vectors (own embedding + mean
    # attribute embedding), which on the sparse Demo lifted CORE itself (seed 0: validation MRR@20
    # 12.45 -> 13.03) and the stacked model with it (validation 13.41 -> 13.93).
    # ``mkmsr-rn-no-expert`` is the model without one
    explore_expert: str = field(default="core-kg", metadata={"inference_only": True})
    expert_weight: float = field(default=0.0, metadata={"inference_only": True})
    # a second explore expert ("" = none), trained and frozen as the first (in ``RUN/expert2``), its
    # weight chosen with the calibration too: e(i) += expert2_weight * expert2(i) on warm items.
    # Default "core" since stop 28: plain CORE beside CORE-KG, its weight searched last
    # (``calibration_nested``), so the calibration keeps it only where validation gains. On the Taobao
    # head's three test blocks CORE-KG is weak where training is scarcest (Taobao-2: 51.62 +- 2.44
    # Hit@20 against CORE's 56.05), and the model followed it; with both experts it led every row
    # there (docs/results.md). ``mkmsr-rn-1x`` is the model without it, ``mkmsr-rn-2x-sasrec`` SASRec
    explore_expert2: str = field(default="core", metadata={"inference_only": True})
    expert2_weight: float = field(default=0.0, metadata={"inference_only": True})
    calibration_nested: bool = field(default=True, metadata={"inference_only": True})
                                   # the second expert's weight joins the calibration only after the
                                   # search without it (held at 0: the same grid and starts as the
                                   # model without a second expert), in one more ascent from that
                                   # search's best point (``mkmsr.training.train.calibration_paths``):
                                   # validation can only gain from the second expert. False: its weight
                                   # is one more axis from the start (stop 27's search; a larger grid
                                   # changes the random starts, and on Demo(N) the search then ended
                                   # below the one-expert model's on validation: 15.64 vs 15.74)

    calibration_flat_too: bool = field(default=False, metadata={"inference_only": True})
                                   # with a second expert, also run the flat search (its weight one axis
                                   # from the start, its own starts) and keep the better validation end of
                                   # the two: validation at least both. Stop 28 saw each search find more
                                   # on other data (flat on the Taobao blocks, nested on the JD data); this
                                   # option came after reading those test figures, so it is not measured
                                   # yet (``mkmsr-rn-both-searches``): a fresh test block should decide it

    def calibration_nested_axes(self) -> tuple[str, ...]:
        """The calibration axes searched last (``mkmsr.training.train.calibration_paths``)."""
        return ("expert2_weight",) if self.calibration_nested and self.explore_expert2 else ()


class MKMSRRN(MKMSR):
    Config = MKMSRRNConfig
    softmax_loss = False  # a mixture's likelihood (repeat / explore / cold), not one softmax over dot products
    #: runs saved before the explore expert existed had none
    legacy_defaults = {"explore_expert": "", "neighbours": True, "repeat_hurdle": False, "knowledge_prior": False,
                       "explore_expert2": ""}

    def __init__(self, config: MKMSRRNConfig, spec: DatasetSpec):
        super().__init__(config, spec)
        if config.repeat_boost or config.repeat_boost_grid:
            raise ValueError("mkmsr-rn learns its repeats: repeat_boost / repeat_boost_grid do not apply")
        if config.cold_items not in ("attributes", "component", "match", "id"):
            raise ValueError(f"cold_items must be 'attributes', 'component', 'match' or 'id', got {config.cold_items!r}")
        if config.cold_items != "id" and config.item_repr != "id+attributes":
            raise ValueError("cold_items='attributes' needs item_repr='id+attributes' (the attribute part)")
        if config.match_share not in ("explore", "all"):
            raise ValueError(f"match_share must be 'explore' or 'all', got {config.match_share!r}")
        if not 0.0 <= config.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {config.id_dropout}")
        if config.recency_buckets < 1:
            raise ValueError(f"recency_buckets must be >= 1, got {config.recency_buckets}")
        d = config.dim
        m = 2 * d if config.use_operations else d
        #: the mixture's components, in gate order
        self.components = ["explore"] + (["repeat"] if config.repeat else []) + (
            ["cold"] if config.cold_items == "component" else [])
        if config.repeat:
            self.rep_m = nn.Linear(m, d, bias=False)
            self.rep_s = nn.Linear(d, d)
            self.rep_pos = nn.Embedding(config.recency_buckets, d)
            self.rep_v = nn.Linear(d, 1, bias=False)
            nn.init.normal_(self.rep_pos.weight, 0.0, config.init_std)
        if len(self.components) > 1:
            self.gate = nn.Linear(d + m, len(self.components))
        if config.explore_core not in ("", "add", "only"):
            raise ValueError(f"explore_core must be '', 'add' or 'only', got {config.explore_core!r}")
        if config.explore_core:
            from .core import CORE, COREConfig
            self.core = CORE(COREConfig(dim=d), spec)
        self.expert = self._build_expert("explore_expert", config.explore_expert, spec)
        self.expert2 = self._build_expert("explore_expert2", config.explore_expert2, spec)
        if config.explore_expert2 and not config.explore_expert:
            raise ValueError(f"explore_expert2 ({config.explore_expert2!r}; 'core' by default) needs an explore_expert: "
                             "for a model without explore experts set explore_expert2='' too (registered as "
                             "mkmsr-rn-no-expert)")
        if config.neighbours:
            self.stan = STAN(STANConfig(k=config.nb_k, sample_size=config.nb_sample_size,
                                        lambda_spw=config.nb_lambda_spw, lambda_snh=config.nb_lambda_snh,
                                        lambda_inh=config.nb_lambda_inh), spec)
            # weights of the features (n, log1p(n / 0.01) / log1p(100), 1[n > 0]); stored / NB_SCALE so
            # that Adam moves them NB_SCALE times faster than a unit-scale weight
            self.nb_weight = nn.Parameter(torch.tensor(config.nb_init) / NB_SCALE)
        # items seen in the train split (filled by fit_statistics; all warm until then)
        self.register_buffer("warm", torch.ones(spec.n_items + 1))
        # the repeat hurdle's logistic regression on repeat_features (fit_statistics): standardisation
        # (mean, std) and weights, bias; zeros (z = 0) until fitted
        n_feat = REPEAT_FEATURES_BASE + 2 * spec.n_ops
        for name, size in (("hurdle_mu", n_feat), ("hurdle_sd", n_feat), ("hurdle_w", n_feat), ("hurdle_b", 1)):
            self.register_buffer(name, torch.ones(size) if name == "hurdle_sd" else torch.zeros(size))
        self._keep: torch.Tensor | None = None   # the id mask of the current training step
        #: (knowledge graph and gamma key, the knowledge prior's sparse matrices), not saved
        self._prior_matrices: tuple | None = None
        #: (split origin, own session excluded) -> CSR (indptr, cols, vals) of the normalised
        #: neighbourhood scores of every prefix of that split (fit_statistics, when nb_cache; not saved)
        self._nb_cache: dict[tuple[str, bool], tuple[torch.Tensor, ...]] = {}
        #: while :meth:`calibration_memo` is active: (batch, part) -> the part's value
        self._memo: dict | None = None
        self._memo_bytes = 0

    @classmethod
    def training_identity(cls, config: dict) -> dict:
        """cold_items "match" trains exactly as "attributes" (the match component is inference
        only), so both map to one identity."""
        ident = super().training_identity(config)
        if ident.get("cold_items") == "match":
            ident["cold_items"] = "attributes"
        return ident

    def calibration_grid(self) -> dict[str, tuple]:
        """The inference-time options the trainer picks on validation after training (see the
        module docstring). The search is a greedy coordinate ascent, so the grid shapes its path:
        widening ``expert_weight`` to (..., 32, 64) sent it on Demo(N) (seed 0) to a worse optimum
        *on validation itself* (MRR@20 12.43 against 13.19 with this grid: the knowledge match then
        flooded the top 20 with cold items; test 32.77 / 15.79 against 39.99 / 16.97), so it stays
        at 16."""
        if not self.config.calibrate:
            return {}
        grid: dict[str, tuple] = {}
        if self.config.neighbours:
            grid["nb_multiplier"] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
            grid["explore_neural"] = (0.0, 0.25, 0.5, 1.0)
        if self.config.repeat:
            grid["gate_shift"] = (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
            grid["repeat_recency"] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
            grid["repeat_explore"] = (0.0, 0.25, 0.5, 1.0, 2.0)
        if "cold" in self.components:
            grid["cold_shift"] = (-20.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
        if self.expert is not None:
            grid["expert_weight"] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
        if self.expert2 is not None:
            grid["expert2_weight"] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
        if self.config.knowledge_prior and self.spec.n_entities > self.spec.n_items + 1:
            grid["prior_weight"] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)                # 0: off
            grid["prior_idf"] = (0.0, 1.0, 2.0, 3.0)
        if self.config.repeat_hurdle:
            grid["hurdle_shift"] = (-20.0, -2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0)        # -20: off
            grid["hurdle_temperature"] = (0.5, 1.0, 2.0)
        if self.config.cold_items == "match":
            grid["match_alpha"] = (-20.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0)   # -20: off
            grid["match_beta"] = (0.0, 0.5, 1.0, 2.0)
            grid["match_tau"] = (1.0, 2.0, 4.0, 8.0)
            grid["match_idf"] = (0.0, 1.0)
        return grid

    @contextmanager
    def calibration_memo(self):
        """Within this context, the parts of an inference forward pass that no calibration
        option changes (the micro-behaviour encoder and session vector, the neural and expert
        logits, the raw repeat attention and gate logits, the knowledge-match counts) are computed
        once per evaluation batch and reused: the calibration evaluates the validation split at
        many option values, and each then costs only the mixing (``Trainer._calibrate``). Same
        values as without it; at most ``MEMO_BYTES`` kept. Weights must not change inside it."""
        self._memo, self._memo_bytes = {}, 0
        try:
            yield
        finally:
            self._memo, self._memo_bytes = None, 0

    def _frozen(self, batch: Batch, part: str, fn):
        """``fn()``, memoised per (batch, part) while :meth:`calibration_memo` is active."""
        if self._memo is None or self.training or batch.sample_idx is None or torch.is_grad_enabled():
            return fn()
        key = (batch.origin, part, tuple(batch.items.shape), batch.sample_idx.cpu().numpy().tobytes())
        hit = self._memo.get(key)
        if hit is None:
            hit = fn()
            size = sum(t.numel() * t.element_size() for t in (hit if isinstance(hit, tuple) else (hit,))
                       if isinstance(t, torch.Tensor))
            if self._memo_bytes + size <= MEMO_BYTES:
                self._memo[key], self._memo_bytes = hit, self._memo_bytes + size
        return hit

    def _staged(self, batch: Batch, stage: str, after: tuple[str, ...], fn):
        """``fn()``, memoised per (batch, stage) while :meth:`calibration_memo` is active, for the
        configuration it was computed under less the options ``after`` (which act only downstream
        of the stage): one value per batch and stage, replaced when any other option changes.
        The coordinate ascent moves one axis at a time, so along the last stages' axes (the
        knowledge prior's, the repeat hurdle's) the stages before them are reused as computed."""
        if self._memo is None or self.training or batch.sample_idx is None or torch.is_grad_enabled():
            return fn()
        key = (batch.origin, "stage " + stage, tuple(batch.items.shape), batch.sample_idx.cpu().numpy().tobytes())
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(self.config).items() if k not in after}
        hit = self._memo.get(key)
        if hit is not None and hit[0] == opts:
            return hit[1]
        value = fn()
        size = sum(t.numel() * t.element_size() for t in (value if isinstance(value, tuple) else (value,))
                   if isinstance(t, torch.Tensor))
        old = self._memo.pop(key, None)
        if old is not None:
            self._memo_bytes -= old[2]
        if self._memo_bytes + size <= MEMO_BYTES:
            self._memo[key], self._memo_bytes = (opts, value, size), self._memo_bytes + size
        return value

    def _inside(self, batch: Batch, like: torch.Tensor) -> torch.Tensor:
        """(B, n) bool: the items of each session prefix (columns 1..n)."""
        def build() -> torch.Tensor:
            inside = torch.zeros(like.shape[0], like.shape[1] + 1, dtype=torch.bool, device=like.device)
            return inside.scatter_(1, batch.items, batch.mask)[:, 1:]
        return self._frozen(batch, "inside", build)

    @staticmethod
    def _build_expert(option: str, name: str, spec: DatasetSpec):
        """The (untrained, frozen) explore expert ``name`` (None for ""): trained first, on its
        own (``Trainer._attach_expert``), then frozen."""
        if not name:
            return None
        from . import MODELS, build_model
        if name not in MODELS or MODELS[name][0] is MKMSRRN:
            raise ValueError(f"{option} must name a registered model other than mkmsr-rn, got {name!r}")
        with torch.random.fork_rng(devices=[]):   # the mixture's own initialisation stays as without one
            expert = build_model(name, spec)
        if not expert.trainable:
            raise ValueError(f"{option} {name!r} is not a trained model")
        return expert.requires_grad_(False)

    def experts(self) -> list[tuple[str, str, "nn.Module"]]:
        """(attribute, registered name, module) of each explore expert, first to second."""
        return [(attr, name, getattr(self, attr)) for attr, name in
                (("expert", self.config.explore_expert), ("expert2", self.config.explore_expert2))
                if getattr(self, attr, None) is not None]

    # ---- statistics ------------------------------------------------------------------------
    def fit_statistics(self, data) -> None:
        super().fit_statistics(data)
        for _, _, expert in self.experts():
            expert.fit_statistics(data)
        if self.config.neighbours:
            self.stan.fit_statistics(data)
            self._nb_cache = {}
            if self.config.nb_cache:
                for split in ("train", "valid", "test"):
                    self._fill_nb_cache(data.split(split), exclude_own=split == "train")
        counts = torch.from_numpy(data.item_train_count).to(self.warm.device)
        self.warm = (counts > 0).to(self.warm.dtype)
        self.warm[0] = 1.0
        if self.config.repeat_hurdle:
            self._fit_hurdle(data)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before the repeat hurdle have no regression: keep the unfitted one (z = 0)
        for name in ("hurdle_mu", "hurdle_sd", "hurdle_w", "hurdle_b"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _fit_hurdle(self, data, max_samples: int = 200_000, batch_size: int = 4096) -> None:
        """Fit the repeat hurdle's logistic regression, P(the next item repeats a session item)
        from :func:`repeat_features`, on the train split's prefixes (at most ``max_samples``,
        evenly spaced; L2 1e-3 on the standardised weights, L-BFGS, deterministic)."""
        arr = data.split("train")
        sess, prefix = arr.samples()
        if not sess.size:
            return
        keep = np.linspace(0, sess.size - 1, min(sess.size, max_samples)).round().astype(np.int64)
        sess, prefix = sess[keep], prefix[keep]
        X, Y = [], []
        for lo in range(0, sess.size, batch_size):
            b = make_batch(arr, sess[lo:lo + batch_size], prefix[lo:lo + batch_size])
            X.append(repeat_features(b, self.spec.n_ops))
            Y.append(((b.items == b.targets[:, None]) & b.mask).any(1).float())
        X, Y = torch.cat(X), torch.cat(Y)
        mu, sd = X.mean(0), X.std(0) + 1e-6
        Xs = (X - mu) / sd
        w = torch.zeros(X.shape[1], requires_grad=True)
        b0 = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b0], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(Xs @ w + b0, Y) + 1e-3 * (w ** 2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        dev = self.warm.device
        self.hurdle_mu, self.hurdle_sd = mu.to(dev), sd.to(dev)
        self.hurdle_w, self.hurdle_b = w.detach().to(dev), b0.detach().to(dev)

    def repeat_logit(self, batch: Batch) -> torch.Tensor:
        """(B,) the hurdle regression's logit of "the next item repeats one of the session's items"."""
        x = repeat_features(batch, self.spec.n_ops).to(self.hurdle_w.device)
        return ((x - self.hurdle_mu) / self.hurdle_sd) @ self.hurdle_w + self.hurdle_b

    def _with_hurdle(self, batch: Batch, lp: torch.Tensor) -> torch.Tensor:
        """The repeat hurdle (inference only): the distribution ``lp`` (B, n) split into its part
        on the session's items and the rest, each renormalised, weighted q and 1 - q with
        q = sigmoid(hurdle_temperature * z + hurdle_shift), z = :meth:`repeat_logit`. The model's
        order within each part is kept; what changes is how the session's items as a whole sit
        against the new items, decided per session by an explicit regression instead of the
        mixture's mass (which tells repeat from first-time targets no better than a coin:
        ``benchmarks/rank_split.py``, repeat AUC 0.52 on the Demo and Taobao)."""
        c = self.config
        if c.hurdle_shift <= -20.0 or not c.repeat_hurdle:
            return lp
        z = self._frozen(batch, "hurdle", lambda: self.repeat_logit(batch))
        q = (c.hurdle_temperature * z + c.hurdle_shift)[:, None]
        inside = self._inside(batch, lp)

        def parts() -> tuple[torch.Tensor, ...]:
            l_in = logsumexp(torch.where(inside, lp, float("-inf")))
            l_out = logsumexp(torch.where(inside, float("-inf"), lp))
            return l_in, l_out, torch.isfinite(l_in) & torch.isfinite(l_out)   # ok: both parts hold mass

        l_in, l_out, ok = self._staged(batch, "hurdle masses", HURDLE_OPTIONS, parts)
        # (lp - l_in) + log q inside, (lp - l_out) + log (1 - q) outside, built in place
        out = torch.where(inside, (lp - l_in).add_(F.logsigmoid(q)), (lp - l_out).add_(F.logsigmoid(-q)))
        return out if bool(ok.all()) else torch.where(ok, out, lp)

    @torch.no_grad()
    def _live_neighbourhood(self, batch: Batch, own_excluded: bool) -> tuple[torch.Tensor, ...]:
        """The nonzero STAN scores of the batch, divided by each row's maximum: rows, columns
        (0-based item columns) and values, each (nnz,)."""
        nb = self.stan.logits(batch, exclude_own=own_excluded)
        top = nb.amax(dim=1, keepdim=True)
        nb = torch.where(top > 0, nb / top.clamp(min=1e-30), nb)
        r, c = torch.nonzero(nb, as_tuple=True)
        return r, c, nb[r, c]

    @torch.no_grad()
    def _fill_nb_cache(self, split, exclude_own: bool, batch_size: int = 512) -> None:
        """The neighbourhood scores of every prefix of ``split`` (for the train split: each
        without its own session, as training prefixes see them), in the split's sample order,
        as CSR arrays: ``indptr`` (n_samples + 1,), ``cols`` (nnz,) int32, ``vals`` (nnz,)."""
        sess, prefix = split.samples()
        if not sess.size or not split.origin:
            return
        counts, cols, vals = [], [], []
        dev = self.warm.device
        for lo in range(0, sess.size, batch_size):
            b = make_batch(split, sess[lo:lo + batch_size], prefix[lo:lo + batch_size], with_targets=False).to(dev)
            if exclude_own:
                b.train_sessions = torch.from_numpy(sess[lo:lo + batch_size]).to(dev)
            r, c, v = self._live_neighbourhood(b, exclude_own)      # row-major: rows ascending
            counts.append(torch.bincount(r, minlength=len(b)).cpu())
            cols.append(c.to(torch.int32).cpu())
            vals.append(v.cpu())
        indptr = F.pad(torch.cumsum(torch.cat(counts), 0), (1, 0))
        self._nb_cache[(split.origin, exclude_own)] = (indptr, torch.cat(cols), torch.cat(vals))

    def _neighbourhood(self, batch: Batch, own_excluded: bool) -> tuple[torch.Tensor, ...]:
        """(rows, cols, values) of :meth:`_live_neighbourhood`, read from the cache when every row
        of the batch is a cached sample."""
        tab = self._nb_cache.get((batch.origin, own_excluded)) if batch.sample_idx is not None else None
        if tab is None or not bool((batch.sample_idx >= 0).all()):
            return self._live_neighbourhood(batch, own_excluded)
        indptr, cols, vals = tab
        si = batch.sample_idx.cpu()
        start, n = indptr[si], indptr[si + 1] - indptr[si]                       # (B,)
        rows = torch.repeat_interleave(torch.arange(si.numel()), n)
        first = torch.cumsum(n, 0) - n
        idx = torch.repeat_interleave(start - first, n) + torch.arange(int(n.sum()))
        dev = batch.items.device
        return rows.to(dev), cols[idx].to(torch.int64).to(dev), vals[idx].to(dev)

    def _nb_features(self, batch: Batch, own_excluded: bool, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(rows, 0-based item columns, values) of the neighbourhood term of the explore logits,
        w . f(n): every feature is 0 where n = 0, so it is computed on the (few) nonzero entries
        only; empty without ``neighbours``."""
        if not self.config.neighbours:
            none = torch.zeros(0, dtype=torch.long, device=like.device)
            return none, none, like.new_zeros(0)
        r, c, v = self._neighbourhood(batch, own_excluded)
        w = self.nb_weight * (NB_SCALE * self.config.nb_multiplier)
        return r, c, w[0] * v + w[1] * (torch.log1p(v / 0.01) / math.log1p(100.0)) + w[2]

    # ---- item side ---------------------------------------------------------------------------
    def _id_keep(self) -> torch.Tensor:
        """(n_items + 1,) 1 where an item's id embedding counts, 0 for cold items (and, in a
        training step, for the ``id_dropout`` share drawn for it)."""
        keep = self.warm
        if self.training and self.config.id_dropout > 0 and torch.is_grad_enabled():
            keep = keep * (torch.rand_like(keep) >= self.config.id_dropout).to(keep.dtype)
            keep[0] = 1.0
        return keep

    def _item_keep(self) -> torch.Tensor | None:
        self._keep = None
        if self.config.cold_items != "id":
            self._keep = self._id_keep()
        return self._keep

    def item_embeddings(self) -> torch.Tensor:
        E = self.item_embedding.weight
        keep = self._item_keep()
        if keep is not None:
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

    def _cold(self) -> torch.Tensor:
        """(n_items,) bool: the cold items of this forward pass (columns 1..n)."""
        keep = self._keep if (self._keep is not None and torch.is_grad_enabled()) else self.warm
        return keep[1:] == 0

    # ---- session side ------------------------------------------------------------------------
    def _fusable(self) -> bool:
        """Whether a training step can take the explore term through :class:`_ExploreLSE`: the
        explore logits are then the cosine term plus the neighbourhood features, nothing else."""
        c = self.config
        return not c.explore_core and "cold" not in self.components and not c.explore_new_only

    def _explore_terms(self, batch: Batch, s: torch.Tensor, V: torch.Tensor, own_excluded: bool) -> dict:
        """``explore`` (B, n) logits, and with the cold component ``cold`` / ``cold_idx`` (see
        :meth:`_parts`), from the (B, d) session vectors ``s`` and the item vectors ``V``."""
        def neural_term() -> torch.Tensor:
            neural = s @ V[1:].T                                                 # (B, n)
            if self.config.explore_core:
                E = self.core.item_embedding.weight[1:]
                if self.training:
                    E = self.core.item_drop(E)
                core = self.core.session_vectors(batch) @ F.normalize(E, dim=-1).T  # cos / tau
                core = core * self.warm[1:][None, :]
                neural = core if self.config.explore_core == "only" else neural + core
            return neural

        neural = self._frozen(batch, "neural", neural_term)
        e = neural
        if self.config.explore_neural != 1.0 and not self.training:
            e = neural * self.config.explore_neural
        if self.expert is not None and self.config.expert_weight and not self.training:
            with torch.no_grad():
                x = self._frozen(batch, "expert", lambda: self.expert.logits(batch))  # (B, n)
            # the expert never trained the cold items' rows: it scores warm items only
            e = e + (self.config.expert_weight * x) * self.warm[1:][None, :]
        if self.expert2 is not None and self.config.expert2_weight and not self.training:
            with torch.no_grad():
                x = self._frozen(batch, "expert2", lambda: self.expert2.logits(batch))  # (B, n)
            e = e + (self.config.expert2_weight * x) * self.warm[1:][None, :]
        if self.config.neighbours:
            r, c, f = self._nb_features(batch, own_excluded, s)
            e = e.index_put((r, c), f, accumulate=True)
        out: dict = {}
        if "cold" in self.components:
            cold = self._cold()
            out["explore"] = e.masked_fill(cold[None, :], float("-inf"))
            idx = torch.nonzero(cold, as_tuple=True)[0]                         # (n_cold,) columns
            out["cold_idx"] = idx
            out["cold"] = neural[:, idx]                                        # (B, n_cold)
        else:
            out["explore"] = e
        if self.config.repeat and self.config.explore_new_only:
            inside = torch.zeros(len(batch), self.spec.n_items + 1, dtype=torch.bool, device=e.device)
            inside.scatter_(1, batch.items, batch.mask)
            out["explore"] = out["explore"].masked_fill(inside[:, 1:], float("-inf"))
        return out

    def _parts(self, batch: Batch, V: torch.Tensor, own_excluded: bool, targets: torch.Tensor | None = None) -> dict:
        """The mixture's pieces: ``log_pi`` (B, C) log gate per component (``self.components``),
        ``explore`` (B, n) logits over the warm items (-inf on cold ones), ``cold`` (B, n_cold)
        logits over the cold items, columns ``cold_idx`` (n_cold,) of the catalogue (0-based), when
        that component exists, ``p_rep`` (B, n + 1) the repeat distribution when that one exists.
        With ``targets`` (B,) item_idx (a training step; see :meth:`_fusable`) the full (B, n)
        terms are not built: ``explore_lse`` / ``explore_t`` (B,) hold the explore logsumexp and
        the target's explore logit, ``p_rep_t`` (B,) the target's repeat probability."""
        def encode() -> tuple[torch.Tensor, ...]:
            M = self.micro_behaviours(batch, V)
            last = M[torch.arange(M.shape[0], device=M.device), batch.lengths - 1]
            s_g, _ = self.attention(M, last, batch.mask)
            s_raw = self.W3(torch.cat([last, s_g], dim=-1))                      # (B, d)
            s = s_raw
            if self.config.scoring == "cosine":
                s = self.config.score_scale * F.normalize(s_raw, dim=-1)
            return M, last, s_raw, s

        M, last, s_raw, s = self._frozen(batch, "encoder", encode)
        B, L = batch.items.shape
        if targets is not None:   # a training step: the fused explore term (see _fusable)
            r, c, f = self._nb_features(batch, own_excluded, s)
            pad = torch.zeros(1, dtype=torch.long, device=s.device)              # the padding column
            lse, t = _ExploreLSE.apply(s, V, f, r, c + 1, pad, targets)
            out: dict = {"explore_lse": lse, "explore_t": t}
        else:
            out = self._explore_terms(batch, s, V, own_excluded)
        if self.config.repeat:
            mask = batch.mask
            rec = (batch.lengths[:, None] - 1 - torch.arange(L, device=M.device)[None, :])
            rec = rec.clamp(0, self.config.recency_buckets - 1)
            a = self._frozen(batch, "repeat", lambda: self.rep_v(
                torch.tanh(self.rep_m(M) + self.rep_s(s_raw)[:, None, :] + self.rep_pos(rec))).squeeze(-1))
            if self.config.repeat_explore and not self.training and "explore" in out:
                # inference-time: the explore evidence of each session item joins its attention
                # logit (a cold item, -inf there under cold_items="component", stays neutral)
                E = out["explore"].gather(1, (batch.items - 1).clamp(min=0))
                fin = torch.isfinite(E) & mask
                top = torch.where(fin, E, torch.full_like(E, float("-inf"))).amax(dim=1, keepdim=True)
                a = a + self.config.repeat_explore * torch.where(fin, E - top, torch.zeros_like(E))
            if self.config.repeat_recency and not self.training:
                # inference-time recency tilt of the repeat attention, chosen on validation
                back = (batch.lengths[:, None] - 1 - torch.arange(L, device=M.device)[None, :]).to(a.dtype)
                a = a - self.config.repeat_recency * back
            a = a.masked_fill(~mask, float("-inf"))
            alpha = torch.softmax(a, dim=1) * mask                               # (B, L)
            if targets is not None:
                out["p_rep_t"] = (alpha * (batch.items == targets[:, None])).sum(dim=1)
            else:
                p_rep = torch.zeros(B, self.spec.n_items + 1, dtype=alpha.dtype, device=alpha.device)
                p_rep.scatter_add_(1, batch.items, alpha)
                p_rep[:, 0] = 0.0
                out["p_rep"] = p_rep
        if len(self.components) > 1:
            g = self._frozen(batch, "gate", lambda: self.gate(torch.cat([s_raw, last], dim=-1)))  # (B, C)
            shift = torch.tensor([{"explore": 0.0, "repeat": self.config.gate_shift,
                                   "cold": self.config.cold_shift}[c] for c in self.components],
                                 dtype=g.dtype, device=g.device)
            g = g + shift
            if "cold" in self.components and not bool(self._cold().any()):
                g = g.masked_fill(torch.tensor([c == "cold" for c in self.components], device=g.device), float("-inf"))
            out["log_pi"] = torch.log_softmax(g, dim=1)
        else:
            out["log_pi"] = torch.zeros(B, 1, dtype=s.dtype, device=s.device)
        return out

    def _log_softmax(self, x: torch.Tensor) -> torch.Tensor:
        """log-softmax over the finite entries of each row (a row with none stays -inf)."""
        lse = logsumexp(x)
        return x - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))

    def logits(self, batch: Batch) -> torch.Tensor:
        """log p(i) of every item under the mixture (of the explore softmax when it is the only
        component); with ``cold_items="match"`` mixed with the knowledge-match component."""
        match = self.config.cold_items == "match" and not self.training and self.config.match_alpha > -20.0

        def mixture() -> torch.Tensor:
            if match and self.config.match_share == "all":
                return self._with_knowledge_match(batch, self._mixture_logits(batch))
            return self._mixture_logits(batch, match=match)

        if self.training:
            return mixture()
        # the stages after the mixture (knowledge prior, then repeat hurdle) are computed last, so a
        # calibration moving along their axes reuses what comes before them (``_staged``)
        lp = self._staged(batch, "mixture", PRIOR_OPTIONS + HURDLE_OPTIONS, mixture)
        lp = self._staged(batch, "prior", HURDLE_OPTIONS, lambda: self._with_knowledge_prior(batch, lp))
        return self._with_hurdle(batch, lp)

    def knowledge_prior_scores(self, batch: Batch) -> torch.Tensor:
        """(B, n) k(s, i) of :func:`knowledge_prior_scores` with this model's knowledge triplets
        and ``prior_idf`` / ``prior_recency``."""
        n_attr = self.attr_embedding.num_embeddings
        key = (self.attr_item.data_ptr(), self.attr_item.numel(), self.attr_item.device, float(self.config.prior_idf))
        if self._prior_matrices is None or self._prior_matrices[0] != key:   # built once per knowledge graph and gamma
            self._prior_matrices = (key, knowledge_prior_matrices(self.attr_item, self.attr_value, self.spec.n_items,
                                                                  n_attr, self.config.prior_idf))
        return knowledge_prior_scores(batch, self.attr_item, self.attr_value, self.spec.n_items, n_attr,
                                      self.config.prior_idf, self.config.prior_recency,
                                      matrices=self._prior_matrices[1])

    def _with_knowledge_prior(self, batch: Batch, lp: torch.Tensor) -> torch.Tensor:
        """The knowledge prior (inference only): every item outside the session gets
        + prior_weight * k(s, i) (:meth:`knowledge_prior_scores`), renormalised so that the mass
        outside the session is that of ``lp``; the session's own items are untouched (their
        place is the repeat decision's). Off when prior_weight is 0 or the data has no knowledge."""
        c = self.config
        if not c.knowledge_prior or c.prior_weight <= 0.0 or self.attr_value.numel() == 0:
            return lp
        k = self._frozen(batch, f"prior idf {c.prior_idf} recency {c.prior_recency}",
                         lambda: self.knowledge_prior_scores(batch))
        inside = self._inside(batch, lp)
        x = torch.where(inside, float("-inf"), lp + c.prior_weight * k)
        l_old = self._staged(batch, "prior mass", PRIOR_OPTIONS + HURDLE_OPTIONS,
                             lambda: logsumexp(torch.where(inside, float("-inf"), lp)))
        l_new = logsumexp(x)
        ok = torch.isfinite(l_old) & torch.isfinite(l_new)
        out = torch.where(inside, lp, x.sub_(l_new).add_(l_old))                # x - l_new + l_old, in place
        return out if bool(ok.all()) else torch.where(ok, out, lp)

    @torch.no_grad()
    def knowledge_match(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_cold) attribute-match scores of the cold items and their (n_cold,) 0-based columns:
        match(s, i) = sum over attribute values a of i (brand, shop, category...) of
        idf(a)^match_idf * sum_t exp(-(L - t) / match_recency) 1[x_t has a], so a new item of the
        shop or brand the session is browsing scores high. Counts from the knowledge graph alone."""
        cold = self.warm[1:] == 0
        cols = torch.nonzero(cold, as_tuple=True)[0]
        B, L = batch.items.shape
        n_attr = self.attr_embedding.num_embeddings
        A = torch.sparse_coo_tensor(torch.stack([self.attr_item, self.attr_value]), torch.ones_like(self.attr_weight),
                                    (self.spec.n_items + 1, n_attr), check_invariants=False).coalesce()
        rec = (batch.lengths[:, None] - 1 - torch.arange(L, device=batch.items.device)[None, :]).to(torch.float32)
        w = torch.where(batch.mask, torch.exp(-rec / self.config.match_recency), torch.zeros_like(rec))
        W = torch.zeros(B, self.spec.n_items + 1, device=w.device).index_put_(
            (torch.arange(B, device=w.device)[:, None].expand(B, L), batch.items), w, accumulate=True)
        W[:, 0] = 0.0
        profile = torch.sparse.mm(A.t(), W.T).T                                   # (B, n_attr)
        weight = torch.ones(n_attr, device=w.device)
        if self.config.match_idf:
            support = torch.bincount(self.attr_value, minlength=n_attr).to(torch.float32)
            weight = torch.log((self.spec.n_items + 1) / support.clamp(min=1.0)).clamp(min=0.0) ** self.config.match_idf
        on_cold = torch.nonzero(cold[self.attr_item.clamp(min=1) - 1] & (self.attr_item > 0), as_tuple=True)[0]
        pos = torch.full((self.spec.n_items + 1,), -1, dtype=torch.long, device=w.device)
        pos[cols + 1] = torch.arange(cols.numel(), device=w.device)
        Ac = torch.sparse_coo_tensor(torch.stack([pos[self.attr_item[on_cold]], self.attr_value[on_cold]]),
                                     weight[self.attr_value[on_cold]], (cols.numel(), n_attr), check_invariants=False)
        return torch.sparse.mm(Ac.coalesce(), profile.T).T, cols                 # (B, n_cold)

    def _with_knowledge_match(self, batch: Batch, lp: torch.Tensor,
                              log_mass: torch.Tensor | None = None) -> torch.Tensor:
        """p'(i) = (1 - g) p(i) + g m softmax_{cold i, match > 0}(match_tau * match(i)), with
        g = sigmoid(match_alpha + match_beta * max match) (0 when no cold item shares an attribute
        with the session) and m = exp(``log_mass``) (B, 1) the total mass of ``lp`` (1 when None:
        ``lp`` is a whole distribution; with ``match_share="explore"`` it is the explore
        component's, of mass pi_explore). Training prefixes never have cold targets, so every
        parameter here is chosen on validation (``calibration_grid``), none learned."""
        c = self.config
        if c.match_alpha <= -20.0:
            return lp
        raw, cols = self._frozen(batch, f"match idf {c.match_idf} recency {c.match_recency}",
                                 lambda: self.knowledge_match(batch))
        if not cols.numel():
            return lp
        has = raw > 0
        anyp = has.any(dim=1, keepdim=True)
        z = c.match_alpha + c.match_beta * raw.amax(dim=1, keepdim=True)
        # log g and log(1 - g) in log space: g saturates to 1.0 in float32 for large z
        log_g = torch.where(anyp, F.logsigmoid(z), torch.full_like(z, float("-inf")))
        log_rest = torch.where(anyp, F.logsigmoid(-z), torch.zeros_like(z))
        x = torch.where(has, c.match_tau * raw, torch.full_like(raw, float("-inf")))
        lse = torch.logsumexp(x, dim=1, keepdim=True)
        if log_mass is not None:
            log_g = log_g + log_mass
        lc = torch.where(has, x - torch.where(anyp, lse, torch.zeros_like(lse)) + log_g, torch.full_like(x, float("-inf")))
        out = lp + log_rest
        return out.index_copy(1, cols, torch.logaddexp(out[:, cols], lc))

    def _mixture_logits(self, batch: Batch, match: bool = False) -> torch.Tensor:
        """log p(i) of the mixture; ``match``: with the knowledge-match component sharing the
        explore component's mass (``match_share="explore"``)."""
        V = self.scoring_vectors()
        P = self._parts(batch, V, own_excluded=False)
        if len(self.components) == 1:
            lp = self._log_softmax(P["explore"])
            return self._with_knowledge_match(batch, lp) if match else lp
        idx = {c: i for i, c in enumerate(self.components)}
        log_pi = P["log_pi"]
        lp = self._log_softmax(P["explore"]) + log_pi[:, idx["explore"], None]
        if match:
            lp = self._with_knowledge_match(batch, lp, log_mass=log_pi[:, idx["explore"], None])
        if "cold" in P and P["cold_idx"].numel():
            # the explore component is -inf on the cold columns: they hold the cold term alone
            lp = lp.index_copy(1, P["cold_idx"], self._log_softmax(P["cold"]) + log_pi[:, idx["cold"], None])
        if "p_rep" not in P:
            return lp
        # the repeat term touches only the session's own items: mix there, in (B, n + 1) space
        full = F.pad(lp, (1, 0))
        cols = batch.items                                                       # padding -> column 0
        pr = P["p_rep"].gather(1, cols)
        here = full.gather(1, cols)
        mixed = torch.where(pr > 0, torch.logaddexp(here, torch.log(pr.clamp(min=1e-30)) + log_pi[:, idx["repeat"], None]),
                            here)
        return full.scatter(1, cols, mixed)[:, 1:]

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        """NLL of the target under the mixture, computed at the target only (one logsumexp over
        the catalogue per component); on training prefixes the neighbourhood leaves out the
        prefix's own session."""
        V = self.scoring_vectors()
        t = batch.targets
        fused = self._fusable() and torch.is_grad_enabled()
        P = self._parts(batch, V, own_excluded=batch.train_sessions is not None, targets=t if fused else None)
        if len(self.components) == 1:
            if fused:
                return (P["explore_lse"] - P["explore_t"]).mean()
            x = P["explore"]
            return (logsumexp(x).squeeze(1) - x.gather(1, (t - 1)[:, None]).squeeze(1)).mean()
        col = (t - 1)[:, None]
        terms = []
        for i, c in enumerate(self.components):
            if c == "repeat":
                pr = P["p_rep_t"] if fused else P["p_rep"].gather(1, t[:, None]).squeeze(1)
                lpc = torch.where(pr > 0, torch.log(pr.clamp(min=1e-30)), torch.full_like(pr, float("-inf")))
            elif c == "cold":
                ci = P["cold_idx"]
                if not ci.numel():
                    lpc = torch.full_like(t, float("-inf"), dtype=P["log_pi"].dtype)
                else:
                    pos = torch.full((self.spec.n_items,), -1, dtype=torch.long, device=t.device)
                    pos[ci] = torch.arange(ci.numel(), device=t.device)
                    j = pos[t - 1]
                    x = P["cold"]
                    xt = x.gather(1, j.clamp(min=0)[:, None]).squeeze(1)
                    lpc = torch.where(j >= 0, xt - logsumexp(x).squeeze(1), torch.full_like(xt, float("-inf")))
            elif fused:
                xt, lse = P["explore_t"], P["explore_lse"]
                lpc = torch.where(torch.isfinite(xt), xt - lse, torch.full_like(xt, float("-inf")))
            else:
                x = P[c]
                lse = logsumexp(x).squeeze(1)
                xt = x.gather(1, col).squeeze(1)
                lpc = torch.where(torch.isfinite(xt), xt - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)),
                                  torch.full_like(xt, float("-inf")))
            terms.append(lpc + P["log_pi"][:, i])
        return -torch.logsumexp(torch.stack(terms, dim=1), dim=1).mean()
