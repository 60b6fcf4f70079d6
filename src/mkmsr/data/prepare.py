"""Prepare once, train many times: canonical events + knowledge -> a versioned on-disk artifact.

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

Cold-start policy (``drop`` | ``keep``): an event of the validation or the test split whose
item never occurs in ``train`` (the split models fit) is removed (``drop``), or kept when the
item has knowledge triplets (``keep``) — then the item is in the catalogue and reachable only
through its knowledge. Validation and test are filtered against the same split because no
model is refit on train + valid after selection: an item seen only in validation is as unknown
to every model as one never seen (``test_filter="period"`` restores the older rule, test
filtered against train + valid, which left 88 of Demo's 1,681 test targets on items no model
had trained on). The catalogue is the
training period's items plus kept cold-start items; only catalogue items are ranked.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .. import __version__
from ..errors import ConfigError, DataError
from ..fsutil import atomic_dir, write_json
from .sources import RawData

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
    test_filter: str = "fit"          # cold-start drop: test items must occur in "fit" (the train split,
                                      # like validation; default) or in "period" (train + valid)
    exclude_latest: float = 0.0       # rolling-origin evaluation: the latest share of sessions is left out
                                      # before the split (its events are never read), so the test block is
                                      # the test_fraction of sessions just before it. Both shares count the
                                      # same sessions, so exclude_latest = k * test_fraction moves the test
                                      # block exactly k blocks back: k = 0, 1, 2 give three disjoint,
                                      # adjacent test blocks, each with only earlier sessions to train on

    def validate(self) -> None:
        if self.cold_start not in ("drop", "keep"):
            raise ConfigError(f"cold_start must be 'drop' or 'keep', got {self.cold_start!r}")
        if self.test_filter not in ("fit", "period"):
            raise ConfigError(f"test_filter must be 'fit' or 'period', got {self.test_filter!r}")
        if self.min_session_length < 2:
            raise ConfigError("min_session_length must be >= 2: a session of one micro-behaviour "
                              "has no next item to predict")
        if self.min_item_count < 1:
            raise ConfigError("min_item_count must be >= 1")
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {v}")
        if not 0.0 <= self.exclude_latest < 1.0 or self.exclude_latest + self.test_fraction >= 1.0:
            raise ConfigError(f"exclude_latest must be in [0, 1 - test_fraction), got {self.exclude_latest} "
                              f"with test_fraction {self.test_fraction}")


class _Clock:
    """Debug log of wall and CPU seconds per preparation stage (``mkmsr -vv prepare``)."""

    def __init__(self) -> None:
        self.t, self.c = time.perf_counter(), time.process_time()

    def __call__(self, stage: str) -> None:
        t, c = time.perf_counter(), time.process_time()
        log.debug("prepare %-12s wall %6.2f s  cpu %6.2f s", stage, t - self.t, c - self.c)
        self.t, self.c = t, c


def _latest(sid: np.ndarray, start: np.ndarray, fraction: float) -> np.ndarray:
    """sids of the latest ``fraction`` of the sessions ``sid`` (by start time, then sid)."""
    k = int(round(fraction * sid.size))
    if k <= 0:
        return sid[:0]
    order = np.argsort(start[sid], kind="stable")  # ``sid`` is ascending: ties stay in sid order
    return sid[order[-k:]]


def _session_index(ev: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Give every (period, session) a dense Int64 ``sid`` ordered as (period text, session).

    Returns ``(events with sid, no period/session; sessions: sid, period (str), session)``.
    Raw-format events (one period, integer session numbers 0..S-1) take a fast path without a
    join: their session number is the sid.
    """
    periods = ev["period"].unique()
    if periods.len() == 1 and ev["session"].dtype.is_integer() and ev.height:
        # dense session numbers 0..n-1 in order (what mkmsr.raw_formats writes): the sid as is
        n = ev["session"].max() + 1
        d = ev["session"].diff().slice(1)
        if ev["session"][0] == 0 and (d.len() == 0 or (d.min() >= 0 and d.max() <= 1)):
            sess = pl.DataFrame({"sid": np.arange(n, dtype=np.int64)}).with_columns(
                pl.lit(str(periods[0])).alias("period"), pl.col("sid").alias("session"))
            return ev.rename({"session": "sid"}).drop("period").with_columns(pl.col("sid").cast(pl.Int64)), sess
    keys = ev.select(pl.col("period").cast(pl.Utf8), "session").unique().sort(["period", "session"]) \
        .with_row_index("sid").with_columns(pl.col("sid").cast(pl.Int64))
    ev = ev.with_columns(pl.col("period").cast(pl.Utf8)).join(keys, on=["period", "session"], how="left") \
        .drop("period", "session")
    return ev, keys


def _sorted_by_session(ev: pl.DataFrame) -> bool:
    """Are events ordered by (sid, time, row)?"""
    if ev.height < 2:
        return True
    ok = ev.select(
        ((pl.col("sid").diff() > 0) | ((pl.col("sid").diff() == 0)
         & ((pl.col("time").diff() > 0) | ((pl.col("time").diff() == 0) & (pl.col("row").diff() > 0)))))
        .slice(1).all()).item()
    return bool(ok)


def prepare(raw: RawData, out: str | Path, config: PrepareConfig | None = None,
            overwrite: bool = False) -> Path:
    """Build the artifact in ``out`` (written to a temporary directory, then renamed).

    Returns the artifact path. Raises DataError when a split ends up empty, ConfigError on bad
    options, FileExistsError when ``out`` exists and ``overwrite`` is false.

    Works on integer session indices and numpy gathers throughout (no string keys per event):
    docs/performance.md has the time and memory of a 37M-event log.
    """
    config = config or PrepareConfig()
    config.validate()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (use --overwrite to replace it)")
    t_start = time.perf_counter()
    clock = _Clock()
    where = raw.source.get("events") or raw.source.get("path")
    kg = raw.knowledge
    if kg is not None and kg.height and kg["item"].dtype != raw.events["item"].dtype:
        raise DataError(f"knowledge item ids are {kg['item'].dtype} but event item ids are "
                        f"{raw.events['item'].dtype}", file=raw.knowledge_file, column="item",
                        expected="the same id type in events and knowledge")
    ev, sess = _session_index(raw.events.select("period", "session", "item", "op", "time", "row"))
    if not _sorted_by_session(ev):
        ev = ev.sort(["sid", "time", "row"])
    n_sess = sess.height
    stats: dict = {"input_events": ev.height, "input_sessions": n_sess}
    sid_all = ev["sid"].to_numpy()
    # events are ordered by (sid, time, row): a session starts at its first event
    lens0 = np.bincount(sid_all, minlength=n_sess)
    first0 = np.cumsum(lens0) - lens0
    start_time = np.full(n_sess, np.inf)
    start_time[lens0 > 0] = ev["time"].to_numpy()[first0[lens0 > 0]]
    sess_period = sess["period"].to_numpy()
    clock("index")

    def drop_short(ev: pl.DataFrame, sid: np.ndarray) -> tuple[pl.DataFrame, np.ndarray, int]:
        lens = np.bincount(sid, minlength=n_sess)
        short = (lens > 0) & (lens < config.min_session_length)
        if not short.any():
            return ev, sid, 0
        keep = ~short[sid]
        return ev.filter(pl.Series(keep)), sid[keep], int(short.sum())

    # 1. raw short sessions out, so that split fractions count usable sessions
    ev, sid_all, stats["dropped_short_sessions_raw"] = drop_short(ev, sid_all)
    if ev.height == 0:
        raise DataError(f"no session has {config.min_session_length} or more events; a session needs at "
                        "least 2 micro-behaviours to give a prefix -> next-item sample", file=where)
    clock("short")

    # 2. chronological split on sessions (codes 0 train, 1 valid, 2 test)
    alive = np.zeros(n_sess, dtype=bool)
    alive[sid_all] = True
    code = np.select([sess_period == "valid", sess_period == "test"], [1, 2], 0).astype(np.int8)
    unsplit = np.nonzero(alive & (sess_period == "all"))[0]
    if config.exclude_latest and not unsplit.size:
        raise ConfigError("exclude_latest moves a test block cut from the log; with test events given "
                          "separately there is none to move")
    if unsplit.size:
        n_out = int(round(config.exclude_latest * unsplit.size))
        n_test = int(round(config.test_fraction * unsplit.size))
        order = unsplit[np.argsort(start_time[unsplit], kind="stable")]  # ties stay in sid order
        end = order.size - n_out
        code[order[max(0, end - n_test):end]] = 2
        if n_out:   # code 3: left out of every split
            code[order[end:]] = 3
            keep = code[sid_all] != 3
            ev, sid_all = ev.filter(pl.Series(keep)), sid_all[keep]
            alive[order[end:]] = False
            stats["excluded_latest_sessions"] = n_out   # (absent when none: manifests as before)
    if not (alive & (sess_period == "valid")).any():
        code[_latest(np.nonzero(alive & (code == 0))[0], start_time, config.valid_fraction)] = 1
    split = code[sid_all]

    # 3. rare items (counted over the training period) out of the training period
    period = split < 2
    counts = ev.filter(pl.Series(period)).group_by("item").len()
    rare = counts.filter(pl.col("len") < config.min_item_count)["item"]
    removed = 0
    if rare.len():
        drop = period & ev["item"].is_in(rare.implode()).to_numpy()
        removed = int(drop.sum())
        ev, sid_all = ev.filter(pl.Series(~drop)), sid_all[~drop]
    stats["removed_rare_item_events"] = removed
    ev, sid_all, stats["dropped_short_sessions_after_item_filter"] = drop_short(ev, sid_all)
    clock("rare")

    # 4. cold-start policy
    split = code[sid_all]
    kg_items = kg["item"].unique() if kg is not None else pl.Series("item", [], ev["item"].dtype)
    fit_items = ev.filter(pl.Series(split == 0))["item"].unique()
    period_items = ev.filter(pl.Series(split < 2))["item"].unique()
    keep_cold = config.cold_start == "keep"

    def known(pool: pl.Series) -> np.ndarray:
        ok = ev["item"].is_in(pool.implode())
        if keep_cold:
            ok = ok | ev["item"].is_in(kg_items.implode())
        return ok.to_numpy()

    test_pool = fit_items if config.test_filter == "fit" else period_items
    keep = (split == 0) | ((split == 1) & known(fit_items)) | ((split == 2) & known(test_pool))
    stats["cold_policy_removed_valid_events"] = int(((split == 1) & ~keep).sum())
    stats["cold_policy_removed_test_events"] = int(((split == 2) & ~keep).sum())
    if not keep.all():
        ev, sid_all = ev.filter(pl.Series(keep)), sid_all[keep]
    ev, sid_all, stats["dropped_short_sessions_after_cold_policy"] = drop_short(ev, sid_all)
    split = code[sid_all]
    for k, s in enumerate(SPLITS):
        if not (split == k).any():
            raise DataError(f"the {s} split is empty after filtering (min_session_length="
                            f"{config.min_session_length}, min_item_count={config.min_item_count}, "
                            f"cold_start={config.cold_start}); give more data or loosen the filters", file=where)
    clock("cold")

    # 5. vocabularies. Items: training period first, by train count (desc), then id; then cold items.
    is_train = pl.Series("is_train", split == 0)
    train_counts = ev.select("item").with_columns(is_train).filter("is_train").group_by("item").len() \
        .rename({"len": "train_count"})
    # every training-period item stays a candidate, also one whose only events were validation
    # events removed by the cold-start policy (the test split may still hold it)
    catalogue = pl.concat([ev["item"].unique().to_frame("item"), period_items.to_frame("item")]).unique() \
        .join(train_counts, on="item", how="left").with_columns(
        pl.col("train_count").fill_null(0).cast(pl.Int64),
        pl.col("item").is_in(period_items.implode()).alias("in_period"))
    catalogue = catalogue.sort(["in_period", "train_count", "item"], descending=[True, True, False])
    n_items = catalogue.height
    item_map = catalogue.with_row_index("item_idx", offset=1).select(
        pl.col("item_idx").cast(pl.Int64), "item", "train_count")
    items_tbl = item_map.select("item_idx", pl.col("item").cast(pl.Utf8).alias("item_id"), "train_count")
    op_counts = ev.select("op").with_columns(is_train).group_by("op").agg(pl.col("is_train").sum().alias("train_count"))
    op_map = op_counts.sort(["train_count", "op"], descending=[True, False]).with_row_index("op_idx", offset=1) \
        .select(pl.col("op_idx").cast(pl.Int64), "op", pl.col("train_count").cast(pl.Int64))
    ops_tbl = op_map.with_columns(pl.col("op").cast(pl.Utf8))
    clock("vocab")

    # 6. knowledge of catalogue items -> triplets of entity indices
    if kg is not None and kg.height:
        kg_in = kg.join(item_map.select("item", "item_idx"), on="item", how="inner")
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
    clock("knowledge")

    # 7. per-split arrays, sessions in chronological order (events stay ordered by (sid, time, row),
    #    so a session is a contiguous block: reordering sessions is a gather, not a sort)
    ev_items = ev.select(pl.col("item").replace_strict(item_map["item"], item_map["item_idx"],
                                                       return_dtype=pl.Int32))["item"].to_numpy()
    ev_ops = ev.select(pl.col("op").replace_strict(op_map["op"], op_map["op_idx"],
                                                   return_dtype=pl.Int32))["op"].to_numpy()
    lens_all = np.bincount(sid_all, minlength=n_sess)
    off_all = np.zeros(n_sess + 1, dtype=np.int64)
    np.cumsum(lens_all, out=off_all[1:])
    # a session starts at its first remaining event (filters may have removed earlier ones)
    alive = lens_all > 0
    start_time = np.full(n_sess, np.inf)
    start_time[alive] = ev["time"].to_numpy()[off_all[:-1][alive]]
    del ev
    clock("map ids")
    fit_count = np.zeros(n_items + 1, dtype=np.int64)
    fit_count[items_tbl["item_idx"].to_numpy()] = items_tbl["train_count"].to_numpy()
    keys = sess.select("sid", "session")
    sk = raw.session_keys
    if sk is not None and sk.height == n_sess and keys["session"].dtype == sk["session"].dtype \
            and keys["session"].equals(sk["session"]):
        keys = keys.with_columns(sk["session_key"].alias("session"))  # aligned row for row: no join
    elif sk is not None:
        keys = keys.join(sk, on="session", how="left").select(
            "sid", pl.coalesce("session_key", pl.col("session").cast(pl.Utf8)).alias("session"))

    arrays: dict[str, np.ndarray] = {"kg": kg_arr}
    tables: dict[str, pl.DataFrame] = {"items": items_tbl, "attributes": attr_tbl, "operations": ops_tbl,
                                       "relations": rel_tbl}
    split_stats = {}
    for k, s in enumerate(SPLITS):
        sids = np.nonzero(alive & (code == k))[0]
        sids = sids[np.argsort(start_time[sids], kind="stable")]  # by start, ties by sid
        lens = lens_all[sids]
        offsets = np.zeros(sids.size + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        idx = np.repeat(off_all[sids] - offsets[:-1], lens) + np.arange(offsets[-1], dtype=np.int64)
        items = ev_items[idx]
        arrays[f"{s}.items"] = items
        arrays[f"{s}.ops"] = ev_ops[idx]
        arrays[f"{s}.offsets"] = offsets
        tables[f"{s}.sessions"] = pl.DataFrame({
            "session_key": keys["session"].gather(sids).cast(pl.Utf8), "start": start_time[sids],
            "length": lens.astype(np.int64)})
        split_stats[s] = _split_stats(items, offsets, fit_count)
    clock("splits")

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
    clock("write")
    log.info("prepared %s in %.1f s: %d items, %s", out, time.perf_counter() - t_start, n_items,
             ", ".join(f"{s} {v['sessions']} sessions/{v['samples']} samples" for s, v in split_stats.items()))
    return out


def _split_stats(items: np.ndarray, offsets: np.ndarray, fit_count: np.ndarray) -> dict:
    lens = np.diff(offsets)
    n_sess = int(lens.size)
    is_target = np.ones(items.size, dtype=bool)
    is_target[offsets[:-1]] = False  # the first event of a session is never a target
    targets = items[is_target]
    # repeat consumption: the target already occurs earlier in its session. The first event of
    # a session is never a repeat, so the repeated targets are the events whose (session, item)
    # pair occurred before: n_events - n_distinct_pairs (hashing, not sorting: linear time)
    sess_of = np.repeat(np.arange(n_sess, dtype=np.int64), lens)
    n_repeat = int(items.size - pl.Series(sess_of * (int(fit_count.size) + 1) + items).n_unique()) if items.size else 0
    present = np.bincount(items, minlength=fit_count.size) > 0
    return {
        "sessions": n_sess, "events": int(items.size), "samples": int(targets.size),
        "mean_session_length": round(float(lens.mean()), 4) if n_sess else 0.0,
        "max_session_length": int(lens.max()) if n_sess else 0,
        "items": int(present.sum()),
        "cold_items": int((present & (fit_count == 0)).sum()),
        "cold_target_samples": int((fit_count[targets] == 0).sum()),
        "cold_target_share": round(float((fit_count[targets] == 0).mean()), 4) if targets.size else 0.0,
        "repeat_target_share": round(n_repeat / targets.size, 4) if targets.size else 0.0,
    }
