"""The original (issue 2), string-keyed, eager ``prepare``: kept as the slow reference that the
fast rewrite in mkmsr.data.prepare must reproduce file for file (tests/test_prepare_equivalence.py).

Prepare once, train many times: canonical events + knowledge -> a versioned on-disk artifact.

Artifact layout (a directory)::

    manifest.json           format/version, options, statistics, per-file and content sha256
    items.parquet           item_idx (1..n_items) <-> item_id (external), train_count
    attributes.parquet      entity_idx (n_items+1..) <-> (relation, value)
    operations.parquet      op_idx (1..n_ops) <-> op (external), train_count
    relations.parquet       relation_idx (0..) <-> relation name
    kg.npy                  (n_triplets, 3) int64: head entity (an item_idx), relation_idx, tail entity
    {split}.items.npy       int32 flat item_idx of every event of the split, sessions back to back
    {split}.ops.npy         int32 flat op_idx, aligned with items
    {split}.offsets.npy     int64 (n_sessions + 1) session boundaries into the flat arrays
    {split}.sessions.parquet  external session key and start time of each session

Index 0 is padding for items/entities and operations. Items and attribute values share one
entity index space (items first) because MKM-SR learns them in one embedding table.

Splits: ``train`` (what models fit), ``valid`` (the latest ``valid_fraction`` of the
training period's sessions unless given), ``test``. The *training period* is train + valid.

Cold-start policy (``drop`` | ``keep``): an event of the validation split whose item never
occurs in ``train``, or an event of the test split whose item never occurs in the training
period, is removed (``drop``), or kept when the item has knowledge triplets (``keep``) — then
the item is in the catalogue and reachable only through its knowledge. The catalogue is the
training period's items plus kept cold-start items; only catalogue items are ranked.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from mkmsr import __version__
from mkmsr.data.sources import RawData
from mkmsr.errors import ConfigError, DataError
from mkmsr.fsutil import atomic_dir, write_json

log = logging.getLogger(__name__)

FORMAT = "mkmsr-prepared"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")


@dataclass
class PrepareConfig:
    cold_start: str = "drop"          # drop | keep (see module docstring)
    min_session_length: int = 2       # shorter sessions are dropped (a session needs >= 2 events)
    min_item_count: int = 1           # items seen fewer times in the training period are removed
    valid_fraction: float = 0.1       # latest share of training-period sessions used for validation
    test_fraction: float = 0.1        # latest share of sessions used for test when no test file is given

    def validate(self) -> None:
        if self.cold_start not in ("drop", "keep"):
            raise ConfigError(f"cold_start must be 'drop' or 'keep', got {self.cold_start!r}")
        if self.min_session_length < 2:
            raise ConfigError("min_session_length must be >= 2: a session of one micro-behaviour "
                              "has no next item to predict")
        if self.min_item_count < 1:
            raise ConfigError("min_item_count must be >= 1")
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {v}")


def _drop_short(ev: pl.DataFrame, min_len: int) -> tuple[pl.DataFrame, int]:
    n = ev.group_by("sid").len()
    short = n.filter(pl.col("len") < min_len)
    return ev.join(short.select("sid"), on="sid", how="anti"), short.height


def _latest(sess: pl.DataFrame, fraction: float) -> pl.Series:
    """sids of the latest ``fraction`` of sessions (by start time, then key)."""
    s = sess.sort(["start", "sid"])
    k = int(round(fraction * s.height))
    return s["sid"].tail(k) if k > 0 else s["sid"].head(0)


def prepare(raw: RawData, out: str | Path, config: PrepareConfig | None = None,
            overwrite: bool = False) -> Path:
    """Build the artifact in ``out`` (written to a temporary directory, then renamed).

    Returns the artifact path. Raises DataError when a split ends up empty, ConfigError on bad
    options, FileExistsError when ``out`` exists and ``overwrite`` is false.
    """
    config = config or PrepareConfig()
    config.validate()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (use --overwrite to replace it)")
    ev = raw.events.with_columns((pl.col("period") + "\x1f" + pl.col("session")).alias("sid"))
    stats: dict = {"input_events": ev.height, "input_sessions": ev["sid"].n_unique()}

    # 1. raw short sessions out, so that split fractions count usable sessions
    ev, stats["dropped_short_sessions_raw"] = _drop_short(ev, config.min_session_length)
    if ev.height == 0:
        raise DataError(f"no session has {config.min_session_length} or more events; a session needs at "
                        "least 2 micro-behaviours to give a prefix -> next-item sample",
                        file=raw.source.get("events") or raw.source.get("path"))

    # 2. chronological split on sessions
    sess = ev.group_by("sid").agg(pl.col("period").first(), pl.col("time").min().alias("start"))
    split = sess.select("sid", pl.col("period").alias("split"))
    if (sess["period"] == "all").any():
        test_ids = _latest(sess.filter(pl.col("period") == "all"), config.test_fraction)
        split = split.with_columns(
            pl.when(pl.col("split") != "all").then(pl.col("split"))
            .when(pl.col("sid").is_in(test_ids.implode())).then(pl.lit("test")).otherwise(pl.lit("train")).alias("split"))
    if not (sess["period"] == "valid").any():
        tr = sess.join(split, on="sid").filter(pl.col("split") == "train")
        valid_ids = _latest(tr, config.valid_fraction)
        split = split.with_columns(pl.when(pl.col("sid").is_in(valid_ids.implode())).then(pl.lit("valid"))
                                   .otherwise(pl.col("split")).alias("split"))
    ev = ev.join(split, on="sid")

    # 3. rare items (counted over the training period) out of the training period
    period = pl.col("split").is_in(["train", "valid"])
    counts = ev.filter(period).group_by("item").len()
    rare = counts.filter(pl.col("len") < config.min_item_count)["item"]
    before = ev.height
    ev = ev.filter(~(period & pl.col("item").is_in(rare.implode())))
    stats["removed_rare_item_events"] = before - ev.height
    ev, n = _drop_short(ev, config.min_session_length)
    stats["dropped_short_sessions_after_item_filter"] = n

    # 4. cold-start policy
    kg = raw.knowledge
    kg_items = kg["item"].unique() if kg is not None else pl.Series("item", [], pl.Utf8)
    fit_items = ev.filter(pl.col("split") == "train")["item"].unique()
    period_items = ev.filter(period)["item"].unique()
    keep = config.cold_start == "keep"

    def known(pool: pl.Series) -> pl.Expr:
        ok = pl.col("item").is_in(pool.implode())
        return ok | pl.col("item").is_in(kg_items.implode()) if keep else ok

    before_valid = ev.filter(pl.col("split") == "valid").height
    before_test = ev.filter(pl.col("split") == "test").height
    ev = ev.filter(pl.col("split").is_in(["train"])
                   | ((pl.col("split") == "valid") & known(fit_items))
                   | ((pl.col("split") == "test") & known(period_items)))
    stats["cold_policy_removed_valid_events"] = before_valid - ev.filter(pl.col("split") == "valid").height
    stats["cold_policy_removed_test_events"] = before_test - ev.filter(pl.col("split") == "test").height
    ev, n = _drop_short(ev, config.min_session_length)
    stats["dropped_short_sessions_after_cold_policy"] = n
    for s in SPLITS:
        if ev.filter(pl.col("split") == s).height == 0:
            raise DataError(f"the {s} split is empty after filtering (min_session_length="
                            f"{config.min_session_length}, min_item_count={config.min_item_count}, "
                            f"cold_start={config.cold_start}); give more data or loosen the filters",
                            file=raw.source.get("events") or raw.source.get("path"))

    # 5. vocabularies. Items: training period first, by train count (desc), then id; then cold items.
    train_counts = ev.filter(pl.col("split") == "train").group_by("item").len().rename({"len": "train_count"})
    # every training-period item stays a candidate, also one whose only events were validation
    # events removed by the cold-start policy (the test split may still hold it)
    catalogue = pl.concat([ev.select("item"), period_items.to_frame("item")]).unique() \
        .join(train_counts, on="item", how="left").with_columns(
        pl.col("train_count").fill_null(0).cast(pl.Int64),
        pl.col("item").is_in(period_items.implode()).alias("in_period"))
    catalogue = catalogue.sort(["in_period", "train_count", "item"], descending=[True, True, False])
    n_items = catalogue.height
    items_tbl = catalogue.with_row_index("item_idx", offset=1).select(
        pl.col("item_idx").cast(pl.Int64), pl.col("item").alias("item_id"), "train_count")
    op_counts = ev.group_by("op").agg((pl.col("split") == "train").sum().alias("train_count"))
    ops_tbl = op_counts.sort(["train_count", "op"], descending=[True, False]).with_row_index("op_idx", offset=1) \
        .select(pl.col("op_idx").cast(pl.Int64), "op", pl.col("train_count").cast(pl.Int64))

    # 6. knowledge of catalogue items -> triplets of entity indices
    if kg is not None and kg.height:
        kg_in = kg.join(items_tbl.select(pl.col("item_id").alias("item"), "item_idx"), on="item", how="inner")
        stats["knowledge_triplets_outside_catalogue"] = kg.height - kg_in.height
        rel_tbl = kg_in.select("relation").unique().sort("relation").with_row_index("relation_idx") \
            .select(pl.col("relation_idx").cast(pl.Int64), "relation")
        attr_tbl = kg_in.select("relation", "value").unique().sort(["relation", "value"]) \
            .with_row_index("entity_idx", offset=n_items + 1).select(pl.col("entity_idx").cast(pl.Int64), "relation", "value")
        trip = kg_in.join(rel_tbl, on="relation").join(attr_tbl, on=["relation", "value"]) \
            .select("item_idx", "relation_idx", "entity_idx").sort(["item_idx", "relation_idx", "entity_idx"])
        kg_arr = trip.to_numpy().astype(np.int64).reshape(-1, 3)
    else:
        rel_tbl = pl.DataFrame({"relation_idx": pl.Series([], dtype=pl.Int64), "relation": pl.Series([], dtype=pl.Utf8)})
        attr_tbl = pl.DataFrame({"entity_idx": pl.Series([], dtype=pl.Int64), "relation": pl.Series([], dtype=pl.Utf8),
                                 "value": pl.Series([], dtype=pl.Utf8)})
        kg_arr = np.zeros((0, 3), dtype=np.int64)
    items_with_kg = int(np.unique(kg_arr[:, 0]).size) if kg_arr.size else 0

    # 7. per-split arrays, sessions in chronological order
    ev = ev.join(items_tbl.select(pl.col("item_id").alias("item"), "item_idx"), on="item") \
           .join(ops_tbl.select("op", "op_idx"), on="op")
    start = ev.group_by("sid").agg(pl.col("time").min().alias("start"))
    ev = ev.join(start, on="sid").sort(["start", "sid", "time", "row"])
    fit_count = np.zeros(n_items + 1, dtype=np.int64)
    fit_count[items_tbl["item_idx"].to_numpy()] = items_tbl["train_count"].to_numpy()

    arrays: dict[str, np.ndarray] = {"kg": kg_arr}
    tables: dict[str, pl.DataFrame] = {"items": items_tbl, "attributes": attr_tbl, "operations": ops_tbl,
                                       "relations": rel_tbl}
    split_stats = {}
    for s in SPLITS:
        e = ev.filter(pl.col("split") == s)
        lens = e.group_by("sid", maintain_order=True).agg(pl.len(), pl.col("session").first(), pl.col("start").first())
        offsets = np.zeros(lens.height + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(lens["len"].to_numpy())
        items = e["item_idx"].to_numpy().astype(np.int32)
        arrays[f"{s}.items"] = items
        arrays[f"{s}.ops"] = e["op_idx"].to_numpy().astype(np.int32)
        arrays[f"{s}.offsets"] = offsets
        tables[f"{s}.sessions"] = lens.select(pl.col("session").alias("session_key"), "start",
                                              pl.col("len").cast(pl.Int64).alias("length"))
        split_stats[s] = _split_stats(items, offsets, fit_count)

    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "mkmsr_version": __version__,
        "source": raw.source, "config": asdict(config),
        "counts": {"items": n_items, "attribute_values": attr_tbl.height, "entities": n_items + attr_tbl.height + 1,
                   "operations": ops_tbl.height, "relations": rel_tbl.height, "triplets": int(kg_arr.shape[0]),
                   "items_with_knowledge": items_with_kg,
                   "cold_items_in_catalogue": int((fit_count[1:] == 0).sum())},
        "relations": rel_tbl["relation"].to_list(), "operations": ops_tbl["op"].to_list()[:100],
        "splits": split_stats, "filtering": stats,
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        files = {}
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        for name, tbl in tables.items():
            tbl.write_parquet(tmp / f"{name}.parquet")
        for p in sorted(tmp.iterdir()):
            files[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
        manifest["files"] = files
        manifest["content_sha256"] = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in files.items()).encode()).hexdigest()
        write_json(tmp / "manifest.json", manifest)
    log.info("prepared %s: %d items, %s", out, n_items,
             ", ".join(f"{s} {v['sessions']} sessions/{v['samples']} samples" for s, v in split_stats.items()))
    return out


def _split_stats(items: np.ndarray, offsets: np.ndarray, fit_count: np.ndarray) -> dict:
    lens = np.diff(offsets)
    n_sess = int(lens.size)
    is_target = np.ones(items.size, dtype=bool)
    is_target[offsets[:-1]] = False  # the first event of a session is never a target
    targets = items[is_target]
    # repeat consumption: the target already occurs earlier in its session (vectorised:
    # an event repeats iff an earlier event of the same session has the same item)
    sess_of = np.repeat(np.arange(n_sess), lens)
    order = np.lexsort((np.arange(items.size), items, sess_of))
    same = np.zeros(items.size, dtype=bool)
    same[order[1:]] = (items[order[1:]] == items[order[:-1]]) & (sess_of[order[1:]] == sess_of[order[:-1]])
    return {
        "sessions": n_sess, "events": int(items.size), "samples": int(targets.size),
        "mean_session_length": round(float(lens.mean()), 4) if n_sess else 0.0,
        "max_session_length": int(lens.max()) if n_sess else 0,
        "items": int(np.unique(items).size),
        "cold_items": int(np.unique(items[fit_count[items] == 0]).size),
        "cold_target_samples": int((fit_count[targets] == 0).sum()),
        "cold_target_share": round(float((fit_count[targets] == 0).mean()), 4) if targets.size else 0.0,
        "repeat_target_share": round(float(same[is_target].mean()), 4) if targets.size else 0.0,
    }

