"""Shared machinery of the count-based (non-neural) models: POP, S-POP, item-kNN, V-SKNN, STAN.

They are fitted by ``fit_statistics(data)`` from the **train split only** (never validation or
test) and need no SGD (``trainable = False``). Their statistics live in buffers, so a
checkpoint (``state_dict``) holds them; the buffers' sizes depend on the data, so loading
resizes them to the saved shapes first. Derived structures (sparse matrices) are rebuilt
lazily from the buffers and never saved.

Helpers here turn the prepared split arrays into padded per-session arrays and a batch into
per-item dense rows, all vectorised.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import torch

from ..data.batching import Batch
from .base import SessionModel


class CountModel(SessionModel):
    """Base of the count-based models: ``trainable = False``, statistics in resizable buffers."""

    trainable = False

    def __init__(self, config: Any, spec):
        super().__init__(config, spec)
        self._cache: dict | None = None
        # a parameter-free model still needs one tensor for `.to(device)` to find a device
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if buf is not None and key in state_dict and state_dict[key].shape != buf.shape:
                self._buffers[name] = torch.empty_like(state_dict[key], device=buf.device)
        self._cache = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _apply(self, fn, recurse=True):
        self._cache = None  # derived tensors follow the buffers to a new device lazily
        return super()._apply(fn, recurse)

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} has no statistics: call fit_statistics(data) "
                               "(the training loop does) or load a checkpoint first")

    def score(self, batch: Batch) -> torch.Tensor:
        self._require_fitted()
        return super().score(batch)

    def sr_loss(self, batch: Batch) -> torch.Tensor:
        raise RuntimeError(f"{type(self).__name__} is count-based: it has no loss and is fitted by fit_statistics")


# ---- data helpers ----------------------------------------------------------------------------

def padded_sessions(items: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat split arrays -> ``(padded (N, Lmax) int64 item_idx right-padded with 0, lengths (N,))``."""
    lens = np.diff(offsets).astype(np.int64)
    L = max(int(lens.max()) if lens.size else 1, 1)
    mask = np.arange(L)[None, :] < lens[:, None]
    out = np.zeros((lens.size, L), dtype=np.int64)
    out[mask] = items.astype(np.int64)
    return out, lens


def last_occurrence(padded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, L) bool: True where a position holds the last occurrence of its item in the row."""
    N, L = padded.shape
    pos = torch.arange(1, L + 1, device=padded.device).expand(N, L)
    mask = pos <= lengths[:, None]
    width = int(padded.max()) + 1 if padded.numel() else 1
    last = torch.zeros(N, width, dtype=torch.int64, device=padded.device)
    last.scatter_reduce_(1, padded, torch.where(mask, pos, 0), reduce="amax")
    return mask & (last.gather(1, padded) == pos)


def session_positions(batch: Batch, n_items: int) -> torch.Tensor:
    """(B, n_items + 1) int64: the 1-based position of each item's latest occurrence in each
    session of ``batch`` (0 = not in the session; column 0 is padding and always 0)."""
    B, L = batch.items.shape
    pos = torch.arange(1, L + 1, device=batch.items.device).expand(B, L)
    pos = torch.where(batch.mask, pos, 0)
    out = torch.zeros(B, n_items + 1, dtype=torch.int64, device=batch.items.device)
    out.scatter_reduce_(1, batch.items, pos, reduce="amax")
    out[:, 0] = 0
    return out


def session_counts(batch: Batch, n_items: int) -> torch.Tensor:
    """(B, n_items + 1) float: how often each item occurs in each session (column 0 = 0)."""
    B = batch.items.shape[0]
    out = torch.zeros(B, n_items + 1, dtype=torch.float32, device=batch.items.device)
    out.scatter_add_(1, batch.items, batch.mask.to(torch.float32))
    out[:, 0] = 0
    return out


def train_session_times(data) -> np.ndarray:
    """(N,) float64 start time of each train session (unix seconds, or row order without a clock)."""
    path = data.path / "train.sessions.parquet"
    return pl.read_parquet(path, columns=["start"])["start"].cast(pl.Float64).to_numpy()


def sparse_rows(padded_unique: torch.Tensor, n_cols: int) -> torch.Tensor:
    """(N, U) item_idx (0 = pad, each item at most once per row) -> sparse COO (N, n_cols) of 1.0."""
    r, c = torch.nonzero(padded_unique > 0, as_tuple=True)
    idx = torch.stack([r, padded_unique[r, c]])
    return torch.sparse_coo_tensor(idx, torch.ones(r.numel(), device=padded_unique.device),
                                   (padded_unique.shape[0], n_cols), check_invariants=True).coalesce()


def unique_rows(padded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, L) padded rows -> (N, U) the distinct items of each row (0-padded; U = max distinct)."""
    keep = last_occurrence(padded, lengths)
    counts = keep.sum(dim=1)
    U = max(int(counts.max()) if counts.numel() else 1, 1)
    rank = keep.to(torch.int64).cumsum(dim=1) - 1
    out = torch.zeros(padded.shape[0], U, dtype=padded.dtype, device=padded.device)
    r, c = torch.nonzero(keep, as_tuple=True)
    out[r, rank[r, c]] = padded[r, c]
    return out


def recent_candidates(candidates: torch.Tensor, recency_order: torch.Tensor, sample_size: int) -> torch.Tensor:
    """Keep, per row, only the ``sample_size`` most recent candidate sessions (session-rec's
    ``sampling='recent'``). ``candidates`` (B, N) bool; ``recency_order`` (N,) session indices,
    most recent first. ``sample_size`` 0 keeps all."""
    if sample_size <= 0:
        return candidates
    ordered = candidates[:, recency_order]
    ordered = ordered & (ordered.to(torch.int64).cumsum(dim=1) <= sample_size)
    out = torch.zeros_like(candidates)
    out[:, recency_order] = ordered
    return out


class SessionKNNBase(CountModel):
    """Session-based kNN (session-rec's ``sknn`` family), vectorised over a batch.

    Statistics (buffers): the train sessions as padded item rows, their lengths and start
    times, and item idf. A batch is scored in four steps, each a tensor operation:

    1. candidates: train sessions sharing at least one item with the current session, cut to
       the ``sample_size`` most recent ones (``sampling='recent'``);
    2. similarity (subclass): from per-item weights of the current session;
    3. the ``k`` most similar candidates (ties: the more recent session first);
    4. item scores: every item of a neighbour gets the neighbour's weight (subclass).

    Config fields used here: ``k``, ``sample_size``.
    """

    chunk = 128  # sessions scored at once (bounds the (B, k, L) temporaries)

    def __init__(self, config: Any, spec):
        super().__init__(config, spec)
        self.register_buffer("sess_items", torch.zeros(1, 1, dtype=torch.int64))   # (N, Lmax)
        self.register_buffer("sess_len", torch.ones(1, dtype=torch.int64))         # (N,)
        self.register_buffer("sess_time", torch.zeros(1, dtype=torch.float64))     # (N,) start time
        self.register_buffer("idf", torch.zeros(spec.n_items + 1))                # log(N / supp)

    def fit_statistics(self, data) -> None:
        tr = data.split("train")
        padded, lens = padded_sessions(tr.items, tr.offsets)
        times = train_session_times(data)
        if times.size != lens.size:
            raise ValueError(f"{data.path}: train.sessions.parquet has {times.size} rows for {lens.size} sessions")
        dev = self.fitted.device
        self.sess_items = torch.from_numpy(padded).to(dev)
        self.sess_len = torch.from_numpy(lens).to(dev)
        self.sess_time = torch.from_numpy(times.astype(np.float64)).to(dev)
        uniq = unique_rows(self.sess_items, self.sess_len)
        supp = torch.bincount(uniq[uniq > 0], minlength=self.spec.n_items + 1).to(torch.float32)
        self.idf = torch.where(supp > 0, torch.log(lens.size / supp.clamp(min=1.0)), torch.zeros_like(supp))
        self.fitted.fill_(True)
        self._cache = None

    def _derived(self) -> dict:
        if self._cache is None:
            uniq = unique_rows(self.sess_items, self.sess_len)
            # most recent first; among equal times the later session (higher index) first
            order = torch.argsort(self.sess_time, stable=True).flip(0)
            self._cache = {"uniq": uniq, "S": sparse_rows(uniq, self.spec.n_items + 1),
                           "n_unique": (uniq > 0).sum(dim=1).to(torch.float32), "recency": order,
                           "is_last": last_occurrence(self.sess_items, self.sess_len)}
        return self._cache

    # ---- subclass hooks ------------------------------------------------------------------
    def similarity(self, pos: torch.Tensor, lengths: torch.Tensor, d: dict) -> torch.Tensor:
        """(B, n+1) latest positions, (B,) lengths -> (B, N) similarity to every train session."""
        raise NotImplementedError

    def item_scores(self, pos: torch.Tensor, lengths: torch.Tensor, nb: torch.Tensor, w: torch.Tensor,
                    d: dict) -> torch.Tensor:
        """Neighbours ``nb`` (B, k) with weights ``w`` (B, k) (0 = none) -> (B, n+1) scores."""
        raise NotImplementedError

    # ---- pipeline ------------------------------------------------------------------------
    def neighbours(self, pos: torch.Tensor, lengths: torch.Tensor,
                   exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) neighbour session indices and their similarity (0 where fewer than k).
        ``exclude`` (B,): a train session index per row that must not be a neighbour (the
        session a training prefix is cut from: it holds the prefix's own target)."""
        d = self._derived()
        present = (pos > 0).to(torch.float32)
        overlap = torch.sparse.mm(d["S"], present.T).T                      # (B, N) shared items
        if exclude is not None:
            overlap[torch.arange(overlap.shape[0], device=overlap.device), exclude] = 0.0
        cand = recent_candidates(overlap > 0, d["recency"], int(self.config.sample_size))
        sim = torch.where(cand, self.similarity(pos, lengths, d), torch.zeros_like(overlap))
        # stable sort over sessions ordered most-recent-first: ties go to the more recent session
        by_recency = sim[:, d["recency"]]
        vals, j = torch.sort(by_recency, dim=1, descending=True, stable=True)
        k = min(int(self.config.k), sim.shape[1])
        vals, j = vals[:, :k], j[:, :k]
        return d["recency"][j], torch.where(vals > 0, vals, torch.zeros_like(vals))

    def logits(self, batch: Batch, exclude_own: bool = False) -> torch.Tensor:
        """(B, n_items) scores. ``exclude_own``: leave out of the neighbourhood the train session
        each prefix comes from (``batch.train_sessions``; for models that learn from these
        scores on training prefixes, which would otherwise find their own target there)."""
        outs = []
        beta = float(getattr(self.config, "repeat_boost", 0.0))
        own = batch.train_sessions if exclude_own else None
        for lo in range(0, batch.items.shape[0], self.chunk):
            b = Batch(batch.items[lo:lo + self.chunk], batch.ops[lo:lo + self.chunk],
                      batch.lengths[lo:lo + self.chunk])
            pos = session_positions(b, self.spec.n_items)
            nb, w = self.neighbours(pos, b.lengths, None if own is None else own[lo:lo + self.chunk])
            sc = self.item_scores(pos, b.lengths, nb, w, self._derived())
            if beta:
                sc = remind(sc, pos, beta)
            outs.append(sc[:, 1:])
        return torch.cat(outs)


def remind(scores: torch.Tensor, pos: torch.Tensor, beta: float) -> torch.Tensor:
    """The reminder (repeat boost) of the session-kNN models: scores (B, n+1) divided by each
    row's maximum (so they lie in [0, 1]; a positive scaling keeps the ranking and its ties),
    plus ``beta`` for every item of the session (``pos`` > 0). The same term as MKM-SR+'s
    ``repeat_boost`` (beta * 1[item in the session]), chosen on validation the same way, so
    neither kind of model gets a heuristic the other lacks."""
    top = scores.amax(dim=1, keepdim=True)
    norm = torch.where(top > 0, scores / top.clamp(min=1e-30), scores)
    return norm + beta * (pos > 0).to(scores.dtype)


def scatter_items(n_cols: int, items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum ``weights`` (B, ...) into columns ``items`` (B, ...) of a (B, n_cols) zero matrix."""
    out = torch.zeros(items.shape[0], n_cols, dtype=weights.dtype, device=items.device)
    out.scatter_add_(1, items.reshape(items.shape[0], -1), weights.reshape(items.shape[0], -1))
    out[:, 0] = 0
    return out
