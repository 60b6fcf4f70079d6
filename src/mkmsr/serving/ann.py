"""Approximate maximum-inner-product search over the cached item vectors, for large catalogues.

The :class:`~mkmsr.serving.recommend.Recommender` ranks a session by ``s . v_j`` over every
catalogue item j. Below :attr:`IndexConfig.threshold` items (and on CUDA, where the scan of
a million items is a fraction of a millisecond) it does that exactly. From the threshold up,
on the CPU, it builds an index over the item vectors once at load time and ranks in two steps:

1. retrieve ``k' = k + |exclude| + margin`` items from the index (approximate: an item of the
   exact top k can be missed; :func:`recall_at_k` measures how often);
2. rescore the retrieved items -- plus, for a model with per-session score terms (MKM-SR+'s
   repeat boost), the session's own items -- exactly in float32, drop ``exclude``, take the
   top k. So every returned score is the model's exact score and the order among returned
   items is exact; only membership is approximate.

A request with ``candidates`` is scored exactly over those (no index); one whose ``k'`` is
over :attr:`IndexConfig.max_retrieve`, or whose retrieved set is left with fewer than k items
after ``exclude``, falls back to the exact scan.

Backends (the ``ann`` extra: ``pip install 'mkmsr[ann]'``):

``hnsw``        hnswlib's HNSW graph, inner-product space (the default index: best recall
                for a given latency in benchmarks/ann_serving.py)
``faiss-hnsw``  faiss ``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``
``flat``        faiss ``IndexFlatIP``: exact brute force through the index path (for tests and
                as a reference; no faster than the exact scan)

Only models whose scores are ``s . v_j`` (the model contract's ``candidate_vectors``), or
``s . v_j + beta * 1[j in the session]`` (MKM-SR+'s repeat boost), can be served from an index;
the decomposition is checked against the model's own ``score`` at load. Other models (RepeatNet,
MKM-SR-RN, the count-based ones) are scored by ``score`` over the whole catalogue: asking for an
index for them raises :class:`IndexUnavailable`, ``index="auto"`` quietly keeps the exact path.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, replace

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:  # torch loads where it is used: the CLI parser reads KINDS from here
    import torch

log = logging.getLogger(__name__)

#: index kinds a backend builds (``exact`` and ``auto`` are resolved by IndexConfig)
BACKENDS = ("hnsw", "faiss-hnsw", "flat")
KINDS = ("auto", "exact") + BACKENDS


class IndexUnavailable(ConfigError):
    """The model's scores are not an inner product with cached item vectors, or the backend
    library is not installed."""


@dataclass(frozen=True)
class IndexConfig:
    """How the catalogue is searched (``mkmsr serve --index ...``).

    ``kind``: ``auto`` (an ``hnsw`` index on the CPU from ``threshold`` items up, else the exact
    scan), ``exact``, or a backend of :data:`BACKENDS`. The graph defaults (``m``,
    ``ef_construction``, ``ef_search``) reached recall@20 0.989 against the exact ranking (0.996
    with ``ef_search`` 256) on the synthetic 1M-item catalogue of benchmarks/ann_serving.py, for
    session vectors near items; recall depends on the sessions (``Recommender.index_recall``).
    """

    kind: str = "auto"
    # auto: the index from this many items up. The exact scan's cost grows linearly with the
    # catalogue (p99 3.93 ms at 139k items, docs/performance.md); below this the index's build
    # time and its approximate membership buy little
    threshold: int = 250_000
    m: int = 32                  # HNSW: links per node (memory ~ 8 m bytes per item on top of the vectors)
    ef_construction: int = 100   # HNSW: candidate list while building (build time grows with it)
    ef_search: int = 128         # HNSW: candidate list while searching (recall and latency grow with it)
    margin: int = 20             # neighbours retrieved beyond k + |exclude|, all rescored exactly
    max_retrieve: int = 4096     # a request that needs more neighbours than this takes the exact scan
    build_threads: int = 0       # threads building the index (0 = every core)
    seed: int = 0                # HNSW level assignment (the graph is reproducible with one build thread)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("threshold", "m", "ef_construction", "ef_search", "max_retrieve"):
            if getattr(self, name) < 1:
                raise ConfigError(f"index option {name} must be >= 1, got {getattr(self, name)}")
        if self.margin < 0 or self.build_threads < 0:
            raise ConfigError("index options margin and build_threads must be >= 0")

    def resolve(self, n_items: int, device: torch.device) -> str:
        """The kind to use for a catalogue of ``n_items`` on ``device``: ``exact`` or a backend."""
        if self.kind != "auto":
            return self.kind
        return "hnsw" if device.type == "cpu" and n_items >= self.threshold else "exact"


def as_index_config(index: "str | IndexConfig | None") -> IndexConfig:
    cfg = IndexConfig() if index is None else IndexConfig(kind=index) if isinstance(index, str) else index
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------------------------
# which models an index can serve
# --------------------------------------------------------------------------------------------

def dot_product_form(model) -> tuple[torch.Tensor, float]:
    """``(V, beta)`` with the model's score of item j for session s equal to
    ``session_vectors(s) . V[j] + beta * 1[j in s]``; V is (n_items + 1, d), row = item_idx.

    Raises IndexUnavailable for a model whose scores have no such form.
    """
    try:
        return model.candidate_vectors().detach(), 0.0
    except NotImplementedError as exc:
        reason = str(exc)
    # MKM-SR+: the dot product with its scoring vectors plus a constant boost of the session's items
    beta = float(getattr(getattr(model, "config", None), "repeat_boost", 0.0) or 0.0)
    vectors = getattr(model, "scoring_vectors", None)
    if beta and callable(vectors):
        return vectors().detach(), beta
    raise IndexUnavailable(f"{type(model).__name__}: its scores are not an inner product with cached item vectors "
                           f"({reason}); serve it with index='exact'")


def check_dot_product_form(model, V: torch.Tensor, beta: float, probes) -> None:
    """Raise IndexUnavailable unless ``session_vectors . V + beta * presence`` reproduces the
    model's ``score`` on the ``probes`` batch (float32 tolerance)."""
    import torch

    with torch.inference_mode():
        want = model.score(probes).float()                                    # (b, n_items + 1)
        got = model.session_vectors(probes).float() @ V.float().T
        if beta:
            present = torch.zeros_like(got)
            present.scatter_reduce_(1, probes.items, probes.mask.to(got.dtype), reduce="amax")
            got = got + beta * present
    got, want = got[:, 1:], want[:, 1:]
    tol = 1e-4 * (1.0 + float(want.abs().max()))
    if got.shape != want.shape or not bool(((got - want).abs() <= tol).all()):
        raise IndexUnavailable(f"{type(model).__name__}: session vectors . item vectors"
                               f"{' + repeat boost' if beta else ''} do not reproduce the model's scores; "
                               "serve it with index='exact'")


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------

def _import(module: str, kind: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise IndexUnavailable(f"index {kind!r} needs {module}: pip install 'mkmsr[ann]' ({exc})") from None


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


def _threads(n: int) -> int:
    return n or os.cpu_count() or 1


class ItemIndex:
    """Inner-product search over item vectors; labels are item_idx (1..n_items)."""

    kind: str = ""
    library: str = ""

    def __init__(self, vectors: np.ndarray, config: IndexConfig):
        """``vectors`` (n_items, d) float32: row r is item_idx r + 1 (the padding row left out)."""
        self.config = config
        self.n, self.dim = vectors.shape
        t0 = time.perf_counter()
        self._build(np.ascontiguousarray(vectors, dtype=np.float32))
        self.build_seconds = time.perf_counter() - t0

    def _build(self, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int, threads: int = 1) -> np.ndarray:
        """(b, k) int64 item_idx of the (approximately) best k items per query row of
        ``queries`` (b, d) float32, best first as the index sees them; -1 where it found fewer."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Memory of the index itself (vectors copied into it + graph), in bytes."""
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def set_ef_search(self, ef: int) -> None:
        """Change the HNSW search list (a benchmark's sweep). Not safe while other threads search."""
        raise NotImplementedError(f"{self.kind} has no search list")

    def describe(self) -> dict:
        return {"kind": self.kind, "library": self.library, "items": self.n, "dim": self.dim,
                "params": self.params(), "build_seconds": round(self.build_seconds, 3), "bytes": int(self.nbytes)}


class HnswIndex(ItemIndex):
    """hnswlib, space 'ip' (distance = 1 - s.v)."""

    kind = "hnsw"

    def _build(self, vectors: np.ndarray) -> None:
        hnswlib = _import("hnswlib", self.kind)
        self.library = f"hnswlib {_version('hnswlib')}".strip()
        cfg = self.config
        idx = hnswlib.Index(space="ip", dim=self.dim)
        idx.init_index(max_elements=max(1, self.n), M=cfg.m, ef_construction=cfg.ef_construction,
                       random_seed=cfg.seed)
        idx.set_num_threads(_threads(cfg.build_threads))
        idx.add_items(vectors, np.arange(1, self.n + 1, dtype=np.int64))
        idx.set_ef(cfg.ef_search)  # set once here: changing ef while searching is not thread-safe
        self._index = idx

    def search(self, queries: np.ndarray, k: int, threads: int = 1) -> np.ndarray:
        k = min(k, self.n)
        try:
            labels, _ = self._index.knn_query(np.ascontiguousarray(queries, dtype=np.float32), k=k,
                                              num_threads=threads)
        except RuntimeError:  # fewer than k reachable ("cannot return the results in a contiguous 2D array")
            return np.full((queries.shape[0], k), -1, dtype=np.int64)
        return labels.astype(np.int64)

    @property
    def nbytes(self) -> int:
        return int(self._index.index_file_size())

    def set_ef_search(self, ef: int) -> None:
        self.config = replace(self.config, ef_search=ef)
        self._index.set_ef(ef)

    def params(self) -> dict:
        c = self.config
        return {"space": "ip", "M": c.m, "ef_construction": c.ef_construction, "ef_search": c.ef_search,
                "build_threads": _threads(c.build_threads)}


class _FaissIndex(ItemIndex):
    def _faiss(self):
        faiss = _import("faiss", self.kind)
        self.library = f"faiss {getattr(faiss, '__version__', '') or _version('faiss-cpu')}".strip()
        return faiss

    def _search_params(self, k: int):
        return None

    def search(self, queries: np.ndarray, k: int, threads: int = 1) -> np.ndarray:
        k = min(k, self.n)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        params = self._search_params(k)
        _, labels = self._index.search(q, k) if params is None else self._index.search(q, k, params=params)
        return np.where(labels >= 0, labels + 1, -1).astype(np.int64)  # faiss numbers rows from 0


class FaissHnswIndex(_FaissIndex):
    """faiss IndexHNSWFlat, METRIC_INNER_PRODUCT."""

    kind = "faiss-hnsw"

    def _build(self, vectors: np.ndarray) -> None:
        faiss = self._faiss()
        cfg = self.config
        idx = faiss.IndexHNSWFlat(self.dim, cfg.m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = cfg.ef_construction
        idx.hnsw.efSearch = cfg.ef_search
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(_threads(cfg.build_threads))
        try:
            idx.add(vectors)
        finally:
            faiss.omp_set_num_threads(before)
        self._index = idx
        self._params_cls = faiss.SearchParametersHNSW

    def set_ef_search(self, ef: int) -> None:
        self.config = replace(self.config, ef_search=ef)
        self._index.hnsw.efSearch = ef

    def _search_params(self, k: int):
        # per call, so concurrent searches never change shared state
        return self._params_cls(efSearch=max(self.config.ef_search, k))

    @property
    def nbytes(self) -> int:
        links = self._index.hnsw.neighbors.size() * 4 + self._index.hnsw.offsets.size() * 8
        return int(self.n * self.dim * 4 + links + self._index.hnsw.levels.size() * 4)

    def params(self) -> dict:
        c = self.config
        return {"metric": "inner_product", "M": c.m, "ef_construction": c.ef_construction,
                "ef_search": c.ef_search, "build_threads": _threads(c.build_threads)}


class FlatIndex(_FaissIndex):
    """faiss IndexFlatIP: exact, a reference for the index path."""

    kind = "flat"

    def _build(self, vectors: np.ndarray) -> None:
        faiss = self._faiss()
        self._index = faiss.IndexFlatIP(self.dim)
        self._index.add(vectors)

    @property
    def nbytes(self) -> int:
        return self.n * self.dim * 4


_CLASSES = {"hnsw": HnswIndex, "faiss-hnsw": FaissHnswIndex, "flat": FlatIndex}


def build_index(kind: str, vectors: torch.Tensor | np.ndarray, config: IndexConfig | None = None) -> ItemIndex:
    """An index of ``kind`` (one of :data:`BACKENDS`) over ``vectors`` (n_items + 1, d), row =
    item_idx, row 0 (padding) left out. Raises IndexUnavailable when the library is missing."""
    if kind not in _CLASSES:
        raise ConfigError(f"index kind must be one of {', '.join(BACKENDS)}, got {kind!r}")
    import torch

    cfg = config or IndexConfig(kind=kind)
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    index = _CLASSES[kind](vectors[1:], cfg)
    log.info("built a %s index over %d items (d = %d) in %.1fs, %.0f MiB", kind, index.n, index.dim,
             index.build_seconds, index.nbytes / 2 ** 20)
    return index


def exact_top(V: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """(b, k) item_idx of the exact top k of ``queries @ V.T`` (padding row 0 excluded)."""
    import torch

    scores = queries.float() @ V.float().T
    scores[:, 0] = float("-inf")
    return torch.topk(scores, min(k, V.shape[0] - 1), dim=1).indices


def recall_at_k(index: ItemIndex, V: torch.Tensor, queries: torch.Tensor, k: int = 20, margin: int = 20,
                chunk: int = 256) -> float:
    """Mean share of the exact top k (by ``queries @ V.T``) that the index path returns: retrieve
    k + margin items, rescore them exactly, keep the top k -- what the Recommender does.
    ``queries`` (b, d) session vectors; ``V`` (n_items + 1, d)."""
    import torch

    hits, total = 0, 0
    Vc = V.float().cpu()
    for c0 in range(0, queries.shape[0], chunk):
        Q = queries[c0:c0 + chunk].float().cpu()
        want = exact_top(Vc, Q, k)
        got = index.search(Q.numpy(), k + margin, threads=torch.get_num_threads())
        for r in range(Q.shape[0]):
            lab = got[r][got[r] > 0]
            ids = torch.from_numpy(lab)
            top = ids[torch.topk(Vc[ids] @ Q[r], min(k, ids.numel())).indices] if ids.numel() else ids
            hits += len(set(top.tolist()) & set(want[r].tolist()))
            total += want.shape[1]
    return hits / max(1, total)


def describe_config(config: IndexConfig) -> dict:
    return asdict(config)
