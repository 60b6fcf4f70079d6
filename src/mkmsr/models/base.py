"""The narrow model contract the training loop, the evaluator and the server rely on.

Every model answers:

* ``score(batch) -> (B, n_items + 1)``: a score for every item_idx; column 0 (padding) is -inf.
  Embedding models score by a dot product ``session_vectors(batch) @ candidate_vectors().T``
  (by default ``encode`` and ``item_embeddings``), which servers use to cache the item side.
* ``sr_loss(batch) -> scalar``: the session-recommendation loss L_S of a batch with targets.
* ``softmax_inputs(batch) -> (s (B, d), V (n_items + 1, d))`` where ``softmax_loss`` is true:
  the model's ``sr_loss`` is the full-softmax cross-entropy of ``s @ V[1:].T``, so the training
  loop may replace that loss by a cheaper one over the same vectors (bfloat16 GEMMs, sampled
  softmax: :mod:`mkmsr.models.scoring`). False for losses of another form (BPR, mixtures,
  transformed scores), which then train with their own ``sr_loss`` only.
* ``kg_loss(triplets, weights=None) -> scalar`` when ``uses_knowledge``: the summed TransH
  loss L_K of (head, relation, tail) entity triplets.
* ``fit_statistics(data)``: called once before training with the prepared data (count-based
  models build their statistics here; neural models may ignore it).

The loop knows no model by name; models are built from the registry in
:mod:`mkmsr.models`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import Batch
from ..data.dataset import DatasetSpec


class SessionModel(nn.Module):
    """Base class. Subclasses set ``Config`` (a dataclass) and implement ``encode`` or ``score``."""

    Config: ClassVar[type]
    #: False for count-based models: they are fitted by ``fit_statistics`` alone, no SGD.
    trainable: ClassVar[bool] = True
    #: True when ``sr_loss`` is the full-softmax cross-entropy over ``softmax_inputs`` (declared by
    #: each model, never inherited by accident: a subclass with another loss sets it back to False)
    softmax_loss: ClassVar[bool] = False

    def __init__(self, config: Any, spec: DatasetSpec):
        super().__init__()
        self.config = config
        self.spec = spec

    @property
    def uses_knowledge(self) -> bool:
        return False

    #: attributes in which a model keeps item-side tensors computed without autograd (evaluation,
    #: serving: ``scoring_vectors``, ``item_embeddings``), keyed by its parameters' version counters
    NO_GRAD_CACHES: ClassVar[tuple[str, ...]] = ("_vec_cache", "_emb_cache")

    def train(self, mode: bool = True) -> "SessionModel":
        """``nn.Module.train``, and a change of mode drops every no-autograd cache of this model and
        its submodules (``NO_GRAD_CACHES``). Their key, the parameters' version counters, does not
        see every update: a fused optimizer step (``torch.optim.Adam(fused=True)``, the trainer's)
        changes the weights in place without advancing it. Without this, each per-epoch evaluation
        after the first scored with the first evaluation's item vectors (found at stop 29; every
        model with such a cache: MKM-SR+, MKM-SR-RN, CORE-KG)."""
        if mode != self.training:
            for m in self.modules():
                for name in self.NO_GRAD_CACHES:
                    m.__dict__.pop(name, None)
        return super().train(mode)

    #: set by the trainer for ``optimizer="lazy-adam"``: look the item table up with row-sparse
    #: gradients (only for a model whose :meth:`supports_sparse_rows` is true)
    sparse_rows: bool = False

    def supports_sparse_rows(self) -> bool:
        """Whether ``softmax_inputs``' item vectors are the item table itself and every training
        lookup into it can give a row-sparse gradient (``sparse_rows``)."""
        return False

    #: options whose default changed after runs were saved with this model: option -> the value a
    #: saved configuration without it had (its behaviour then); see :meth:`upgrade_config`
    legacy_defaults: dict = {}

    @classmethod
    def upgrade_config(cls, saved: dict) -> dict:
        """A saved configuration (JSON form) as this version reads it: an option it lacks whose
        default has changed since takes its old value (``legacy_defaults``), so an old checkpoint
        or benchmark run keeps meaning what it meant; every other missing option takes today's
        default where the caller completes it."""
        return {**cls.legacy_defaults, **(saved or {})}

    @classmethod
    def training_identity(cls, config: dict) -> dict:
        """The part of a configuration (``dataclasses.asdict`` / JSON form) that training depends
        on: two configurations with the same identity train the same weights from the same seed,
        and differ only after training (calibration, inference-time components). Options with
        field metadata ``execution_only`` (how, not what, is computed) or ``inference_only`` are
        left out. The benchmark reuses a finished run's training for such a configuration
        (:meth:`mkmsr.training.train.Trainer.refinish`)."""
        skip = {f.name for f in dataclasses.fields(cls.Config)
                if f.metadata.get("execution_only") or f.metadata.get("inference_only")}
        return {k: v for k, v in config.items() if k not in skip}

    # ---- to implement ----------------------------------------------------------------------
    def encode(self, batch: Batch) -> torch.Tensor:
        """(B, d) session representations."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, d) candidate item vectors, row = item_idx (row 0 = padding)."""
        raise NotImplementedError

    # ---- provided --------------------------------------------------------------------------
    def check_batch(self, batch: Batch) -> None:
        """Raise ValueError with a clear message on indices a model cannot take."""
        if batch.items.dim() != 2 or batch.items.shape != batch.ops.shape:
            raise ValueError(f"batch items/ops must both be (B, L); got {tuple(batch.items.shape)} "
                             f"and {tuple(batch.ops.shape)}")
        if batch.items.shape[0] == 0:
            raise ValueError("empty batch: give at least one session")
        if int(batch.lengths.min()) < 1:
            raise ValueError("every session needs at least one micro-behaviour (length >= 1)")
        if int(batch.lengths.max()) > batch.items.shape[1]:
            raise ValueError("a session length exceeds the padded width of the batch")
        lo, hi = int(batch.items.min()), int(batch.items.max())
        if lo < 0 or hi > self.spec.n_items:
            raise ValueError(f"item index out of range [0, {self.spec.n_items}]: got {lo}..{hi} "
                             "(translate external item ids with the dataset's id map first)")
        lo, hi = int(batch.ops.min()), int(batch.ops.max())
        if lo < 0 or hi >= self.spec.n_ops:
            raise ValueError(f"operation index out of range [0, {self.spec.n_ops - 1}]: got {lo}..{hi}")
        if batch.targets is not None and batch.targets.numel():
            lo, hi = int(batch.targets.min()), int(batch.targets.max())
            if lo < 1 or hi > self.spec.n_items:
                raise ValueError(f"target index out of range [1, {self.spec.n_items}]: got {lo}..{hi}")

    def candidate_vectors(self) -> torch.Tensor:
        """(n_items + 1, d) vectors such that ``score = session_vectors(batch) @ candidate_vectors().T``
        (row 0 = padding). Default: ``item_embeddings()``. Servers cache this matrix."""
        return self.item_embeddings()

    def session_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, d) the session side of that dot product. Default: ``encode(batch)``."""
        return self.encode(batch)

    def logits(self, batch: Batch) -> torch.Tensor:
        """(B, n_items) scores of item_idx 1..n_items (column j is item j + 1)."""
        return self.session_vectors(batch) @ self.candidate_vectors()[1:].T

    def score(self, batch: Batch) -> torch.Tensor:
        self.check_batch(batch)
        lg = self.logits(batch)
        pad = torch.full((lg.shape[0], 1), float("-inf"), dtype=lg.dtype, device=lg.device)
        return torch.cat([pad, lg], dim=1)

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        """Softmax cross-entropy over the full catalogue, averaged over the batch."""
        return F.cross_entropy(self.logits(batch), batch.targets - 1)

    def softmax_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(s (B, d), V (n_items + 1, d), row 0 = padding) with ``sr_loss(batch)`` equal to the
        mean of -log softmax(s @ V[1:].T)[b, targets[b] - 1], in training mode too (same dropout).
        Only for models whose ``softmax_loss`` is true; default: ``session_vectors`` and
        ``candidate_vectors``, right for a model that keeps the base ``logits`` and ``sr_loss``."""
        if not self.softmax_loss:
            raise NotImplementedError(f"{type(self).__name__}: its SR loss is not a softmax over dot products")
        return self.session_vectors(batch), self.candidate_vectors()

    def kg_loss(self, triplets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no knowledge task")

    def fit_statistics(self, data: Any) -> None:
        """Hook called once with the PreparedData before training; default: nothing."""


class OutputLayerModel(SessionModel):
    """A model that scores with its own output layer: score(j) = h^T W_j + b_j, with ``self.out``
    an (n_items + 1, d) embedding (row 0 = padding) and ``self.out_bias`` an (n_items + 1,)
    parameter (GRU4REC's and RIB's output layer). The bias rides along as one more coordinate of
    the session and candidate vectors, so servers that cache the item side rank exactly as
    ``logits``."""

    def item_embeddings(self) -> torch.Tensor:
        return self.out.weight

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.encode(batch) @ self.out.weight[1:].T + self.out_bias[1:]

    def session_vectors(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch)
        return torch.cat([h, h.new_ones(h.shape[0], 1)], dim=1)                  # (B, d + 1)

    def candidate_vectors(self) -> torch.Tensor:
        return torch.cat([self.out.weight, self.out_bias[:, None]], dim=1)        # (n_items + 1, d + 1)
