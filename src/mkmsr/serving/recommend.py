"""Next-item recommendations for live sessions, in external ids.

``Recommender.load(checkpoint_or_run_dir).recommend([(item_id, operation), ...], k=20)``
translates external ids to indices (the only place besides ``prepare`` where that happens),
scores every catalogue item with one small encoder pass and one matrix-vector product
against the item matrix (kept contiguous), and returns the top k with ``torch.topk`` (no
full sort). ``recommend_batch`` does the same for many sessions with one padded encoder pass
and one matrix product per chunk of sessions.

Id spaces: callers speak external ids only (``item_id`` and ``operation`` as the prepared
data spells them, compared as stripped strings; ints are accepted and turned into strings).
Items known only through knowledge (cold-start items, ``train_count`` 0 in the checkpoint's
``items.parquet``) are ordinary catalogue items: valid in a session, as candidates and in
the results.

Unknown input never crashes:

* an event whose item the model has never seen (not even through knowledge) is dropped and
  listed in ``ignored_items``;
* an unknown operation is replaced by the padding operation (a zero embedding) and listed in
  ``ignored_operations`` (an event with operation ``None`` also gets the padding operation,
  without being reported, unless the data had no operations at all, see ``default_op``);
* unknown ``candidates`` are listed in ``ignored_candidates``; unknown ``exclude`` ids are
  irrelevant and silently skipped;
* a session left without events falls back to the training popularity ranking (score =
  the item's number of training events) and ``fallback`` says ``"popularity"``.

Scores are the model's logits sᵀiⱼ (higher is better; comparable within one response).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import polars as pl
import torch

from ..data.batching import batch_from_sequences
from ..checkpoint import load_checkpoint, resolve_checkpoint
from ..errors import DataError
from .ann import (CACHE_DIR, IndexConfig, IndexUnavailable, as_index_config, check_dot_product_form,
                  dot_product_form, load_or_build_index)

log = logging.getLogger(__name__)

Event = tuple[Any, Any]  # (item_id, operation), external ids


@dataclass
class Recommendation:
    """Ranked ``items`` as ``(item_id, score)``, best first, plus what was ignored.

    ``fallback`` is ``"popularity"`` when no event of the session was usable (the scores are
    then training event counts), else None.
    """

    items: list[tuple[str, float]]
    ignored_items: list[str] = field(default_factory=list)
    ignored_operations: list[str] = field(default_factory=list)
    ignored_candidates: list[str] = field(default_factory=list)
    fallback: str | None = None

    def to_dict(self) -> dict:
        return {"items": [{"item_id": i, "score": s} for i, s in self.items],
                "ignored_items": self.ignored_items, "ignored_operations": self.ignored_operations,
                "ignored_candidates": self.ignored_candidates, "fallback": self.fallback}


@dataclass
class _Prepared:
    """One session's request, translated to indices (internal to ``recommend_batch``)."""

    items: list[int]
    ops: list[int]
    k: int
    exclude: list[int]
    candidates: torch.Tensor | None  # (c,) int64 unique item_idx, or None = whole catalogue
    ignored_items: list[str]
    ignored_ops: list[str]
    ignored_candidates: list[str]


def _key(x: Any) -> str:
    return str(x).strip()


def _finite(obj: Any) -> Any:
    """NaN / inf (e.g. metrics over zero cold samples) -> None, so the result is strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


class Recommender:
    """A loaded model plus its id maps. Immutable after construction, so concurrent
    ``recommend`` calls from several threads are safe.

    ``item_matrix`` (n_items + 1, d) float32, contiguous, row = item_idx, is the candidate
    table the session vector is multiplied with; models that do not expose item embeddings
    are scored through their ``score`` (the model contract) instead.

    ``scan`` chooses how one session (a batch of one) is ranked over the whole catalogue:

    * ``"float32"`` (default): one float32 product over the catalogue.
    * ``"bfloat16"``: the matrix-vector product reads a bfloat16 copy of
      the item matrix (half the memory traffic; on a 139k x 100 catalogue the product is
      memory-bound), then every item whose float32 score could still reach the top k under a
      bound on the bfloat16 error is rescored in float32 and the top k is taken from those.
      The result is the float32 ranking: an item outside the rescored set scores below k
      items inside it. The bound: ``|s.e - a| <= ||s|| max||e - bf16(e)|| + (||s - bf16(s)||
      + 2^-8 ||bf16(s)||) max||bf16(e)|| + 2^-7 |a|``, where ``a`` is the bfloat16 product;
      torch's bfloat16 product on CPU stays within half of each of the last two terms (measured,
      and tested against the float32 ranking). It lowers the median on one thread (4.8 vs
      6.1 ms at 139k items) but doubles the p99 (10.2 vs 6.5 ms; 6.1 vs 3.9 ms on two threads:
      docs/performance.md), because a call whose bound leaves too many items to rescore falls
      back to the float32 product after the scan — hence float32 is the default.

    Batches of several sessions use one float32 matrix product (``_scan_top`` handles several
    rows, but on this machine the float32 matrix product was faster for batches).

    ``index`` (``"auto"`` by default, or ``"exact"``, ``"hnsw"``, ``"faiss-hnsw"``, ``"flat"``, or
    an :class:`~mkmsr.serving.ann.IndexConfig`) chooses between that exact scan and an
    approximate nearest-neighbour index built here, at construction, over the item vectors:
    ``auto`` builds one on the CPU from ``IndexConfig.threshold`` items up (250k) and only for
    models whose scores are an inner product (plus MKM-SR+'s repeat boost). With an index, a
    session's top k is chosen among the retrieved items and the session's own items, all
    rescored exactly (:mod:`mkmsr.serving.ann`); ``candidates`` are always scored exactly.
    The index is saved to the checkpoint's ``index-cache/`` folder (or ``IndexConfig.cache_dir``)
    and read back at the next load with the same item vectors and graph parameters.
    ``index_info`` (and ``describe()["index"]``) says what is served: ``source`` (``built`` or
    ``cache``), ``build_seconds`` (for a cached index: its original build), ``load_seconds``
    (reading it from the cache, its checks included; None when built) and ``cache`` (``dir``,
    ``status`` ``loaded`` / ``saved`` / ``unsaved`` / ``off``, and why it was built when it was).
    """

    #: bfloat16 error model of the scan (see the class docstring)
    SCAN_REL, SCAN_ABS = 2.0 ** -7, 2.0 ** -8

    def __init__(self, model, meta: dict, items: pl.DataFrame, operations: pl.DataFrame,
                 device: torch.device | str = "cpu", max_len: int | None = None, scan: str | None = None,
                 index: str | IndexConfig | None = None):
        self.model = model.eval()
        self.meta = meta
        self.device = torch.device(device)
        n = model.spec.n_items
        idx = items["item_idx"].to_numpy()
        if idx.size != n or idx.min(initial=1) < 1 or idx.max(initial=1) > n or np.unique(idx).size != n:
            raise DataError(f"the item map does not match the model: {idx.size} rows for {n} items, "
                            f"indices must be exactly 1..{n}", file=meta.get("path"))
        ids = np.empty(n + 1, dtype=object)
        ids[idx] = items["item_id"].cast(pl.Utf8).to_list()
        self.item_ids = ids  # (n_items + 1,) external id of each item_idx; [0] = None (padding)
        self.item_index: dict[str, int] = dict(zip(ids[idx].tolist(), idx.tolist()))
        op_idx = operations["op_idx"].to_list()
        if op_idx and (min(op_idx) < 1 or max(op_idx) >= model.spec.n_ops):
            raise DataError(f"the operation map does not match the model (indices must lie in 1..{model.spec.n_ops - 1})",
                            file=meta.get("path"))
        self.op_index: dict[str, int] = dict(zip(operations["op"].cast(pl.Utf8).to_list(), op_idx))
        # data without an operation column was prepared with the single operation "_"
        self.default_op = self.op_index.get("_", 0) if len(self.op_index) == 1 else 0
        counts = np.zeros(n + 1, dtype=np.float32)
        counts[idx] = items["train_count"].to_numpy()
        self.train_count = counts  # (n_items + 1,) float32; 0 for cold-start items
        pop = torch.from_numpy(counts.copy())
        pop[0] = float("-inf")
        self.popularity = pop.to(self.device)  # (n_items + 1,) fallback scores
        self.max_len = max_len
        try:
            mat = model.candidate_vectors().detach()
            self.item_matrix: torch.Tensor | None = mat.to(self.device, torch.float32).contiguous()
        except NotImplementedError:
            self.item_matrix = None
        self.scan = scan or "float32"
        if self.scan not in ("bfloat16", "float32"):
            raise ValueError(f"scan must be 'bfloat16' or 'float32', got {self.scan!r}")
        self._scan_matrix = None
        if self.scan == "bfloat16" and self.item_matrix is not None:
            m16 = self.item_matrix.to(torch.bfloat16).contiguous()   # (n_items + 1, d)
            self._scan_matrix = m16
            self._scan_delta = float((self.item_matrix - m16.float()).norm(dim=1).max())
            self._scan_norm = float(m16.float().norm(dim=1).max())
        self.index_config = as_index_config(index)
        self.index = None
        self._index_matrix: torch.Tensor | None = None  # (n_items + 1, d) float32, the rescoring side
        self._index_boost = 0.0  # beta: added to the score of the session's own items (MKM-SR+)
        self.index_info: dict = {"kind": "exact", "requested": self.index_config.kind}
        self._build_index()

    @torch.inference_mode()  # the model's cached scoring vectors serve as the rescoring matrix: no copy
    def _build_index(self) -> None:
        cfg = self.index_config
        kind = cfg.resolve(self.n_items, self.device)
        if kind == "exact":
            if cfg.kind == "auto":
                self.index_info["reason"] = (f"{self.n_items} items < threshold {cfg.threshold}"
                                             if self.device.type == "cpu" else f"the exact scan on {self.device.type}")
            return
        try:
            V, beta = dot_product_form(self.model)
            V = V.to(self.device, torch.float32).contiguous()
            # two probe sessions (one with a repeated item) against the model's own scores
            op = next(iter(self.op_index.values()), 0)
            two = min(2, self.n_items)
            probe = batch_from_sequences([[1], [two, 1, two]], [[op], [op] * 3]).to(self.device)
            check_dot_product_form(self.model, V, beta, probe)
            index, cache = load_or_build_index(kind, V, cfg, self._index_cache_dir())
        except IndexUnavailable as exc:
            if cfg.kind != "auto":
                raise
            log.warning("serving %s with the exact scan: %s", self.model_name, exc)
            self.index_info["reason"] = str(exc)
            return
        self.index, self._index_matrix, self._index_boost = index, V, beta
        self.index_info = {**index.describe(), "requested": cfg.kind, "repeat_boost": beta,
                           "margin": cfg.margin, "max_retrieve": cfg.max_retrieve, "cache": cache}

    def _index_cache_dir(self) -> Path | None:
        """Where the index is cached: ``IndexConfig.cache_dir``, else the checkpoint's
        ``index-cache/`` (None for a model that was not loaded from a checkpoint)."""
        if self.index_config.cache_dir:
            return Path(self.index_config.cache_dir)
        path = self.meta.get("path")
        return Path(path) / CACHE_DIR if path else None

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", max_len: int | None = None,
             scan: str | None = None, index: str | IndexConfig | None = None,
             overrides: dict | None = None) -> "Recommender":
        """Load a checkpoint directory (or a run directory: its ``best/`` checkpoint).

        ``max_len`` (default: the training run's ``max_len``) keeps only the latest events of
        a session, as in training. ``index``: see the class docstring (default ``auto``).
        Raises DataError / RuntimeError on a broken checkpoint, IndexUnavailable when an
        explicitly requested index cannot serve this model or its library is missing.
        ``overrides``: inference-time model options changed at load (e.g. MKM-SR-RN's
        ``hurdle_shift``; :func:`mkmsr.checkpoint.load_checkpoint`), shown by :meth:`describe`.
        """
        path = resolve_checkpoint(path)
        model, meta = load_checkpoint(path, device, overrides)
        for name in ("items.parquet", "operations.parquet"):
            if not (path / name).exists():
                raise DataError(f"checkpoint lacks its id map {name}", file=str(path))
        items = pl.read_parquet(path / "items.parquet")
        ops = pl.read_parquet(path / "operations.parquet")
        if max_len is None:
            max_len = (meta.get("train_config") or {}).get("max_len")
        return cls(model, meta, items, ops, device, max_len, scan, index)

    # ---- introspection -----------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self.model.spec.n_items

    @property
    def model_name(self) -> str:
        return str(self.meta.get("model"))

    def is_cold(self, item_id: Any) -> bool:
        """True for a catalogue item with no training event (known only through knowledge)."""
        i = self.item_index.get(_key(item_id))
        return i is not None and self.train_count[i] == 0

    def describe(self) -> dict:
        """What is being served: model name and config, the dataset manifest, the metrics."""
        path = Path(self.meta.get("path", "."))
        manifest = None
        if (path / "dataset_manifest.json").exists():
            manifest = json.loads((path / "dataset_manifest.json").read_text())
            manifest.pop("files", None)
        run_metrics = None
        if (path.parent / "metrics.json").exists():  # a run directory's best/ checkpoint
            try:
                run_metrics = json.loads((path.parent / "metrics.json").read_text())
            except (OSError, ValueError):
                run_metrics = None
        return _finite({
            "model": self.model_name, "checkpoint": str(path), "config": self.meta.get("config"),
            "overrides": self.meta.get("overrides") or {},
            "spec": self.meta.get("spec"), "mkmsr_version": self.meta.get("mkmsr_version"),
            "catalogue": {"items": self.n_items, "cold_items": int((self.train_count[1:] == 0).sum()),
                          "operations": sorted(self.op_index, key=self.op_index.get)},
            "max_len": self.max_len, "epoch": self.meta.get("epoch"), "index": self.index_info,
            "metrics": {"valid_at_checkpoint": self.meta.get("valid"),
                        "run": ({k: run_metrics.get(k) for k in ("best_epoch", "valid", "test", "seed")}
                                if run_metrics else None)},
            "dataset": {**(self.meta.get("dataset") or {}), "manifest": manifest},
        })

    @torch.inference_mode()
    def index_recall(self, sessions: Sequence[Sequence[Event]], k: int = 20) -> float:
        """Recall@k of the index path against the exact ranking over ``sessions`` (external ids;
        sessions without a known item are skipped): the mean share of each session's exact top k
        (by the inner product, before any repeat boost) that retrieving ``k + margin`` items and
        rescoring them exactly recovers. 1.0 without an index. Measure it on your own sessions:
        recall depends on how session vectors lie among the item vectors."""
        from .ann import recall_at_k

        if self.index is None:
            return 1.0
        tr = [self._translate(s, f"session {i}") for i, s in enumerate(sessions)]
        tr = [(t[0][-self.max_len:] if self.max_len else t[0], t[1][-self.max_len:] if self.max_len else t[1])
              for t in tr if t[0]]
        if not tr:
            raise ValueError("index_recall: no session has a known item")
        vecs = []
        for c0 in range(0, len(tr), 256):
            part = tr[c0:c0 + 256]
            batch = batch_from_sequences([t[0] for t in part], [t[1] for t in part]).to(self.device)
            vecs.append(self.model.session_vectors(batch).float())
        return recall_at_k(self.index, self._index_matrix, torch.cat(vecs), k, self.index_config.margin)

    @torch.inference_mode()
    def self_check(self) -> None:
        """Raise ValueError when the loaded weights cannot serve (non-finite item vectors or
        scores); the server runs this before it swaps a new checkpoint in."""
        if self.item_matrix is not None and not bool(torch.isfinite(self.item_matrix[1:]).all()):
            raise ValueError("the item embedding matrix holds NaN or infinite values")
        op = next(iter(self.op_index.values()), 0)
        batch = batch_from_sequences([[1]], [[op]]).to(self.device)
        scores = self.model.score(batch)
        if not bool(torch.isfinite(scores[0, 1:]).all()):
            raise ValueError("the model scores a one-event session with NaN or infinite values")

    # ---- translation (external ids -> indices) -------------------------------------------------
    def _translate(self, events: Sequence[Event], where: str):
        if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
            raise ValueError(f"{where}: events must be a sequence of (item_id, operation) pairs, "
                             f"got {type(events).__name__}")
        items, ops, bad_items, bad_ops = [], [], [], []
        for j, ev in enumerate(events):
            if isinstance(ev, (str, bytes)) or not isinstance(ev, Sequence) or len(ev) != 2:
                raise ValueError(f"{where}, event {j}: expected an (item_id, operation) pair, got {ev!r}")
            item, op = ev
            key = _key(item)
            idx = self.item_index.get(key)
            if idx is None:
                bad_items.append(key)
                continue
            if op is None:
                o = self.default_op
            else:
                o = self.op_index.get(_key(op))
                if o is None:
                    bad_ops.append(_key(op))
                    o = 0
            items.append(idx)
            ops.append(o)
        return items, ops, bad_items, bad_ops

    def _prepare(self, i: int, events, k: int, exclude, candidates, exclude_seen: bool) -> _Prepared:
        where = f"session {i}"
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"{where}: k must be an integer >= 1, got {k!r}")
        items, ops, bad_items, bad_ops = self._translate(events, where)
        if self.max_len and len(items) > self.max_len:
            items, ops = items[-self.max_len:], ops[-self.max_len:]
        ex = [j for j in (self.item_index.get(_key(c)) for c in (exclude or ())) if j is not None]
        if exclude_seen:
            ex.extend(items)
        cand, bad_cand = None, []
        if candidates is not None:
            if isinstance(candidates, (str, bytes)):
                raise ValueError(f"{where}: candidates must be a list of item ids, not a string")
            known = []
            for c in candidates:
                j = self.item_index.get(_key(c))
                if j is None:
                    bad_cand.append(_key(c))
                else:
                    known.append(j)
            cand = torch.unique(torch.tensor(known, dtype=torch.int64)).to(self.device)
        return _Prepared(items, ops, int(k), ex, cand, bad_items, bad_ops, bad_cand)

    # ---- scoring --------------------------------------------------------------------------------
    @torch.inference_mode()
    def recommend_batch(self, sessions: Sequence[Sequence[Event]], k: int | Sequence[int] = 20,
                        exclude: Sequence[Iterable[Any] | None] | None = None,
                        candidates: Sequence[Iterable[Any] | None] | None = None,
                        exclude_seen: bool | Sequence[bool] = False, chunk_size: int = 128) -> list[Recommendation]:
        """Recommend for many sessions: one padded encoder pass and one matrix product per chunk.

        sessions     list of sessions, each a sequence of ``(item_id, operation)`` external ids
        k            results per session (an int for all, or one per session)
        exclude      per session: item ids never to recommend (or None)
        candidates   per session: only rank these item ids (or None = the whole catalogue)
        exclude_seen per session (or for all): also exclude the session's own items

        Returns one :class:`Recommendation` per session, in order. Raises ValueError (naming
        the session and event) on structurally bad input; unknown ids are reported, not raised.
        """
        n = len(sessions)
        ks = [k] * n if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else list(k)
        if len(ks) != n:
            raise ValueError(f"k has {len(ks)} entries for {n} sessions")
        for name, per in (("exclude", exclude), ("candidates", candidates)):
            if per is not None and len(per) != n:
                raise ValueError(f"{name} has {len(per)} entries for {n} sessions (give one per session, or None)")
        seen = [exclude_seen] * n if isinstance(exclude_seen, bool) else list(exclude_seen)
        prep = [self._prepare(i, s, ks[i], exclude[i] if exclude else None,
                              candidates[i] if candidates is not None else None, seen[i])
                for i, s in enumerate(sessions)]
        out: list[Recommendation | None] = [None] * n
        usable = [i for i, p in enumerate(prep) if p.items]
        for c0 in range(0, len(usable), max(1, chunk_size)):
            rows = usable[c0:c0 + chunk_size]
            self._score_rows([prep[i] for i in rows], rows, out)
        empty = [i for i, p in enumerate(prep) if not p.items]
        if empty:
            self._rank([prep[i] for i in empty], empty, out, None, fallback=True)
        return out  # type: ignore[return-value]

    def _score_rows(self, prep: list[_Prepared], rows: list[int], out: list) -> None:
        batch = batch_from_sequences([p.items for p in prep], [p.ops for p in prep]).to(self.device)
        if self.index is not None:
            session_vecs = self.model.session_vectors(batch).float()   # (b, d)
            rest = self._rank_index(prep, rows, out, session_vecs)
            if not rest:
                return
            if self.item_matrix is not None:
                self._rank([prep[r] for r in rest], [rows[r] for r in rest], out, session_vecs[rest], fallback=False)
                return
            # scores with per-session terms: the exact path is the model's own score
            prep, rows = [prep[r] for r in rest], [rows[r] for r in rest]
            batch = batch_from_sequences([p.items for p in prep], [p.ops for p in prep]).to(self.device)
        if self.item_matrix is not None:
            session_vecs = self.model.session_vectors(batch).float()  # (b, d)
            self._rank(prep, rows, out, session_vecs, fallback=False)
        else:
            scores = self.model.score(batch).float()                 # (b, n_items + 1)
            self._rank(prep, rows, out, scores, fallback=False, full_scores=True)

    def _rank(self, prep: list[_Prepared], rows: list[int], out: list, x: torch.Tensor | None,
              fallback: bool, full_scores: bool = False) -> None:
        """Top-k of each row. ``x`` is (b, d) session vectors, or (b, n_items + 1) scores with
        ``full_scores``, or None with ``fallback`` (popularity)."""
        full = [r for r, p in enumerate(prep) if p.candidates is None]
        # the scan pays off for one session (a memory-bound matrix-vector product); a batch's
        # float32 matrix product was faster here (docs/performance.md)
        if len(full) == 1 and not fallback and not full_scores and self._scan_matrix is not None:
            sel = x[full] if len(full) < x.shape[0] else x
            tops = self._scan_top(sel, [prep[f].k for f in full], [prep[f].exclude for f in full])
            if tops is not None:
                for f, (vals, idx) in zip(full, tops):
                    self._emit(out, rows[f], prep[f], vals, idx, fallback)
                full = []
        if full:
            if fallback:
                scores = self.popularity.expand(len(full), -1).clone()
            elif full_scores:
                scores = x[full]
            else:
                sel = x[full] if len(full) < x.shape[0] else x
                scores = sel @ self.item_matrix.T                    # (b, n_items + 1)
                scores[:, 0] = float("-inf")
            ex_r = [r for r, f in enumerate(full) if prep[f].exclude]
            if ex_r:
                ri = torch.tensor([r for r in ex_r for _ in prep[full[r]].exclude], dtype=torch.int64)
                ci = torch.tensor([j for r in ex_r for j in prep[full[r]].exclude], dtype=torch.int64)
                scores[ri.to(scores.device), ci.to(scores.device)] = float("-inf")
            kmax = min(max(prep[f].k for f in full), scores.shape[1])
            vals, idx = torch.topk(scores, kmax, dim=1, largest=True, sorted=True)
            vals, idx = vals.cpu().tolist(), idx.cpu().tolist()
            for r, f in enumerate(full):
                self._emit(out, rows[f], prep[f], vals[r], idx[r], fallback)
        for r, p in enumerate(prep):
            if p.candidates is None:
                continue
            cand = p.candidates
            if fallback:
                s = self.popularity[cand]
            elif full_scores:
                s = x[r, cand]
            else:
                s = self.item_matrix[cand] @ x[r]                    # (c,)
            if p.exclude and cand.numel():
                s = s.masked_fill(torch.isin(cand, torch.tensor(p.exclude, device=cand.device)), float("-inf"))
            kk = min(p.k, int(cand.numel()))
            if kk == 0:
                self._emit(out, rows[r], p, [], [], fallback)
                continue
            vals, pos = torch.topk(s, kk, largest=True, sorted=True)
            self._emit(out, rows[r], p, vals.cpu().tolist(), cand[pos].cpu().tolist(), fallback)

    def _rank_index(self, prep: list[_Prepared], rows: list[int], out: list, S: torch.Tensor) -> list[int]:
        """Rank rows without ``candidates`` from the index (module :mod:`mkmsr.serving.ann`);
        returns the positions in ``prep`` left to the exact path: rows with candidates, rows
        that need more than ``max_retrieve`` neighbours, rows left with fewer than k items."""
        cfg = self.index_config
        rest, todo, want = [], [], []
        for r, p in enumerate(prep):
            kk = p.k + len(set(p.exclude)) + cfg.margin
            if p.candidates is not None or kk > cfg.max_retrieve or p.k >= self.n_items:
                rest.append(r)
            else:
                todo.append(r)
                want.append(kk)
        if not todo:
            return rest
        threads = 1 if len(todo) == 1 else torch.get_num_threads()
        labels = self.index.search(S[todo].cpu().numpy(), max(want), threads)    # (b, k') item_idx, -1 = none
        V, beta = self._index_matrix, self._index_boost
        for j, r in enumerate(todo):
            p = prep[r]
            lab = labels[j, :want[j]]
            lab = lab[lab > 0]
            if beta:  # the session's own items may owe their place to the boost: score them too
                lab = np.concatenate([lab, np.asarray(p.items, dtype=np.int64)])
            lab = np.unique(lab)
            if p.exclude:
                lab = lab[~np.isin(lab, np.asarray(p.exclude, dtype=np.int64))]
            if lab.size < p.k:
                rest.append(r)
                continue
            cand = torch.from_numpy(lab).to(self.device)
            s = V[cand] @ S[r]                                              # (c,) exact float32 scores
            if beta:
                s = s + beta * torch.isin(cand, torch.tensor(p.items, device=cand.device)).to(s.dtype)
            vals, pos = torch.topk(s, p.k, largest=True, sorted=True)
            self._emit(out, rows[r], p, vals.cpu().tolist(), cand[pos].cpu().tolist(), False)
        return sorted(rest)

    def _scan_top(self, S: torch.Tensor, ks: list[int], excludes: list[list[int]]
                  ) -> list[tuple[list[float], list[int]]] | None:
        """Float32 top-k of session vectors ``S`` (b, d) via the bfloat16 scan (class docstring).

        Returns per row (scores, item_idx) best first, or None when the float32 product is the
        better way (a row with fewer than k rankable items, or a bound that leaves too many
        items to rescore).
        """
        b = S.shape[0]
        S16 = S.to(torch.bfloat16)
        if b == 1:  # a matrix-vector product: the memory-bound case the scan is for
            A = torch.mv(self._scan_matrix, S16[0])[None]           # (1, n_items + 1) bfloat16
        else:
            A = S16 @ self._scan_matrix.T                            # (b, n_items + 1) bfloat16
        A[:, 0] = float("-inf")
        ex_r = [r for r in range(b) if excludes[r]]
        if ex_r:
            ri = torch.tensor([r for r in ex_r for _ in excludes[r]], dtype=torch.int64, device=A.device)
            ci = torch.tensor([j for r in ex_r for j in excludes[r]], dtype=torch.int64, device=A.device)
            A[ri, ci] = float("-inf")
        kmax = min(max(ks), A.shape[1])
        # the rescored items are few (tens for k = 20): take them from a wider top-k of the
        # bfloat16 scores, which also gives each row's k-th best score
        wide = min(A.shape[1], 4 * kmax + 64)
        top_v, top_i = torch.topk(A, wide, dim=1, largest=True, sorted=True)          # (b, wide)
        top_v = top_v.float()
        vk = top_v.gather(1, torch.tensor([[min(k, kmax) - 1] for k in ks], device=A.device))[:, 0]
        if not bool(torch.isfinite(vk).all()):
            return None
        S16f = S16.float()
        slack = (S.norm(dim=1) * self._scan_delta
                 + ((S - S16f).norm(dim=1) + self.SCAN_ABS * S16f.norm(dim=1)) * self._scan_norm)   # (b,)
        rel = self.SCAN_REL
        floor = vk - slack - rel * vk.abs()  # k items of the row score at least this in float32
        # an item can reach the floor iff a + slack + rel|a| >= floor; a + rel|a| is increasing
        # in a, so that is one threshold per row on the bfloat16 scores (a hair lower for rounding)
        y = floor - slack
        thr = torch.where(y >= 0, y / (1 + rel), y / (1 - rel))
        thr = thr - 1e-6 * (thr.abs() + slack)
        if wide < A.shape[1] and bool((top_v[:, -1] >= thr).any()):
            return None  # more items could reach the top k than the wide top-k holds
        mask = top_v >= thr[:, None]                                 # (b, wide); -inf never
        r_idx, pos = mask.nonzero(as_tuple=True)                     # row-major: rows in order
        c_idx = top_i[r_idx, pos]
        counts = torch.bincount(r_idx, minlength=b).tolist()
        exact = (self.item_matrix[c_idx] * S[r_idx]).sum(dim=1)      # float32 scores of the rescored items
        out, start = [], 0
        for r, n in enumerate(counts):
            seg, cols = exact[start:start + n], c_idx[start:start + n]
            start += n
            vals, pos = torch.topk(seg, min(ks[r], n), sorted=True)
            out.append((vals.tolist(), cols[pos].tolist()))
        return out

    def _emit(self, out: list, i: int, p: _Prepared, vals: list[float], idx: list[int], fallback: bool) -> None:
        ids = self.item_ids
        pairs = [(ids[j], v) for v, j in zip(vals[:p.k], idx[:p.k]) if v != float("-inf") and j > 0]
        out[i] = Recommendation(pairs, p.ignored_items, p.ignored_ops, p.ignored_candidates,
                                "popularity" if fallback else None)

    def recommend(self, events: Sequence[Event], k: int = 20, exclude: Iterable[Any] | None = None,
                  candidates: Iterable[Any] | None = None, exclude_seen: bool = False) -> Recommendation:
        """Top-k ``(item_id, score)`` for one session of ``(item_id, operation)`` events
        (external ids), best first. ``exclude``: item ids never to return; ``candidates``:
        rank only these item ids; ``exclude_seen``: also drop the session's own items."""
        if candidates is not None and not isinstance(candidates, (str, bytes)):
            candidates = list(candidates)
        return self.recommend_batch([events], k, [exclude], [candidates], exclude_seen)[0]


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


# --------------------------------------------------------------------------------------------
# offline batch scoring: a file of sessions in, JSONL out
# --------------------------------------------------------------------------------------------

SESSION_KEYS = ("session_id", "events", "k", "exclude", "candidates", "exclude_seen")


@dataclass
class SessionRequest:
    """One session to score, as read from a file (external ids)."""

    session_id: str
    events: list[Event]
    k: int | None = None
    exclude: list[Any] | None = None
    candidates: list[Any] | None = None
    exclude_seen: bool | None = None


def _jsonl_event(ev: Any, file: str, row: int, j: int) -> Event:
    if isinstance(ev, dict):
        extra = set(ev) - {"item_id", "operation"}
        if "item_id" not in ev or extra:
            raise DataError(f"event {j} must be {{\"item_id\": ..., \"operation\": ...}}"
                            + (f", unknown key {sorted(extra)[0]!r}" if extra else ", item_id missing"),
                            file=file, row=row, column="events")
        return ev["item_id"], ev.get("operation")
    if isinstance(ev, list) and len(ev) == 2:
        return ev[0], ev[1]
    raise DataError(f"event {j} is {ev!r}", file=file, row=row, column="events",
                    expected='{"item_id": ..., "operation": ...} or [item_id, operation]')


def _read_jsonl(path: Path) -> Iterable[SessionRequest]:
    with open(path, encoding="utf-8") as fh:
        for row, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise DataError(f"not valid JSON ({exc})", file=str(path), row=row,
                                expected="one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError("a line must be a JSON object", file=str(path), row=row,
                                expected='{"events": [...], ...}')
            extra = sorted(set(obj) - set(SESSION_KEYS))
            if extra:
                raise DataError(f"unknown key {extra[0]!r}", file=str(path), row=row, column=extra[0],
                                expected=", ".join(SESSION_KEYS))
            evs = obj.get("events")
            if not isinstance(evs, list):
                raise DataError("events missing or not a list", file=str(path), row=row, column="events",
                                expected="a list of events")
            k = obj.get("k")
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
                raise DataError(f"k is {k!r}", file=str(path), row=row, column="k", expected="an integer >= 1")
            for name in ("exclude", "candidates"):
                if obj.get(name) is not None and not isinstance(obj[name], list):
                    raise DataError(f"{name} is not a list", file=str(path), row=row, column=name,
                                    expected="a list of item ids")
            seen = obj.get("exclude_seen")
            if seen is not None and not isinstance(seen, bool):
                raise DataError(f"exclude_seen is {seen!r}", file=str(path), row=row, column="exclude_seen",
                                expected="true or false")
            yield SessionRequest(str(obj.get("session_id", row)),
                                 [_jsonl_event(e, str(path), row, j) for j, e in enumerate(evs)],
                                 k, obj.get("exclude"), obj.get("candidates"), seen)


def _read_csv(path: Path, session_col: str, item_col: str, op_col: str | None, separator: str) -> Iterable[SessionRequest]:
    try:
        df = pl.read_csv(path, infer_schema=False, separator=separator)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"cannot read CSV ({exc})", file=str(path)) from None
    for col in (session_col, item_col) + ((op_col,) if op_col else ()):
        if col not in df.columns:
            raise DataError(f"no column {col!r} (columns: {', '.join(df.columns)})", file=str(path), column=col,
                            expected="one event per row: session, item, operation")
    for col in (session_col, item_col):
        nulls = df[col].is_null()
        if nulls.any():
            raise DataError("empty value", file=str(path), row=int(nulls.arg_max()) + 1, column=col,
                            expected="a non-empty id")
    ops = pl.col(op_col) if op_col else pl.lit(None, dtype=pl.Utf8)
    grouped = df.select(pl.col(session_col).alias("s"), pl.col(item_col).alias("i"), ops.alias("o")) \
        .group_by("s", maintain_order=True).agg("i", "o")
    for sid, items, ops_ in grouped.iter_rows():
        yield SessionRequest(sid, list(zip(items, ops_)))


def _read_text(path: Path) -> Iterable[SessionRequest]:
    with open(path, encoding="utf-8") as fh:
        for row, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield SessionRequest(str(row), parse_session(line))
            except ValueError as exc:
                raise DataError(str(exc), file=str(path), row=row) from None


def read_sessions(path: str | Path, fmt: str | None = None, session_col: str = "session_id",
                  item_col: str = "item_id", op_col: str | None = "operation",
                  separator: str = ",") -> Iterable[SessionRequest]:
    """Sessions from a file, lazily (JSONL line by line).

    ``fmt`` (default: from the extension) is

    * ``jsonl`` (.jsonl, .ndjson): one session per line, ``{"session_id": "s1", "events":
      [{"item_id": "123", "operation": "click"}, ...], "k": 10, "exclude": [...],
      "candidates": [...], "exclude_seen": false}``; only ``events`` is required (an event may
      also be an ``[item_id, operation]`` pair); ``session_id`` defaults to the line number;
    * ``csv`` (.csv, .tsv): one event per row, columns ``session_col``, ``item_col`` and
      ``op_col`` (None: no operation column), events of a session in file order, sessions in
      order of first appearance;
    * ``text`` (anything else): one session per line as ``item:operation,item:operation``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", file=str(path))
    if fmt is None:
        ext = path.suffix.lower()
        fmt = "jsonl" if ext in (".jsonl", ".ndjson") else "csv" if ext in (".csv", ".tsv") else "text"
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt == "csv":
        return _read_csv(path, session_col, item_col, op_col, "\t" if path.suffix.lower() == ".tsv" else separator)
    if fmt == "text":
        return _read_text(path)
    raise ValueError(f"unknown session file format {fmt!r}; valid: jsonl, csv, text")


def recommend_requests(rec: Recommender, requests: Iterable[SessionRequest], k: int = 20,
                       exclude_seen: bool = False, batch_size: int = 256) -> Iterable[dict]:
    """Score ``requests`` in batches of ``batch_size``; yields one JSON-ready dict per session,
    ``{"session_id", "items": [{"item_id", "score"}], "ignored_items", ...}``, in input order.
    A request's own ``k`` / ``exclude_seen`` win over the arguments."""
    def flush(chunk: list[SessionRequest]) -> list[dict]:
        recs = rec.recommend_batch([r.events for r in chunk], [r.k or k for r in chunk],
                                   [r.exclude for r in chunk], [r.candidates for r in chunk],
                                   [exclude_seen if r.exclude_seen is None else r.exclude_seen for r in chunk])
        return [{"session_id": r.session_id, **x.to_dict()} for r, x in zip(chunk, recs)]

    chunk: list[SessionRequest] = []
    for r in requests:
        chunk.append(r)
        if len(chunk) >= batch_size:
            yield from flush(chunk)
            chunk = []
    if chunk:
        yield from flush(chunk)
