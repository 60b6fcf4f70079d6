"""Next-item recommendations for live sessions, in external ids.

``Recommender.load(checkpoint_or_run_dir).recommend([(item_id, operation), ...], k=20)``
translates external ids to indices (the only place besides ``prepare`` where that happens),
scores every catalogue item with one encoder pass and one matrix-vector product, and returns
the top k without a full sort.

Unknown input never crashes: an event whose item the model has never seen (not even through
knowledge) is dropped; an unknown operation is replaced by the padding operation (a zero
embedding). Both are reported in the response. A session left empty falls back to the
training popularity ranking, and the response says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl
import torch

from .batching import batch_from_sequences
from .checkpoint import load_checkpoint, resolve_checkpoint
from .metrics import topk


@dataclass
class Recommendation:
    """Ranked ``items`` as ``(item_id, score)``, best first, plus what was ignored."""

    items: list[tuple[str, float]]
    ignored_items: list[str] = field(default_factory=list)
    ignored_operations: list[str] = field(default_factory=list)
    fallback: str | None = None  # "popularity" when no event of the session was usable

    def to_dict(self) -> dict:
        return {"items": [{"item_id": i, "score": s} for i, s in self.items],
                "ignored_items": self.ignored_items, "ignored_operations": self.ignored_operations,
                "fallback": self.fallback}


class Recommender:
    """A loaded model plus its id maps. Thread-safe for concurrent ``recommend`` calls."""

    def __init__(self, model, meta: dict, items: pl.DataFrame, operations: pl.DataFrame,
                 device: torch.device | str = "cpu", max_len: int | None = None):
        self.model = model.eval()
        self.meta = meta
        self.device = torch.device(device)
        n = model.spec.n_items
        self.item_ids: list[str | None] = [None] * (n + 1)
        for idx, iid in zip(items["item_idx"].to_list(), items["item_id"].to_list()):
            self.item_ids[idx] = iid
        self.item_index = {iid: idx for idx, iid in enumerate(self.item_ids) if iid is not None}
        self.op_index = dict(zip(operations["op"].to_list(), operations["op_idx"].to_list()))
        pop = np.zeros(n + 1, dtype=np.float32)
        pop[items["item_idx"].to_numpy()] = items["train_count"].to_numpy()
        self.popularity = torch.from_numpy(pop)
        self.max_len = max_len

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", max_len: int | None = None) -> "Recommender":
        path = resolve_checkpoint(path)
        model, meta = load_checkpoint(path, device)
        items = pl.read_parquet(path / "items.parquet")
        ops = pl.read_parquet(path / "operations.parquet")
        if max_len is None:
            max_len = (meta.get("train_config") or {}).get("max_len")
        return cls(model, meta, items, ops, device, max_len)

    @property
    def n_items(self) -> int:
        return self.model.spec.n_items

    def _translate(self, events: Sequence[tuple[str, str]]):
        items, ops, bad_items, bad_ops = [], [], [], []
        for item, op in events:
            idx = self.item_index.get(str(item))
            if idx is None:
                bad_items.append(str(item))
                continue
            o = self.op_index.get(str(op))
            if o is None:
                bad_ops.append(str(op))
                o = 0
            items.append(idx)
            ops.append(o)
        return items, ops, bad_items, bad_ops

    def _mask(self, scores: torch.Tensor, exclude: Iterable[str] | None, candidates: Iterable[str] | None) -> None:
        if candidates is not None:
            allowed = torch.zeros(scores.shape[-1], dtype=torch.bool)
            idx = [self.item_index[c] for c in candidates if c in self.item_index]
            allowed[idx] = True
            scores.masked_fill_(~allowed.to(scores.device), float("-inf"))
        if exclude:
            idx = [self.item_index[c] for c in exclude if c in self.item_index]
            if idx:
                scores[..., idx] = float("-inf")
        scores[..., 0] = float("-inf")

    @torch.inference_mode()
    def recommend_batch(self, sessions: Sequence[Sequence[tuple[str, str]]], k: int = 20,
                        exclude: Sequence[Iterable[str] | None] | None = None,
                        candidates: Sequence[Iterable[str] | None] | None = None) -> list[Recommendation]:
        """Recommend for many sessions at once (one padded encoder pass for all of them)."""
        if k < 1:
            raise ValueError("k must be >= 1")
        tr = [self._translate(s) for s in sessions]
        usable = [i for i, t in enumerate(tr) if t[0]]
        out: list[Recommendation | None] = [None] * len(sessions)
        scores_all = torch.empty(0)
        if usable:
            batch = batch_from_sequences([tr[i][0] for i in usable], [tr[i][1] for i in usable], self.max_len)
            scores_all = self.model.score(batch.to(self.device)).float()
        for row, i in enumerate(usable):
            self._fill(out, i, tr[i], scores_all[row].clone(), k, exclude, candidates, None)
        for i, t in enumerate(tr):
            if out[i] is None:
                self._fill(out, i, t, self.popularity.clone().to(self.device), k, exclude, candidates, "popularity")
        return out  # type: ignore[return-value]

    def _fill(self, out, i, t, scores, k, exclude, candidates, fallback) -> None:
        self._mask(scores, exclude[i] if exclude else None, candidates[i] if candidates else None)
        n_valid = int(torch.isfinite(scores).sum())
        vals, idx = topk(scores[None], min(k, max(n_valid, 1)))
        pairs = [(self.item_ids[j], float(v)) for v, j in zip(vals[0].tolist(), idx[0].tolist())
                 if np.isfinite(v) and self.item_ids[j] is not None]
        out[i] = Recommendation(pairs, t[2], t[3], fallback)

    def recommend(self, events: Sequence[tuple[str, str]], k: int = 20, exclude: Iterable[str] | None = None,
                  candidates: Iterable[str] | None = None) -> Recommendation:
        """Top-k ``(item_id, score)`` for one session of ``(item_id, operation)`` events."""
        return self.recommend_batch([events], k, [exclude] if exclude else None,
                                    [candidates] if candidates is not None else None)[0]


def parse_session(text: str) -> list[tuple[str, str]]:
    """``"123:1,456:2"`` -> ``[("123", "1"), ("456", "2")]``. The operation is after the last ':'."""
    events = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        item, sep, op = part.rpartition(":")
        if not sep or not item or not op:
            raise ValueError(f"bad micro-behaviour {part!r}: expected item:operation, e.g. 123:1")
        events.append((item, op))
    if not events:
        raise ValueError("empty session: expected item:operation pairs separated by commas")
    return events
