"""Every input format by name, behind one call: ``read_raw(format, ...)`` -> :class:`RawData`.

``jdata-demo`` (the Demo layout, :func:`~mkmsr.data.sources.read_jdata_demo`), ``csv`` and
``parquet`` (one micro-behaviour per row with a column mapping,
:func:`~mkmsr.data.sources.read_generic`), ``recbole`` (atomic files,
:func:`~mkmsr.data.recbole_files.read_recbole`) and the raw public datasets of
:mod:`mkmsr.data.raw_formats` (jdata2018, jdata2017, kkbox, taobao, ...). ``mkmsr prepare``
calls this with its flags; the messages name those flags.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .sources import RawData

# formats read by sources / recbole_files; every other name is one of raw_formats' registry
BUILTIN_FORMATS = ("jdata-demo", "csv", "parquet", "recbole")


def default_min_item_count(fmt: str) -> int:
    """The item filter a format gets by default: the paper's >= 3 for the raw public datasets,
    1 elsewhere. An unknown format is a :class:`ConfigError`."""
    if fmt in BUILTIN_FORMATS:
        return 1
    from . import raw_formats

    return raw_formats.get_format(fmt).min_item_count


def read_raw(fmt: str, *, source: str | Path | None = None, dataset: str | None = None,
             events: str | Path | None = None, knowledge: str | Path | None = None,
             valid_events: str | Path | None = None, test_events: str | Path | None = None,
             item_col: str = "item_id", op_col: str | None = None, time_col: str | None = "timestamp",
             session_col: str | None = None, user_col: str | None = None, time_format: str | None = None,
             kg_cols: tuple[str, str, str] = ("item_id", "relation", "value"),
             relations: Sequence[str] | None = None, separator: str = ",", session_gap: float | None = None,
             cold_start: str = "drop", **options: bool) -> RawData:
    """Read the raw events (+ knowledge) of format ``fmt``.

    ``op_col``: None = the column ``operation`` (recbole: used when present), '' = no operation
    column. ``time_col`` '' or None = row order. ``session_gap`` (seconds): None = the format's
    default (1 h for csv / parquet / recbole). ``options``: a raw format's own switches (taobao's
    ``drop_truncated_last_row``, ``keep_out_of_period``); elsewhere they are a ConfigError.
    """
    raw_format = None
    if fmt not in BUILTIN_FORMATS:
        from . import raw_formats

        raw_format = raw_formats.get_format(fmt)
    misplaced = [k for k in options if raw_format is None or k not in raw_format.options]
    if misplaced:
        raise ConfigError(f"--{misplaced[0].replace('_', '-')} applies to --format taobao only")
    if fmt == "jdata-demo":
        from .sources import read_jdata_demo

        if not source:
            raise ConfigError("--format jdata-demo needs --source DIR")
        return read_jdata_demo(source, cold_start)
    if fmt in ("csv", "parquet"):
        from .sources import ColumnMap, read_generic

        if not events:
            raise ConfigError(f"--format {fmt} needs --events FILE")
        op = "operation" if op_col is None else op_col
        cols = ColumnMap(item=item_col, op=op or None, time=time_col or None, session=session_col, user=user_col,
                         time_format=time_format)
        return read_generic(events, cols, knowledge, kg_cols, relations, valid_events, test_events,
                            3600.0 if session_gap is None else session_gap, fmt, separator)
    if fmt == "recbole":
        from .recbole_files import read_recbole

        if not source or not dataset:
            raise ConfigError("--format recbole needs --source DIR and --dataset NAME (reads DIR/NAME.inter "
                              "and, when present, DIR/NAME.item)")
        return read_recbole(source, dataset, session_field=session_col, user_field=user_col, item_field=item_col,
                            time_field=time_col or None, op_field=("operation" if op_col is None else op_col) or None,
                            require_op=bool(op_col), relations=relations,
                            session_gap=3600.0 if session_gap is None else session_gap)
    if not source:
        raise ConfigError(f"--format {fmt} needs --source DIR holding {', '.join(raw_format.files)}")
    return raw_formats.read(fmt, source, session_gap, **options)
