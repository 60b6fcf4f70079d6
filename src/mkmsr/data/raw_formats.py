"""Raw public datasets in their published layouts -> canonical events + knowledge.

An explicit registry (:data:`FORMATS`): ``mkmsr prepare --format NAME --source DIR`` reads the
files a format names from ``DIR``. Each reader returns a :class:`~mkmsr.sources.RawData` in
the canonical columns of :mod:`mkmsr.sources`, with two liberties taken for size (a JDATA
action log has 37M rows): ``session`` is an Int64 session number (its human-readable key
``"<user>#<n>"`` is in ``RawData.session_keys``, one row per session), and ``item`` / ``op``
keep the file's integer dtype where the file has integer ids. :func:`mkmsr.prepare.prepare`
accepts either; the artifact's id maps hold the ids as text.

Files are scanned with Polars' streaming engine: every column is parsed and validated in
the scan, so only the compact typed columns (about 40 bytes per event) are ever held in
memory, never the text. A malformed row stops the scan with a :class:`DataError` that names
the file, the 1-based data row, the column and what was expected; finding that row takes a
second scan of the file, which only the failing case pays for.

=============  =======================================================================
format         files in ``DIR``
=============  =======================================================================
``jdata2018``  ``jdata_action.csv`` (user_id, sku_id, action_time, module_id, type:
               1 browse, 2 order, 3 follow, 4 comment, 5 add-to-cart) and
               ``jdata_product.csv`` (sku_id, brand, shop_id, cate, market_time).
               Sessions: per user a gap > 1 hour starts a new one. Knowledge: brand,
               shop, cate, years (launch year-month ``YYYYMM`` from market_time, the
               Demo's relation). ``jdata2019`` is the same layout.
``jdata2017``  ``JData_Action_201602.csv``, ``..._201603.csv``, ``..._201604.csv``
               (user_id as a float, sku_id, time, model_id often empty, type: 1 browse,
               2 add-to-cart, 3 remove-from-cart, 4 order, 5 follow, 6 click, cate,
               brand) and ``JData_Product.csv`` (sku_id, a1, a2, a3, cate, brand; -1 =
               unknown; only part of the items). Exact duplicate action rows are dropped.
               Sessions: a gap > 30 minutes. Knowledge: cate and brand from the action
               rows (every item), a1-a3 where the product table knows them.
``kkbox``      ``train.csv`` (msno, song_id, source_system_tab, source_screen_name,
               source_type, target; rows in time order, no timestamp), ``songs.csv``
               (song_id, song_length, genre_ids ``|``-separated, artist_name, composer,
               lyricist, language as a float) and ``song_extra_info.csv`` (song_id, name,
               isrc). Operation: source_system_tab (empty and ``null`` are one
               ``unknown`` operation). The row number is the clock: per user a jump of
               more than 2,000 rows starts a new session. Knowledge: artist, genre (one
               triplet per genre id), language, year (from the ISRC's characters 6-7:
               yy < 18 -> 20yy, else 19yy).
``taobao``     ``UserBehavior.csv`` (Taobao UserBehavior, no header: user_id, item_id,
               category_id, behavior_type, timestamp in unix seconds; grouped by user,
               not in time order across users). Operation: behavior_type ``pv``,
               ``cart``, ``fav``, ``buy`` (anything else is an error). Sessions: per
               user in time order (ties keep file order), a gap > 30 minutes.
               Knowledge: cate, one triplet per (item, category_id) the file pairs:
               an item seen with two categories (one in the public head) keeps both,
               as KKBOX's genres do (the knowledge model takes any number of values
               per relation: TransH a triplet each, ``id+attributes`` their mean).
               Rows timed outside the official period 2017-11-25 .. 2017-12-03 in
               UTC+8 (:data:`TAOBAO_PERIOD`) are dropped and counted unless
               ``keep_out_of_period``. A malformed last row (a download cut mid-row)
               is an error naming it unless ``drop_truncated_last_row``; a malformed
               row elsewhere is always an error. Line numbers are rows (no header).
=============  =======================================================================

Datetimes may carry a fraction (``2018-02-04 08:28:15.0``). The paper's filters (sessions of
length >= 2, items seen >= 3 times) are the defaults of these formats (see
:data:`RawFormat.min_item_count`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from ..errors import ConfigError, DataError
from .sources import EVENT_COLUMNS, RawData

log = logging.getLogger(__name__)

#: the period column's dtype for readers that split by time (every row is "all")
PERIOD = pl.Enum(["train", "valid", "test", "all"])
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S%.f"  # "%.f": an optional fraction such as the trailing ".0"


# --------------------------------------------------------------------------------------------
# a validating, streaming CSV scan
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Col:
    """How to parse one CSV column.

    kind ``int``: an integer; ``float_int``: an integer that may be written as a float
    (``266079.0``); ``float``: a number; ``datetime``: ``YYYY-MM-DD HH:MM:SS[.f]`` to unix
    seconds (Float64); ``str``: text, stripped. ``required`` cells may not be empty;
    optional empty cells become null.
    """

    kind: str
    required: bool = True
    expected: str = ""

    def describe(self) -> str:
        return self.expected or {"int": "an integer", "float_int": "an integer (e.g. 266079 or 266079.0)",
                                 "float": "a number", "datetime": "a date-time like 2018-02-04 08:28:15[.0]",
                                 "str": "a value"}[self.kind]


def _parse(name: str, col: Col) -> tuple[pl.Expr, pl.Expr]:
    """(parsed value expression, 'this cell is bad' expression) for a text column."""
    raw = pl.col(name).str.strip_chars()
    empty = raw.is_null() | (raw == "")
    if col.kind == "int":
        val = raw.cast(pl.Int64, strict=False)
    elif col.kind == "float_int":
        f = raw.cast(pl.Float64, strict=False)
        val = pl.when(f == f.floor()).then(f.cast(pl.Int64, strict=False))
    elif col.kind == "float":
        f = raw.cast(pl.Float64, strict=False)
        val = pl.when(f.is_finite()).then(f)
    elif col.kind == "datetime":
        val = (raw.str.to_datetime(DATETIME_FORMAT, time_unit="us", strict=False).dt.epoch("us")
               .cast(pl.Float64) / 1e6)
    elif col.kind == "str":
        val = pl.when(~empty).then(raw)
    else:
        raise ValueError(f"unknown column kind {col.kind!r}")
    bad = (val.is_null() & ~empty) | (empty if col.required else pl.lit(False))
    return val.alias(name), bad


def _fast(name: str, col: Col) -> tuple[pl.DataType, pl.Expr, pl.Expr | None]:
    """(dtype the CSV reader parses natively, value expression, 'bad cell' expression or None)
    for the fast path. Native integer parsing fails loudly on text; the rest is checked here."""
    c = pl.col(name)
    if col.kind == "int":
        return pl.Int64, c, None
    if col.kind == "float_int":
        return pl.Float64, pl.when(c == c.floor()).then(c.cast(pl.Int64, strict=False)), c.is_not_null() & (c != c.floor())
    if col.kind == "float":
        return pl.Float64, c, c.is_not_null() & ~c.is_finite()
    if col.kind == "datetime":
        # the common shape "YYYY-MM-DD HH:MM:SS" takes the exact-format fast parser; a fraction
        # (the JDATA files' ".0") is added from the rest, so "...:15.0" and "...:15" agree
        head = c.str.slice(0, 19).str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us", strict=False)
        frac = pl.when(c.str.len_bytes() > 19).then(("0" + c.str.slice(19)).cast(pl.Float64, strict=False)) \
            .otherwise(0.0)
        val = head.dt.epoch("us").cast(pl.Float64) / 1e6 + frac
        return pl.Utf8, val, c.is_not_null() & val.is_null()
    # text: a quoted "" is an empty cell too (null where optional, an error where required)
    blank = c.str.strip_chars() == ""
    return pl.Utf8, pl.when(~blank).then(c), (blank.fill_null(False) if col.required else None)


def scan_csv(path: Path, columns: dict[str, Col]) -> pl.DataFrame:
    """Stream ``path`` (a CSV with a header) into typed ``columns`` plus a 1-based ``__row``.

    Every column of ``columns`` must be in the header; other columns are not read. Fast path:
    the reader parses numbers natively and only the datetimes go through an expression; if it
    meets anything unexpected (a parse failure, an empty required cell, a fraction in an
    integer) the file is scanned again by the validating path, which finds the first bad cell
    and raises DataError naming file, row, column and the expectation.
    """
    file = str(path)
    if not path.exists():
        raise DataError("file not found", file=file)
    if path.stat().st_size == 0:
        raise DataError("the file is empty", file=file, expected="a header line and data rows")
    try:
        header = pl.read_csv(path, n_rows=0, infer_schema=False).columns
    except Exception as exc:
        raise DataError(f"could not read the CSV header: {exc}", file=file) from exc
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"missing column {missing[0]!r}; the file has columns {header}", file=file,
                        column=missing[0])
    fast = {n: _fast(n, c) for n, c in columns.items()}
    checks = [b for _, _, b in fast.values() if b is not None]
    lf = (pl.scan_csv(path, schema_overrides={n: f[0] for n, f in fast.items()}, infer_schema=False,
                      row_index_name="__row", row_index_offset=1)
          .select(pl.col("__row").cast(pl.Int64), *[f[1].alias(n) for n, f in fast.items()],
                  (pl.any_horizontal(checks) if checks else pl.lit(False)).alias("__bad")))
    try:
        df = lf.collect(engine="streaming")
        ok = df.height > 0 and not df["__bad"].any() and all(
            df[n].null_count() == 0 for n, c in columns.items() if c.required)
    except pl.exceptions.PolarsError:
        ok = False
    if ok:
        return df.drop("__bad")
    log.debug("%s: fast scan met bad input; locating it", file)
    return _validating_scan(path, columns)


def _validating_scan(path: Path, columns: dict[str, Col]) -> pl.DataFrame:
    """Read every column as text and parse it with a per-cell 'bad' flag: slow, exact."""
    file = str(path)
    names = list(columns)
    parsed = [_parse(n, c) for n, c in columns.items()]
    bad_code = pl.coalesce([pl.when(b).then(pl.lit(i, pl.Int16)) for i, (_, b) in enumerate(parsed)])
    lf = (pl.scan_csv(path, infer_schema=False, row_index_name="__row", row_index_offset=1)
          .select(pl.col("__row").cast(pl.Int64), *[v for v, _ in parsed], bad_code.alias("__bad")))
    try:
        df = lf.collect(engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"not a well-formed CSV file: {str(exc).splitlines()[0]}", file=file) from exc
    if df.height == 0:
        raise DataError("the file has a header but no rows", file=file, expected="at least one row")
    bad = df.filter(pl.col("__bad").is_not_null()).head(1)
    if bad.height:
        row, i = int(bad["__row"][0]), int(bad["__bad"][0])
        name = names[i]
        # the text of the bad cell: one more scan, paid only when the input is malformed
        cell = (pl.scan_csv(path, infer_schema=False, row_index_name="__row", row_index_offset=1)
                .filter(pl.col("__row") == row).select(name).collect()[name][0])
        what = "empty value" if cell is None or not cell.strip() else f"cannot parse {cell!r}"
        raise DataError(what, file=file, row=row, column=name, expected=columns[name].describe())
    return df.drop("__bad")


def _require_files(source: Path, names: list[str]) -> None:
    if not source.is_dir():
        raise DataError(f"not a directory; expected a folder holding {', '.join(names)}", file=str(source))
    missing = [n for n in names if not (source / n).exists()]
    if missing:
        raise DataError(f"missing file {missing[0]!r} (this format reads {', '.join(names)})",
                        file=str(source / missing[0]))


def _check_codes(df: pl.DataFrame, column: str, allowed: range, file: str) -> None:
    bad = df.filter(~pl.col(column).is_in(list(allowed))).head(1)
    if bad.height:
        raise DataError(f"unknown code {bad[column][0]}", file=file, row=int(bad["__row"][0]), column=column,
                        expected=f"one of {list(allowed)}")


# --------------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------------

def cut_sessions(df: pl.DataFrame, gap: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Sessions by inactivity: per user, a step in ``time`` greater than ``gap`` starts a new one.

    ``df`` has ``user, time, row`` (any integer or text user id). Returns ``(events, keys)``:
    the events sorted by (user, time, row) with an Int64 ``session`` number (0.., in that
    order) and without ``user``; ``keys`` maps each session number to ``"<user>#<n>"`` (n
    counts the user's sessions from 0).
    """
    n = df.height
    in_time_order = df.select((pl.col("time").diff().fill_null(0) >= 0).all()
                              & (pl.col("row").diff().fill_null(1) > 0).all()).item()
    bits = max(1, n.bit_length())
    if in_time_order and df["user"].dtype.is_integer() and n and df["user"].min() >= 0 \
            and int(df["user"].max()) < (1 << (62 - bits)):
        # a log in time order with integer users (JDATA): a stable sort by user keeps (time, row)
        # order; as one int64 key (user, file position) it is a plain numpy sort, several times
        # faster than a multi-column sort, and the low bits give the permutation
        key = (df["user"].to_numpy().astype(np.int64) << bits) | np.arange(n, dtype=np.int64)
        perm = np.sort(key) & ((1 << bits) - 1)
        df = pl.DataFrame({c: df[c].to_numpy()[perm] for c in df.columns}, schema=df.schema)
    elif in_time_order:
        df = df.sort("user", maintain_order=True)
    else:
        df = df.sort(["user", "time", "row"])
    user = df["user"]
    t = df["time"].to_numpy()
    user_new = np.ones(df.height, dtype=bool)
    user_new[1:] = (user.slice(1) != user.slice(0, df.height - 1)).to_numpy()
    new = user_new.copy()
    new[1:] |= np.diff(t) > gap
    session = np.cumsum(new, dtype=np.int64) - 1
    # n = index of the session within its user: session - the user's first session
    first = np.maximum.accumulate(np.where(user_new, session, 0))
    starts = np.nonzero(new)[0]
    keys = pl.DataFrame({"session": session[starts], "user": user.gather(starts),
                         "n": (session - first)[starts]}).select(
        "session", pl.format("{}#{}", "user", "n").alias("session_key"))
    return df.drop("user").with_columns(pl.Series("session", session)), keys


def _events(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.lit("all", PERIOD).alias("period")).select(EVENT_COLUMNS)


# --------------------------------------------------------------------------------------------
# JDATA 2018 / 2019
# --------------------------------------------------------------------------------------------

JDATA2018_ACTION = "jdata_action.csv"
JDATA2018_PRODUCT = "jdata_product.csv"


def read_jdata2018(source: str | Path, session_gap: float | None = None) -> RawData:
    """JDATA 2018/2019 (see the module docstring). ``session_gap`` in seconds (default 3600)."""
    source = Path(source)
    gap = 3600.0 if session_gap is None else float(session_gap)
    _require_files(source, [JDATA2018_ACTION, JDATA2018_PRODUCT])
    action = source / JDATA2018_ACTION
    df = scan_csv(action, {"user_id": Col("int"), "sku_id": Col("int"), "action_time": Col("datetime"),
                           "type": Col("int", expected="an operation code 1..5")})
    _check_codes(df, "type", range(1, 6), str(action))
    df = df.select(pl.col("user_id").alias("user"), pl.col("sku_id").alias("item"),
                   pl.col("type").cast(pl.Int8).alias("op"), pl.col("action_time").alias("time"),
                   pl.col("__row").alias("row"))
    events, keys = cut_sessions(df, gap)
    product = source / JDATA2018_PRODUCT
    p = scan_csv(product, {"sku_id": Col("int"), "brand": Col("int", required=False),
                           "shop_id": Col("int", required=False), "cate": Col("int", required=False),
                           "market_time": Col("datetime", required=False)})
    p = p.with_columns(pl.from_epoch((pl.col("market_time") * 1e6).cast(pl.Int64), time_unit="us")
                       .dt.strftime("%Y%m").alias("years"))
    knowledge = _triplets(p, {"brand": "brand", "shop": "shop_id", "cate": "cate", "years": "years"})
    return RawData(_events(events), knowledge, {"format": "jdata2018", "path": str(source.resolve()),
                                                "session_gap_seconds": gap},
                   knowledge_file=str(product), session_keys=keys)


def _triplets(df: pl.DataFrame, relations: dict[str, str], item: str = "sku_id") -> pl.DataFrame:
    """Long (item, relation, value) triplets from wide columns; null and -1 (unknown) are skipped."""
    parts = []
    for rel, col in relations.items():
        v = pl.col(col).cast(pl.Utf8)
        parts.append(df.select(pl.col(item).alias("item"), pl.lit(rel).alias("relation"), v.alias("value"))
                     .filter(pl.col("value").is_not_null() & (pl.col("value") != "-1")))
    return pl.concat(parts).unique(maintain_order=True)


# --------------------------------------------------------------------------------------------
# JDATA 2017
# --------------------------------------------------------------------------------------------

JDATA2017_ACTIONS = ("JData_Action_201602.csv", "JData_Action_201603.csv", "JData_Action_201604.csv")
JDATA2017_PRODUCT = "JData_Product.csv"
#: rows of one action file are numbered from file_index * ROW_STRIDE: a global file order
ROW_STRIDE = 10 ** 10


def read_jdata2017(source: str | Path, session_gap: float | None = None) -> RawData:
    """JDATA 2017 (see the module docstring). ``session_gap`` in seconds (default 1800)."""
    source = Path(source)
    gap = 1800.0 if session_gap is None else float(session_gap)
    _require_files(source, [*JDATA2017_ACTIONS, JDATA2017_PRODUCT])
    cols = {"user_id": Col("float_int"), "sku_id": Col("int"), "time": Col("datetime"),
            "model_id": Col("str", required=False), "type": Col("int", expected="an operation code 1..6"),
            "cate": Col("int"), "brand": Col("int")}
    frames = []
    for k, name in enumerate(JDATA2017_ACTIONS):
        df = scan_csv(source / name, cols)
        _check_codes(df, "type", range(1, 7), str(source / name))
        frames.append(df.with_columns(pl.col("__row") + k * ROW_STRIDE))
    df = pl.concat(frames)
    # exact duplicate rows (every column equal) are one event; the first one is kept
    n = df.height
    df = df.unique(subset=list(cols), keep="first", maintain_order=True)
    if df.height < n:
        log.info("jdata2017: dropped %d exact duplicate action rows", n - df.height)
    item_kg = df.select("sku_id", "cate", "brand")
    df = df.select(pl.col("user_id").alias("user"), pl.col("sku_id").alias("item"),
                   pl.col("type").cast(pl.Int8).alias("op"), pl.col("time"), pl.col("__row").alias("row"))
    events, keys = cut_sessions(df, gap)
    product = source / JDATA2017_PRODUCT
    p = scan_csv(product, {"sku_id": Col("int"), "a1": Col("int", required=False),
                           "a2": Col("int", required=False), "a3": Col("int", required=False),
                           "cate": Col("int", required=False), "brand": Col("int", required=False)})
    knowledge = pl.concat([_triplets(item_kg.unique(), {"cate": "cate", "brand": "brand"}),
                           _triplets(p, {"a1": "a1", "a2": "a2", "a3": "a3"})]).unique(maintain_order=True)
    return RawData(_events(events), knowledge, {"format": "jdata2017", "path": str(source.resolve()),
                                                "session_gap_seconds": gap},
                   knowledge_file=str(product), session_keys=keys)


# --------------------------------------------------------------------------------------------
# KKBOX
# --------------------------------------------------------------------------------------------

KKBOX_TRAIN = "train.csv"
KKBOX_SONGS = "songs.csv"
KKBOX_EXTRA = "song_extra_info.csv"
UNKNOWN_OP = "unknown"


def isrc_year(isrc: pl.Expr) -> pl.Expr:
    """Release year from an ISRC (``CC-XXX-YY-NNNNN`` without dashes): characters 6-7 are the
    year, yy < 18 -> 2000 + yy, else 1900 + yy; null where they are not two digits."""
    yy = isrc.str.strip_chars().str.slice(5, 2)
    y = pl.when(yy.str.contains(r"^\d\d$")).then(yy.cast(pl.Int64, strict=False))
    return pl.when(y < 18).then(2000 + y).otherwise(1900 + y)


def read_kkbox(source: str | Path, session_gap: float | None = None) -> RawData:
    """KKBOX (see the module docstring). ``session_gap`` in rows (default 2000)."""
    source = Path(source)
    gap = 2000.0 if session_gap is None else float(session_gap)
    _require_files(source, [KKBOX_TRAIN, KKBOX_SONGS, KKBOX_EXTRA])
    train = source / KKBOX_TRAIN
    df = scan_csv(train, {"msno": Col("str", expected="a user id"), "song_id": Col("str", expected="a song id"),
                          "source_system_tab": Col("str", required=False)})
    op = pl.col("source_system_tab")
    df = df.select(pl.col("msno").alias("user"), pl.col("song_id").alias("item"),
                   pl.when(op.is_null() | (op.str.to_lowercase() == "null")).then(pl.lit(UNKNOWN_OP))
                   .otherwise(op).alias("op"),
                   pl.col("__row").cast(pl.Float64).alias("time"), pl.col("__row").alias("row"))
    events, keys = cut_sessions(df, gap)
    songs = scan_csv(source / KKBOX_SONGS, {"song_id": Col("str", expected="a song id"),
                                            "genre_ids": Col("str", required=False),
                                            "artist_name": Col("str", required=False),
                                            "language": Col("float", required=False)})
    extra = scan_csv(source / KKBOX_EXTRA, {"song_id": Col("str", expected="a song id"),
                                            "isrc": Col("str", required=False)})
    years = extra.select(pl.col("song_id").alias("item"), pl.lit("year").alias("relation"),
                         isrc_year(pl.col("isrc")).cast(pl.Utf8).alias("value"))
    no_year = years["value"].null_count() - extra["isrc"].null_count()
    if no_year:
        log.info("%s: %d ISRCs without a two-digit year at characters 6-7 (no year triplet)", KKBOX_EXTRA, no_year)
    genres = (songs.select(pl.col("song_id").alias("item"), pl.col("genre_ids").str.split("|").alias("value"))
              .explode("value").with_columns(pl.col("value").str.strip_chars())
              .select("item", pl.lit("genre").alias("relation"), "value"))
    lang = pl.col("language")
    other = songs.select(
        pl.col("song_id").alias("item"),
        pl.col("artist_name").alias("artist"),
        pl.when(lang == lang.floor()).then(lang.cast(pl.Int64).cast(pl.Utf8)).otherwise(lang.cast(pl.Utf8))
        .alias("language"))
    kg = pl.concat([
        other.unpivot(["artist", "language"], index="item", variable_name="relation", value_name="value"),
        genres, years])
    kg = kg.filter(pl.col("value").is_not_null() & (pl.col("value") != "") & (pl.col("value") != "-1")) \
        .unique(maintain_order=True)
    return RawData(_events(events), kg, {"format": "kkbox", "path": str(source.resolve()), "session_gap_rows": gap},
                   knowledge_file=str(source / KKBOX_SONGS), session_keys=keys)


# --------------------------------------------------------------------------------------------
# Taobao UserBehavior
# --------------------------------------------------------------------------------------------

TAOBAO_FILE = "UserBehavior.csv"
#: the file's columns, in order (it has no header)
TAOBAO_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
#: behavior_type values: page view (click), add to cart, favourite, purchase
TAOBAO_OPERATIONS = ("pv", "cart", "fav", "buy")
#: the official period, [2017-11-25 00:00:00, 2017-12-04 00:00:00) in UTC+8, as unix seconds
TAOBAO_PERIOD = (1511539200, 1512316800)
_TAOBAO_OP = pl.Enum(list(TAOBAO_OPERATIONS))
_TAOBAO_EXPECTED = {"user_id": "an integer user id", "item_id": "an integer item id",
                    "category_id": "an integer category id",
                    "behavior_type": f"one of {', '.join(TAOBAO_OPERATIONS)}",
                    "timestamp": "unix seconds (an integer)"}
_TAOBAO_LAYOUT = f"{len(TAOBAO_COLUMNS)} comma-separated columns {','.join(TAOBAO_COLUMNS)} and no header"


def read_taobao(source: str | Path, session_gap: float | None = None, *, drop_truncated_last_row: bool = False,
                keep_out_of_period: bool = False) -> RawData:
    """Taobao UserBehavior (see the module docstring). ``session_gap`` in seconds (default 1800).

    ``drop_truncated_last_row``: a malformed *last* row (a download cut mid-row) is dropped with
    a logged warning naming it, instead of stopping with a :class:`DataError`; a malformed row
    anywhere else is always an error. (A row cut inside its timestamp still has five columns and
    cannot be told from a complete one; its short timestamp falls before the period, so the
    default period policy drops it.) ``keep_out_of_period``: keep the rows whose timestamp is
    outside :data:`TAOBAO_PERIOD` (dropped by default, with their count logged).

    Events: ``item`` Int64 (item_id), ``op`` Enum of :data:`TAOBAO_OPERATIONS`, ``time`` unix
    seconds; knowledge: ``(item_id, "cate", category_id)`` for every item of a complete row, both
    triplets where an item carries two categories. ``RawData.source`` records
    ``out_of_period_rows``, ``out_of_period`` (``dropped`` | ``kept``) and ``dropped_truncated_row``
    (its 1-based row, or None).
    """
    source = Path(source)
    gap = 1800.0 if session_gap is None else float(session_gap)
    _require_files(source, [TAOBAO_FILE])
    path = source / TAOBAO_FILE
    df, dropped_row = _scan_taobao(path, drop_truncated_last_row)
    knowledge = df.select(pl.col("item_id").alias("item"), pl.lit("cate").alias("relation"),
                          pl.col("category_id").cast(pl.Utf8).alias("value")).unique(maintain_order=True)
    t = pl.col("timestamp")
    outside = int(df.select(((t < TAOBAO_PERIOD[0]) | (t >= TAOBAO_PERIOD[1])).sum()).item())
    if outside and not keep_out_of_period:
        df = df.filter((t >= TAOBAO_PERIOD[0]) & (t < TAOBAO_PERIOD[1]))
        log.info("%s: dropped %d rows with a timestamp outside the official period 2017-11-25 .. 2017-12-03 "
                 "(UTC+8); keep them with --keep-out-of-period", path, outside)
    if df.height == 0:
        raise DataError("no row has a timestamp inside the official period 2017-11-25 00:00 .. 2017-12-03 23:59:59 "
                        "(UTC+8)", file=str(path), column="timestamp",
                        expected="UserBehavior timestamps, or keep_out_of_period / --keep-out-of-period")
    df = df.select(pl.col("user_id").alias("user"), pl.col("item_id").alias("item"),
                   pl.col("behavior_type").alias("op"), t.cast(pl.Float64).alias("time"),
                   pl.col("__row").alias("row"))
    events, keys = cut_sessions(df, gap)
    return RawData(_events(events), knowledge,
                   {"format": "taobao", "path": str(source.resolve()), "session_gap_seconds": gap,
                    "out_of_period_rows": outside, "out_of_period": "kept" if keep_out_of_period else "dropped",
                    "dropped_truncated_row": dropped_row},
                   knowledge_file=str(path), session_keys=keys)


def _scan_taobao(path: Path, drop_truncated_last_row: bool) -> tuple[pl.DataFrame, int | None]:
    """The typed rows of a UserBehavior file (``__row`` 1-based line number, the five columns,
    ``behavior_type`` as an Enum) and the number of a dropped truncated last row (or None).

    Fast path: a streaming scan with native integer parsing. Only when it meets a bad row is
    the file read again as lines to say exactly what is wrong; a bad last row alone needs only
    that one line.
    """
    file = str(path)
    if path.stat().st_size == 0:
        raise DataError("the file is empty", file=file, expected=f"rows of {_TAOBAO_LAYOUT}")
    schema = dict(zip(TAOBAO_COLUMNS, (pl.Int64, pl.Int64, pl.Int64, pl.Utf8, pl.Int64)))
    lf = (pl.scan_csv(path, has_header=False, schema=schema, quote_char=None, row_index_name="__row",
                      row_index_offset=1)
          .with_columns(pl.col("__row").cast(pl.Int64), pl.col("behavior_type").cast(_TAOBAO_OP, strict=False)))
    try:
        df = lf.collect(engine="streaming")
    except pl.exceptions.PolarsError:  # e.g. text in an integer column, a sixth column
        df = None
    if df is not None:
        bad = df.filter(pl.any_horizontal(pl.col(c).is_null() for c in TAOBAO_COLUMNS))["__row"]
        if bad.len() == 0:
            return df, None
        last = df.height
        if bad.to_list() == [last]:
            lines = _taobao_lines(path).filter(pl.col("__row") == last).collect(engine="streaming")
            problems = _taobao_problems(lines)
        else:
            df = None
    if df is None:
        lines = _taobao_lines(path).collect(engine="streaming")
        last = lines.height
        problems = _taobao_problems(lines)
        if problems.height and problems["__row"][0] == last and drop_truncated_last_row:
            df = _taobao_parse(lines.filter(pl.col("__row") < last))
    if problems.height == 0:  # the fast scan failed on something the line check accepts
        raise DataError(f"could not read the file as {_TAOBAO_LAYOUT}", file=file)
    row, column, what, line = problems.row(0)
    if row != last:
        raise DataError(f"{what} (line {line!r})", file=file, row=row, column=column,
                        expected=_TAOBAO_EXPECTED.get(column, _TAOBAO_LAYOUT))
    if not drop_truncated_last_row:
        raise DataError(f"{what} (line {line!r}). This is the file's last line: if the file was cut off (an "
                        "interrupted download), download it again, or drop this row with --drop-truncated-last-row "
                        "(library: drop_truncated_last_row=True)", file=file, row=row, column=column,
                        expected=_TAOBAO_EXPECTED.get(column, _TAOBAO_LAYOUT))
    log.warning("%s: dropped the malformed last row %d %r (%s%s)", file, row, line,
                f"column {column!r}: " if column else "", what)
    df = df.filter(pl.col("__row") < last)
    if df.height == 0:
        raise DataError("the file has no complete row", file=file, expected=f"rows of {_TAOBAO_LAYOUT}")
    return df, row


def _taobao_lines(path: Path) -> pl.LazyFrame:
    """The file as (``__row``, ``line``) with no field splitting (an empty line is null)."""
    return pl.scan_csv(path, has_header=False, new_columns=["line"], schema={"line": pl.Utf8}, separator="\x1f",
                       quote_char=None, truncate_ragged_lines=True, row_index_name="__row",
                       row_index_offset=1).with_columns(pl.col("__row").cast(pl.Int64))


def _taobao_cells(lines: pl.DataFrame) -> pl.DataFrame:
    """Split lines into the five text cells (stripped; null where the line has no such column)."""
    fields = pl.col("line").str.split(",")
    return lines.with_columns(fields.list.len().fill_null(0).alias("__n"), *[
        fields.list.get(i, null_on_oob=True).str.strip_chars().alias(c) for i, c in enumerate(TAOBAO_COLUMNS)])


def _taobao_values(cells: pl.DataFrame) -> pl.DataFrame:
    return cells.select("__row", *[pl.col(c).cast(pl.Int64, strict=False) if c != "behavior_type"
                                   else pl.col(c).cast(_TAOBAO_OP, strict=False) for c in TAOBAO_COLUMNS])


def _taobao_parse(lines: pl.DataFrame) -> pl.DataFrame:
    return _taobao_values(_taobao_cells(lines))


def _taobao_problems(lines: pl.DataFrame) -> pl.DataFrame:
    """(``__row``, column or null, what is wrong, the line) of every bad line, in file order."""
    cells = _taobao_cells(lines)
    values = _taobao_values(cells)
    n = pl.col("__n")
    k = len(TAOBAO_COLUMNS)
    checks = [(n == 0, None, pl.lit("an empty line")),
              (n > k, None, pl.format(f"{{}} columns, not {k}", n))]
    for i, c in enumerate(TAOBAO_COLUMNS):
        cell = pl.col(c)
        checks += [(n <= i, c, pl.format(f"missing: the row has only {{}} of the {k} columns", n)),
                   (cell == "", c, pl.lit("empty value")),
                   (pl.col(f"__v_{c}").is_null(), c, pl.format(
                       "unknown behavior_type '{}'" if c == "behavior_type" else "cannot parse '{}'", cell))]
    both = cells.with_columns(values.select(pl.all().exclude("__row").name.prefix("__v_")))
    column = pl.coalesce([pl.when(cond).then(pl.lit(col if col else "", pl.Utf8)) for cond, col, _ in checks])
    what = pl.coalesce([pl.when(cond).then(msg) for cond, _, msg in checks])
    return (both.select("__row", column.alias("column"), what.alias("what"), pl.col("line").fill_null(""))
            .filter(pl.col("what").is_not_null())
            .with_columns(pl.when(pl.col("column") != "").then(pl.col("column")).alias("column")))


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RawFormat:
    """A raw dataset layout: its reader and the paper's defaults for it."""

    name: str
    read: Callable[..., RawData]
    files: tuple[str, ...]
    gap_unit: str            # what --session-gap counts: "seconds" or "rows"
    default_gap: float
    min_item_count: int = 3  # paper §4.1.1: items seen fewer than 3 times are filtered out
    min_session_length: int = 2
    options: tuple[str, ...] = ()  # keyword options of ``read`` beyond session_gap


FORMATS: dict[str, RawFormat] = {
    "jdata2018": RawFormat("jdata2018", read_jdata2018, (JDATA2018_ACTION, JDATA2018_PRODUCT), "seconds", 3600.0),
    "jdata2019": RawFormat("jdata2019", read_jdata2018, (JDATA2018_ACTION, JDATA2018_PRODUCT), "seconds", 3600.0),
    "jdata2017": RawFormat("jdata2017", read_jdata2017, (*JDATA2017_ACTIONS, JDATA2017_PRODUCT), "seconds", 1800.0),
    "kkbox": RawFormat("kkbox", read_kkbox, (KKBOX_TRAIN, KKBOX_SONGS, KKBOX_EXTRA), "rows", 2000.0),
    "taobao": RawFormat("taobao", read_taobao, (TAOBAO_FILE,), "seconds", 1800.0,
                        options=("drop_truncated_last_row", "keep_out_of_period")),
}


def get_format(name: str) -> RawFormat:
    if name not in FORMATS:
        raise ConfigError(f"unknown raw format {name!r}; raw formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def read(name: str, source: str | Path, session_gap: float | None = None, **options) -> RawData:
    """Read the raw dataset ``name`` (see :data:`FORMATS`) from directory ``source``.

    ``session_gap``: the inactivity that starts a new session, in the format's ``gap_unit``
    (None = the format's default). ``options``: the format's own keyword options
    (:attr:`RawFormat.options`, e.g. taobao's ``drop_truncated_last_row``); another is a ConfigError.
    """
    fmt = get_format(name)
    if session_gap is not None and session_gap <= 0:
        raise ConfigError(f"session_gap must be > 0, got {session_gap}")
    unknown = [k for k in options if k not in fmt.options]
    if unknown:
        raise ConfigError(f"format {name!r} has no option {unknown[0]!r} (its options: "
                          f"{', '.join(fmt.options) or 'none'})")
    raw = fmt.read(source, session_gap, **options)
    raw.source["format"] = name
    log.info("read %s from %s: %d events, %d sessions, %d knowledge triplets", name, source, raw.events.height,
             raw.session_keys.height if raw.session_keys is not None else -1,
             raw.knowledge.height if raw.knowledge is not None else 0)
    return raw
