"""Load a prepared artifact: memory-mapped arrays, id maps, and the model-facing spec."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from ..errors import DataError
from ..fsutil import read_json
from .prepare import FORMAT, FORMAT_VERSION, SPLITS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """The sizes a model needs. Index spaces: item_idx 1..n_items (0 = padding); entity_idx
    0..n_entities-1 where 1..n_items are the items and the rest attribute values; op_idx
    1..n_ops-1 (0 = padding); relation_idx 0..n_relations-1."""

    n_items: int
    n_entities: int
    n_ops: int  # including padding index 0
    n_relations: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SplitArrays:
    """One split: sessions back to back in flat arrays (item_idx / op_idx, int32)."""

    items: np.ndarray    # (n_events,) int32 item_idx
    ops: np.ndarray      # (n_events,) int32 op_idx
    offsets: np.ndarray  # (n_sessions + 1,) int64
    origin: str = ""     # "<content hash>/<split name>" when read from a PreparedData, else ""

    @property
    def n_sessions(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @cached_property
    def sample_start(self) -> np.ndarray:
        """(n_sessions,) int64: index (in :meth:`samples` order) of each session's first sample."""
        per = np.maximum(self.lengths - 1, 0)
        return np.cumsum(per) - per

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        """All prefix -> next-item samples (SR-GNN convention: n events give n-1 samples).

        Returns ``(session_idx, prefix_len)``, both int64 of shape (n_samples,): the sample's
        prefix is events ``[offsets[s], offsets[s] + prefix_len)`` and its target the event
        right after.
        """
        per = np.maximum(self.lengths - 1, 0)
        sess = np.repeat(np.arange(self.n_sessions, dtype=np.int64), per)
        first = np.repeat(np.cumsum(per) - per, per)
        prefix = np.arange(sess.size, dtype=np.int64) - first + 1
        return sess, prefix

    def targets(self) -> np.ndarray:
        sess, prefix = self.samples()
        return self.items[self.offsets[sess] + prefix]


class PreparedData:
    """A prepared dataset directory (see :mod:`mkmsr.prepare`). Arrays are memory-mapped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.exists():
            raise DataError("not a prepared dataset (no manifest.json); run `mkmsr prepare` first", file=str(self.path))
        self.manifest = read_json(mpath)
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"unsupported artifact format {self.manifest.get('format')!r} "
                            f"v{self.manifest.get('format_version')}", file=str(mpath),
                            expected=f"{FORMAT} v{FORMAT_VERSION}")
        counts = self.manifest["counts"]
        self.spec = DatasetSpec(n_items=counts["items"], n_entities=counts["entities"],
                                n_ops=counts["operations"] + 1, n_relations=counts["relations"])
        self._splits: dict[str, SplitArrays] = {}

    @classmethod
    def load(cls, path: str | Path) -> "PreparedData":
        return cls(path)

    # ---- arrays -------------------------------------------------------------------------
    def _npy(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", mmap_mode="r")

    def split(self, name: str) -> SplitArrays:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; valid: {SPLITS}")
        if name not in self._splits:
            self._splits[name] = SplitArrays(np.asarray(self._npy(f"{name}.items")), np.asarray(self._npy(f"{name}.ops")),
                                             np.asarray(self._npy(f"{name}.offsets")),
                                             origin=f"{self.content_hash}/{name}")
        return self._splits[name]

    @cached_property
    def kg(self) -> np.ndarray:
        """(n_triplets, 3) int64: head entity (item_idx), relation_idx, tail entity_idx."""
        return np.asarray(self._npy("kg"))

    @cached_property
    def item_train_count(self) -> np.ndarray:
        """(n_items + 1,) int64: how often each item occurs in the train split (0 = cold)."""
        c = np.zeros(self.spec.n_items + 1, dtype=np.int64)
        t = self.items
        c[t["item_idx"].to_numpy()] = t["train_count"].to_numpy()
        return c

    # ---- id maps (external ids <-> indices) ----------------------------------------------
    @cached_property
    def items(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "items.parquet")

    @cached_property
    def operations(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "operations.parquet")

    @cached_property
    def relations(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "relations.parquet")

    @cached_property
    def attributes(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "attributes.parquet")

    @property
    def content_hash(self) -> str:
        return self.manifest["content_sha256"]

    def verify(self) -> None:
        """Recompute every file's sha256 against the manifest; raise DataError on a mismatch."""
        for name, digest in self.manifest["files"].items():
            got = hashlib.sha256((self.path / name).read_bytes()).hexdigest()
            if got != digest:
                raise DataError("content hash mismatch: the artifact was modified after `mkmsr prepare`",
                                file=str(self.path / name), expected=digest)

    def __repr__(self) -> str:
        return f"PreparedData({str(self.path)!r}, {self.spec})"
