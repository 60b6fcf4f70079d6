"""Approximate maximum-inner-product search over the cached item vectors, for large catalogues.

The :class:`~mkmsr.serving.recommend.Recommender` ranks a session by ``s . v_j`` over every
catalogue item j. Below :attr:`IndexConfig.threshold` items (and on CUDA, where the scan of
a million items is a fraction of a millisecond) it does that exactly. From the threshold up,
on the CPU, it builds an index over the item vectors at load time (or reads the one a previous
load saved: the index cache, below) and ranks in two steps:

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

The index cache. Building is the slow part (137 s for 1M items on 2 threads), so a built index
is saved and the next load of the same checkpoint reads it back instead
(:func:`load_or_build_index`). The cache is a folder per kind, ``<cache>/<kind>/`` (by default
``<checkpoint>/index-cache/``; :attr:`IndexConfig.cache_dir`, :attr:`IndexConfig.cache`), holding
the library's own file (hnswlib ``save_index``, faiss ``write_index``) and ``index.json``, which
records what the graph depends on: the kind, the library and its version, the build parameters
that shape the graph (:meth:`ItemIndex.graph_params`: space / metric, M, ef_construction and,
for hnswlib, the seed), the number of items and the dimension, the sha256 of the exact float32 item matrix
indexed (rows 1..n_items, C order), and the size and sha256 of the index file. A load uses the
cached file only when all of these match exactly, the file included, so a stale, truncated or
corrupt file is rebuilt (and overwritten), with a log line saying why. The search-time settings
(``ef_search``, ``margin``, ``max_retrieve``) and the build threads are not part of the key; nor
is MKM-SR+'s repeat boost, which is added when rescoring and never reaches the index. The folder
is written to a temporary folder beside it and renamed when complete (:func:`~mkmsr.fsutil.atomic_dir`),
so a crash never leaves a half-written cache; a folder that cannot be written (a read-only
checkpoint) leaves the index in memory, with a warning, and the load goes on. A cached graph
also keeps the rankings the same across restarts, which a rebuild with several threads does not.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ..fsutil import atomic_dir, read_json, write_json

if TYPE_CHECKING:  # torch loads where it is used: the CLI parser reads KINDS from here
    import torch

log = logging.getLogger(__name__)

#: index kinds a backend builds (``exact`` and ``auto`` are resolved by IndexConfig)
BACKENDS = ("hnsw", "faiss-hnsw", "flat")
KINDS = ("auto", "exact") + BACKENDS
#: the index cache's default folder inside a checkpoint directory
CACHE_DIR = "index-cache"
#: version of the cache layout (index.json); another version is rebuilt
CACHE_FORMAT = 1


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

    ``cache`` / ``cache_dir``: a built index is saved to ``cache_dir`` (None: the checkpoint's
    ``index-cache/`` folder) and read back at the next load with the same vectors and graph
    parameters (module docstring); ``cache=False`` builds at every load and writes nothing.
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
    cache: bool = True           # save a built index and reuse it at the next load
    cache_dir: str | None = None  # where (None: <checkpoint>/index-cache; one index per kind in it)

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
    """Inner-product search over item vectors; labels are item_idx (1..n_items).

    Made by :meth:`build` (from the vectors) or :meth:`read` (from a file :meth:`write` saved);
    ``source`` says which, ``build_seconds`` how long the build took (for a read index: the
    build recorded in the cache) and ``load_seconds`` how long the read took (None when built).
    """

    kind: str = ""
    library: str = ""
    FILE = "index.bin"  # the library's own file inside a cache folder

    def __init__(self, n: int, dim: int, config: IndexConfig):
        self.config = config
        self.n, self.dim = n, dim
        self.source = "built"
        self.build_seconds = 0.0
        self.load_seconds: float | None = None
        self._index = None

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig) -> "ItemIndex":
        """An index over ``vectors`` (n_items, d) float32: row r is item_idx r + 1 (the padding row left out)."""
        index = cls(vectors.shape[0], vectors.shape[1], config)
        index._load_library()
        t0 = time.perf_counter()
        index._build(np.ascontiguousarray(vectors, dtype=np.float32))
        index.build_seconds = time.perf_counter() - t0
        return index

    @classmethod
    def read(cls, path: Path, n: int, dim: int, config: IndexConfig) -> "ItemIndex":
        """The index :meth:`write` saved to ``path``, for ``n`` items of dimension ``dim``.
        Raises IndexUnavailable without the library; RuntimeError / OSError / ValueError on a
        file that is no such index."""
        index = cls(n, dim, config)
        index._load_library()
        index._read(str(path))
        index.source = "cache"
        return index

    def write(self, path: Path) -> None:
        """Save the index to ``path`` (the library's own format)."""
        raise NotImplementedError

    def _load_library(self):
        raise NotImplementedError

    def _build(self, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def _read(self, path: str) -> None:
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

    def graph_params(self) -> dict:
        """The build parameters the graph depends on: a cached index is reused only when these match."""
        return {}

    def set_ef_search(self, ef: int) -> None:
        """Change the HNSW search list (a benchmark's sweep). Not safe while other threads search."""
        raise NotImplementedError(f"{self.kind} has no search list")

    def describe(self) -> dict:
        return {"kind": self.kind, "library": self.library, "items": self.n, "dim": self.dim,
                "params": self.params(), "source": self.source, "build_seconds": round(self.build_seconds, 3),
                "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
                "bytes": int(self.nbytes)}


class HnswIndex(ItemIndex):
    """hnswlib, space 'ip' (distance = 1 - s.v)."""

    kind = "hnsw"

    def _load_library(self):
        self._lib = _import("hnswlib", self.kind)
        self.library = f"hnswlib {_version('hnswlib')}".strip()

    def _build(self, vectors: np.ndarray) -> None:
        cfg = self.config
        idx = self._lib.Index(space="ip", dim=self.dim)
        idx.init_index(max_elements=max(1, self.n), M=cfg.m, ef_construction=cfg.ef_construction,
                       random_seed=cfg.seed)
        idx.set_num_threads(_threads(cfg.build_threads))
        idx.add_items(vectors, np.arange(1, self.n + 1, dtype=np.int64))
        idx.set_ef(cfg.ef_search)  # set once here: changing ef while searching is not thread-safe
        self._index = idx

    def _read(self, path: str) -> None:
        cfg = self.config
        idx = self._lib.Index(space="ip", dim=self.dim)
        idx.load_index(path, max_elements=max(1, self.n))
        got = (idx.element_count, idx.M, idx.ef_construction)
        if got != (self.n, cfg.m, cfg.ef_construction):
            raise ValueError(f"the file holds {got[0]} items, M {got[1]}, ef_construction {got[2]}; expected "
                             f"{self.n}, {cfg.m}, {cfg.ef_construction}")
        idx.set_ef(cfg.ef_search)
        self._index = idx

    def write(self, path: Path) -> None:
        self._index.save_index(str(path))

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

    def graph_params(self) -> dict:
        c = self.config
        return {"space": "ip", "M": c.m, "ef_construction": c.ef_construction, "seed": c.seed}


class _FaissIndex(ItemIndex):
    FILE = "index.faiss"

    def _load_library(self):
        self._lib = _import("faiss", self.kind)
        self.library = f"faiss {getattr(self._lib, '__version__', '') or _version('faiss-cpu')}".strip()

    def _read(self, path: str) -> None:
        idx = self._lib.read_index(path)
        if (type(idx).__name__, idx.ntotal, idx.d, idx.metric_type) != \
                (self._faiss_class, self.n, self.dim, self._lib.METRIC_INNER_PRODUCT):
            raise ValueError(f"the file holds a {type(idx).__name__} of {idx.ntotal} items, d = {idx.d}, metric "
                             f"{idx.metric_type}; expected a {self._faiss_class} of {self.n} items, d = {self.dim}, "
                             "inner product")
        self._index = idx

    def write(self, path: Path) -> None:
        self._lib.write_index(self._index, str(path))

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
    _faiss_class = "IndexHNSWFlat"

    def _build(self, vectors: np.ndarray) -> None:
        faiss = self._lib
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

    def _read(self, path: str) -> None:
        super()._read(path)
        cfg = self.config
        if self._index.hnsw.efConstruction != cfg.ef_construction:
            raise ValueError(f"the file's ef_construction is {self._index.hnsw.efConstruction}, "
                             f"expected {cfg.ef_construction}")
        self._index.hnsw.efSearch = cfg.ef_search
        self._params_cls = self._lib.SearchParametersHNSW

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

    def graph_params(self) -> dict:
        # faiss draws HNSW levels from its own fixed seed: IndexConfig.seed does not reach the graph
        c = self.config
        return {"metric": "inner_product", "M": c.m, "ef_construction": c.ef_construction}


class FlatIndex(_FaissIndex):
    """faiss IndexFlatIP: exact, a reference for the index path."""

    kind = "flat"
    _faiss_class = "IndexFlatIP"

    def _build(self, vectors: np.ndarray) -> None:
        self._index = self._lib.IndexFlatIP(self.dim)
        self._index.add(vectors)

    @property
    def nbytes(self) -> int:
        return self.n * self.dim * 4

    def graph_params(self) -> dict:
        return {"metric": "inner_product"}


_CLASSES = {"hnsw": HnswIndex, "faiss-hnsw": FaissHnswIndex, "flat": FlatIndex}


def _item_rows(kind: str, vectors: torch.Tensor | np.ndarray) -> np.ndarray:
    """The indexed matrix: rows 1..n_items of ``vectors`` as C-ordered float32 (the padding row left out)."""
    if kind not in _CLASSES:
        raise ConfigError(f"index kind must be one of {', '.join(BACKENDS)}, got {kind!r}")
    if not isinstance(vectors, np.ndarray):
        import torch

        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(vectors[1:], dtype=np.float32)


def build_index(kind: str, vectors: torch.Tensor | np.ndarray, config: IndexConfig | None = None) -> ItemIndex:
    """An index of ``kind`` (one of :data:`BACKENDS`) over ``vectors`` (n_items + 1, d), row =
    item_idx, row 0 (padding) left out. Raises IndexUnavailable when the library is missing."""
    return _build_rows(kind, _item_rows(kind, vectors), config or IndexConfig(kind=kind))


def _build_rows(kind: str, rows: np.ndarray, config: IndexConfig) -> ItemIndex:
    index = _CLASSES[kind].build(rows, config)
    log.info("built a %s index over %d items (d = %d) in %.1fs, %.0f MiB", kind, index.n, index.dim,
             index.build_seconds, index.nbytes / 2 ** 20)
    return index


# --------------------------------------------------------------------------------------------
# the on-disk cache (module docstring)
# --------------------------------------------------------------------------------------------

def _sha256_bytes(data) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * 2 ** 20):
            h.update(chunk)
    return h.hexdigest()


def _cache_key(index: ItemIndex, vectors_sha256: str) -> dict:
    """What a cached index must match to be reused (index.json, less the file's own size and hash)."""
    return {"format": CACHE_FORMAT, "kind": index.kind, "library": index.library, "graph": index.graph_params(),
            "items": index.n, "dim": index.dim, "dtype": "float32", "vectors_sha256": vectors_sha256}


def _key_mismatch(want: dict, got: dict) -> str | None:
    """Why a cached index does not fit (the first difference, for the log), or None when it does."""
    names = {"vectors_sha256": "built from other item vectors (content hash differs)",
             "library": "built with another library version", "graph": "built with other graph parameters",
             "items": "built for another number of items", "format": "another cache format"}
    for name, value in want.items():
        if got.get(name) != value:
            return f"{names.get(name, name + ' differs')}: cached {got.get(name)!r}, now {value!r}"
    return None


class _Stale(Exception):
    """The cached index cannot be used; the message says why."""


def _read_cached(cls: type[ItemIndex], folder: Path, key: dict, config: IndexConfig) -> ItemIndex:
    """The index cached in ``folder`` if its index.json matches ``key`` and its file matches its
    recorded size and hash; raises _Stale (saying why) otherwise."""
    meta_path = folder / "index.json"
    if not meta_path.exists():
        raise _Stale("no cached index yet")
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError) as exc:
        raise _Stale(f"index.json unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise _Stale("index.json is not a JSON object")
    why = _key_mismatch(key, meta)
    if why:
        raise _Stale(why)
    path = folder / cls.FILE
    try:
        size = path.stat().st_size
        if size != meta.get("file_bytes"):
            raise _Stale(f"{path.name} is {size} bytes, index.json says {meta.get('file_bytes')} "
                         "(truncated or replaced)")
        if _sha256_file(path) != meta.get("file_sha256"):
            raise _Stale(f"{path.name} does not match its recorded sha256 (corrupt)")
    except OSError as exc:
        raise _Stale(f"{path.name} unreadable ({exc})") from None
    try:
        index = cls.read(path, key["items"], key["dim"], config)
    except (RuntimeError, OSError, ValueError) as exc:  # IndexUnavailable (no library) propagates
        raise _Stale(f"{path.name} does not load ({exc})") from None
    index.build_seconds = float(meta.get("build_seconds") or 0.0)
    return index


def _write_cached(index: ItemIndex, folder: Path, key: dict) -> None:
    """Save ``index`` and its index.json to ``folder``, replacing what was there, all or nothing."""
    _sweep_leftovers(folder)
    with atomic_dir(folder, overwrite=True) as tmp:  # written beside the folder, renamed when complete
        path = tmp / index.FILE
        index.write(path)
        write_json(tmp / "index.json", {
            **key, "file": index.FILE, "file_bytes": path.stat().st_size, "file_sha256": _sha256_file(path),
            "build_seconds": round(index.build_seconds, 3), "build_threads": _threads(index.config.build_threads),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _sweep_leftovers(folder: Path, older_than_s: float = 3600.0) -> None:
    """Remove temporary folders a killed process left beside ``folder`` (atomic_dir's
    ``.NAME.tmp-*`` / ``.NAME.old-*``); recent ones may belong to a save in progress."""
    if not folder.parent.is_dir():
        return
    now = time.time()
    for p in folder.parent.glob(f".{folder.name}.*"):
        try:
            if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name) and now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def load_or_build_index(kind: str, vectors: torch.Tensor | np.ndarray, config: IndexConfig | None = None,
                        cache_dir: str | os.PathLike | None = None) -> tuple[ItemIndex, dict]:
    """An index of ``kind`` over ``vectors`` (n_items + 1, d), row = item_idx, read from
    ``cache_dir/<kind>/`` when the index cached there was built from the same float32 rows with
    the same graph parameters and library version, else built and saved there.

    Returns ``(index, cache)``: ``cache`` is ``{"dir", "status", "reason"}`` with status
    ``loaded`` (from the cache), ``saved`` (built, then saved), ``unsaved`` (built; the folder
    could not be written: reason says why) or ``off`` (``cache_dir`` None or ``config.cache``
    False). Never fails for a cache problem; raises IndexUnavailable when the library is missing.
    """
    cfg = config or IndexConfig(kind=kind)
    rows = _item_rows(kind, vectors)
    if cache_dir is None or not cfg.cache:
        return _build_rows(kind, rows, cfg), {"dir": None, "status": "off"}
    folder = Path(cache_dir) / kind
    cls = _CLASSES[kind]
    t0 = time.perf_counter()
    unbuilt = cls(rows.shape[0], rows.shape[1], cfg)  # its library version and graph parameters make the key
    unbuilt._load_library()
    key = _cache_key(unbuilt, _sha256_bytes(memoryview(rows).cast("B")))
    try:
        index = _read_cached(cls, folder, key, cfg)
    except _Stale as exc:
        reason = str(exc)
    else:
        index.load_seconds = time.perf_counter() - t0
        log.info("loaded the %s index over %d items from %s in %.1fs (built in %.1fs)", kind, index.n, folder,
                 index.load_seconds, index.build_seconds)
        return index, {"dir": str(folder), "status": "loaded"}
    (log.info if reason == "no cached index yet" else log.warning)(
        "index cache %s: %s; building the index", folder, reason)
    index = _build_rows(kind, rows, cfg)
    try:
        _write_cached(index, folder, key)
    except (OSError, RuntimeError) as exc:  # a read-only checkpoint, a full disk: serve from memory
        log.warning("cannot save the %s index to %s (%s); it stays in memory and is built again at the next load",
                    kind, folder, exc)
        return index, {"dir": str(folder), "status": "unsaved", "reason": f"{reason}; not saved: {exc}"}
    return index, {"dir": str(folder), "status": "saved", "reason": reason}


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
