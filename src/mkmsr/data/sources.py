"""Readers: raw files in, canonical event and knowledge tables out.

Every reader returns a :class:`RawData` whose ``events`` table has the canonical columns

=========  ========  ==============================================================
column     dtype     meaning
=========  ========  ==============================================================
session    str       session key, unique within its ``period`` (raw formats: Int64,
                     with readable keys in ``RawData.session_keys``)
item       str       external item id (as the user's data spells it; raw formats may
                     keep an integer dtype, the knowledge's ``item`` then has the same)
op         str       external operation id (raw formats may keep an integer code)
time       f64       a clock: unix seconds, or the row number where there is no time
row        i64       1-based data row in its file (ties in ``time`` keep file order)
period     str       ``train`` / ``valid`` / ``test`` where the files say so, ``all``
                     where :func:`mkmsr.prepare.prepare` must split by time
=========  ========  ==============================================================

and ``knowledge`` has ``item, relation, value`` (all str). Readers validate as they go:
a missing column, an empty file, a null / NaN / empty cell, an unparseable time or an
unknown relation raises :class:`~mkmsr.errors.DataError` naming file, row and column.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import polars as pl

from ..errors import DataError

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("session", "item", "op", "time", "row", "period")
KNOWLEDGE_COLUMNS = ("item", "relation", "value")
# Formats tried, in order, when a time column is text and no format is given.
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%.f",
                 "%Y-%m-%dT%H:%M:%S", "%Y/%m/%d %H:%M:%S", "%Y-%m-%d")


@dataclass
class RawData:
    """Canonical events + knowledge, not yet indexed (external ids only)."""

    events: pl.DataFrame
    knowledge: pl.DataFrame | None
    source: dict = field(default_factory=dict)
    # Name of the knowledge file, for error messages raised later.
    knowledge_file: str | None = None
    # Optional (session, session_key) table: the readable key of each session where ``events``
    # carry a compact Int64 session number (raw formats, see mkmsr.raw_formats).
    session_keys: pl.DataFrame | None = None


@dataclass
class ColumnMap:
    """Which of the user's columns hold what. ``session`` or ``user`` must be given."""

    item: str = "item_id"
    op: str | None = "operation"
    time: str | None = "timestamp"
    session: str | None = None
    user: str | None = None
    time_format: str | None = None  # strftime pattern; None = numeric seconds or auto-detected


# --------------------------------------------------------------------------------------------
# low-level table reading and validation
# --------------------------------------------------------------------------------------------

def read_table(path: str | Path, columns: Sequence[str], fmt: str | None = None,
               separator: str = ",") -> pl.DataFrame:
    """Read ``columns`` of a CSV or Parquet file as text, with a 1-based ``__row`` column.

    Raises DataError if the file is missing, empty, or lacks a column.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", file=str(path))
    fmt = fmt or ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")
    try:
        if fmt == "parquet":
            df = pl.read_parquet(path)
        elif fmt == "csv":
            if path.stat().st_size == 0:
                raise DataError("the file is empty", file=str(path), expected="a header line and at least one row")
            df = pl.read_csv(path, infer_schema=False, separator=separator)
        else:
            raise DataError(f"unknown file format {fmt!r}", file=str(path), expected="csv or parquet")
    except DataError:
        raise
    except Exception as exc:  # polars' own parse errors: keep its message, add the file
        raise DataError(f"could not be read as {fmt}: {exc}", file=str(path)) from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"missing column {missing[0]!r}; the file has columns {df.columns}",
                        file=str(path), column=missing[0])
    if df.height == 0:
        raise DataError("the file has a header but no rows", file=str(path), expected="at least one row")
    df = df.select(list(dict.fromkeys(columns)))
    df = df.with_columns([pl.col(c).cast(pl.Utf8) for c in df.columns if df[c].dtype != pl.Utf8
                          and not df[c].dtype.is_temporal()])
    return df.with_row_index("__row", offset=1).with_columns(pl.col("__row").cast(pl.Int64))


def require_values(df: pl.DataFrame, column: str, file: str, what: str = "a value") -> None:
    """Raise DataError at the first null, empty or NaN cell of ``column``."""
    col = pl.col(column)
    if df[column].dtype == pl.Utf8:
        bad = col.is_null() | (col.str.strip_chars() == "") | col.str.to_lowercase().is_in(["nan", "null", "none"])
    elif df[column].dtype.is_float():
        bad = col.is_null() | col.is_nan()
    else:
        bad = col.is_null()
    hit = df.filter(bad).head(1)
    if hit.height:
        raise DataError("empty, null or NaN value", file=file, row=int(hit["__row"][0]),
                        column=column, expected=what)


def parse_time(df: pl.DataFrame, column: str, file: str, time_format: str | None) -> pl.Series:
    """Turn a time column into float seconds. Numbers are taken as seconds; text is parsed
    with ``time_format`` or the first of a few common formats that fits the first row."""
    s = df[column]
    if s.dtype.is_temporal():
        return s.cast(pl.Datetime("us")).dt.epoch("us").cast(pl.Float64) / 1e6
    if time_format is None:
        num = s.cast(pl.Float64, strict=False)
        if num.null_count() == 0:
            if num.is_nan().any() or num.is_infinite().any():
                bad = df.filter(num.is_nan() | num.is_infinite()).head(1)
                raise DataError("not a finite number", file=file, row=int(bad["__row"][0]), column=column,
                                expected="unix seconds or a date-time")
            return num
        if num.null_count() < s.len():  # mostly numbers: the first non-number is the error
            bad = df.filter(num.is_null()).head(1)
            raise DataError(f"cannot parse {bad[column][0]!r} as a time", file=file, row=int(bad["__row"][0]),
                            column=column, expected="unix seconds (a number)")
        first = s[0]
        for fmt in _TIME_FORMATS:
            probe = pl.Series([first]).str.to_datetime(fmt, strict=False)
            if probe.null_count() == 0:
                time_format = fmt
                break
        else:
            raise DataError(f"cannot parse {first!r} as a time", file=file, row=int(df["__row"][0]),
                            column=column, expected="unix seconds or a date-time like 2018-03-01 00:00:06")
    parsed = s.str.to_datetime(time_format, strict=False)
    if parsed.null_count():
        bad = df.filter(parsed.is_null()).head(1)
        raise DataError(f"cannot parse {bad[column][0]!r} as a time", file=file, row=int(bad["__row"][0]),
                        column=column, expected=f"format {time_format}")
    return parsed.cast(pl.Datetime("us")).dt.epoch("us").cast(pl.Float64) / 1e6


def sessions_by_gap(df: pl.DataFrame, gap_seconds: float) -> pl.DataFrame:
    """Cut each user's time-ordered events into sessions: a gap > ``gap_seconds`` starts a new one.

    ``df`` needs columns ``user, time, row``; returns it sorted, with a ``session`` column
    ``"<user>#<n>"``.
    """
    df = df.sort(["user", "time", "row"])
    new = (pl.col("user") != pl.col("user").shift(1)) | ((pl.col("time") - pl.col("time").shift(1)) > gap_seconds)
    df = df.with_columns(new.fill_null(True).alias("__new"))
    df = df.with_columns((pl.col("__new").cast(pl.Int64).cum_sum() - 1).over("user").alias("__n"))
    return df.with_columns((pl.col("user") + "#" + pl.col("__n").cast(pl.Utf8)).alias("session")).drop("__new", "__n")


def read_events(path: str | Path, cols: ColumnMap, period: str = "all", fmt: str | None = None,
                session_gap: float = 3600.0, separator: str = ",") -> pl.DataFrame:
    """Read one event file into the canonical event columns (see module docstring)."""
    file = str(path)
    if cols.session is None and cols.user is None:
        raise DataError("give a session column or a user column (sessions are then cut by time gap)", file=file)
    if cols.session is None and cols.time is None:
        raise DataError("cutting sessions by time gap needs a time column", file=file)
    wanted = [c for c in (cols.session, cols.user, cols.item, cols.op, cols.time) if c]
    df = read_table(path, wanted, fmt, separator)
    for c, what in ((cols.item, "an item id"), (cols.op, "an operation"), (cols.session, "a session key"),
                    (cols.user, "a user id"), (cols.time, "a time")):
        if c:
            require_values(df, c, file, what)
    time = parse_time(df, cols.time, file, cols.time_format) if cols.time else df["__row"].cast(pl.Float64)
    out = pl.DataFrame({
        "item": df[cols.item].cast(pl.Utf8).str.strip_chars(),
        "op": df[cols.op].cast(pl.Utf8).str.strip_chars() if cols.op else pl.Series(["_"] * df.height),
        "time": time,
        "row": df["__row"],
    })
    if cols.session:
        out = out.with_columns(df[cols.session].cast(pl.Utf8).str.strip_chars().alias("session"))
    else:
        out = sessions_by_gap(out.with_columns(df[cols.user].cast(pl.Utf8).alias("user")), session_gap).drop("user")
    return out.with_columns(pl.lit(period).alias("period")).select(EVENT_COLUMNS)


def read_knowledge(path: str | Path, item: str = "item_id", relation: str = "relation", value: str = "value",
                   relations: Sequence[str] | None = None, fmt: str | None = None,
                   separator: str = ",") -> pl.DataFrame:
    """Read item knowledge triplets ``(item, relation, value)``.

    With ``relations`` given, a triplet naming any other relation is an error (a typo in a
    relation name silently creating a new relation is worse than stopping).
    """
    file = str(path)
    df = read_table(path, [item, relation, value], fmt, separator)
    for c in (item, relation, value):
        require_values(df, c, file)
    if relations is not None:
        allowed = set(relations)
        bad = df.filter(~pl.col(relation).is_in(list(allowed))).head(1)
        if bad.height:
            raise DataError(f"unknown relation {bad[relation][0]!r}", file=file, row=int(bad["__row"][0]),
                            column=relation, expected=f"one of {sorted(allowed)}")
    return pl.DataFrame({
        "item": df[item].str.strip_chars(),
        "relation": df[relation].str.strip_chars(),
        "value": df[value].str.strip_chars(),
    }).unique(maintain_order=True)


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------

def read_jdata_demo(source: str | Path, cold_start: str = "drop") -> RawData:
    """The MKM-SR authors' "Demo" layout: ``train.csv``, ``test.csv`` (Demo: cold-start items
    removed) or ``test_new_item.csv`` (Demo(N): kept), ``item_knowledge.csv``.

    Action columns: ``action_time,user_id,sku_id,type,sessionId,index`` (``index`` = unix
    seconds); knowledge columns ``sku_id,relation,value``.
    """
    source = Path(source)
    if not source.is_dir():
        raise DataError("not a directory holding train.csv, test.csv, test_new_item.csv, item_knowledge.csv",
                        file=str(source))
    cols = ColumnMap(item="sku_id", op="type", time="index", session="sessionId")
    test_file = "test_new_item.csv" if cold_start == "keep" else "test.csv"
    events = pl.concat([
        read_events(source / "train.csv", cols, period="train"),
        read_events(source / test_file, cols, period="test"),
    ])
    knowledge = read_knowledge(source / "item_knowledge.csv", item="sku_id")
    return RawData(events, knowledge, {"format": "jdata-demo", "path": str(source.resolve()), "test_file": test_file},
                   knowledge_file=str(source / "item_knowledge.csv"))


def read_generic(events: str | Path, cols: ColumnMap, knowledge: str | Path | None = None,
                 knowledge_cols: tuple[str, str, str] = ("item_id", "relation", "value"),
                 relations: Sequence[str] | None = None, valid_events: str | Path | None = None,
                 test_events: str | Path | None = None, session_gap: float = 3600.0,
                 fmt: str | None = None, separator: str = ",") -> RawData:
    """Generic CSV / Parquet events (+ optional knowledge) with a column mapping.

    Without ``test_events`` the latest sessions become the test split (see PrepareConfig).
    """
    main_period = "train" if test_events else "all"
    frames = [read_events(events, cols, main_period, fmt, session_gap, separator)]
    if valid_events:
        frames.append(read_events(valid_events, cols, "valid", fmt, session_gap, separator))
    if test_events:
        frames.append(read_events(test_events, cols, "test", fmt, session_gap, separator))
    kg = None
    if knowledge:
        kg = read_knowledge(knowledge, *knowledge_cols, relations=relations, fmt=fmt, separator=separator)
    src = {"format": "csv" if (fmt or "csv") == "csv" else fmt, "events": str(events), "knowledge": str(knowledge) if knowledge else None,
           "valid_events": str(valid_events) if valid_events else None,
           "test_events": str(test_events) if test_events else None,
           "columns": cols.__dict__, "session_gap": session_gap}
    return RawData(pl.concat(frames), kg, src, knowledge_file=str(knowledge) if knowledge else None)
