"""RecBole atomic files in and out (RecBole 1.2.1's data format).

An atomic file is tab-separated text whose header names every field as ``name:type``
(types ``token``, ``token_seq``, ``float``, ``float_seq``; a ``*_seq`` cell holds values
separated by one space). A dataset ``NAME`` is a folder of files ``NAME.<suffix>``.

**In** (:func:`read_recbole`, ``mkmsr prepare --format recbole --source DIR --dataset NAME``):

* ``NAME.inter`` — one micro-behaviour per row: a session field (``session_id:token``) or a
  user field (``user_id:token``; sessions are then cut by ``session_gap`` seconds of
  inactivity), ``item_id:token``, ``timestamp:float`` (optional with a session field: the row
  order is then the clock) and an operation field when present (``operation:token``; without
  one every event gets the one operation ``_``). Field names are options.
* ``NAME.item`` (optional) — every ``token`` / ``token_seq`` field other than the item field
  becomes a knowledge relation named after the field, one triplet per value (a ``token_seq``
  cell gives one per token); an empty cell is an unknown attribute (no triplet); ``float``
  fields are not knowledge and are skipped.

A missing field, a field of the wrong type, an empty id or an unparseable time stops with a
:class:`~mkmsr.errors.DataError` naming the file, the 1-based data row and the field.

**Out** (:func:`export_recbole`, ``mkmsr export --format recbole``): a prepared artifact as

* ``NAME.inter`` — one row per event, every split, sessions in order: ``session_id:token
  item_id:token timestamp:float operation:token``. The artifact keeps each session's start
  time, not each event's: the k-th event of a session (k = 0, 1, ...) gets start + k
  milliseconds, so the order inside a session is explicit in the time field.
* ``NAME.item`` — every catalogue item (so RecBole ranks the same catalogue) with one field
  per relation: ``token`` where each item has at most one value, ``token_seq`` otherwise.
* ``NAME.train.inter``, ``NAME.valid.inter``, ``NAME.test.inter`` (``splits=True``) — the
  session-based benchmark setting: the artifact's own splits as one prefix -> next-item sample
  per line (``session_id:token item_id_list:token_seq item_id:token``), the samples mkmsr
  trains and evaluates on. RecBole reads them with ``benchmark_filename: [train, valid,
  test]`` and ``alias_of_item_id: [item_id_list]`` (without the alias it gives the prefixes' items
  ids of their own, unrelated to the targets'); without ``benchmark_filename`` it reads
  ``NAME.inter``.
* ``export.json`` — what was written, with the artifact's content hash.

Ids are written as they are (external ids); an id or value holding a tab, a line break or a
``"`` (RecBole's quote character), or a space where it goes into a ``token_seq``, cannot be
written and stops the export.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from .dataset import PreparedData
from ..errors import ConfigError, DataError
from ..fsutil import atomic_dir, write_json
from .prepare import SPLITS
from .sources import ColumnMap, RawData, read_events, read_table

log = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
SEQ_SEPARATOR = " "


@dataclass(frozen=True)
class AtomicField:
    """One header field of an atomic file: ``column`` is the header cell (``name:type``)."""

    name: str
    type: str
    column: str


def read_header(path: str | Path) -> dict[str, AtomicField]:
    """The fields of an atomic file by name, from its header line.

    Raises DataError when the file is missing or empty, or a header cell is not ``name:type``
    with one of :data:`FIELD_TYPES`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", file=str(path))
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n")
    if not header:
        raise DataError("the file is empty", file=str(path), expected="a header line of name:type fields")
    out: dict[str, AtomicField] = {}
    for cell in header.split("\t"):
        name, sep, typ = cell.strip().rpartition(":")
        if not sep or not name or typ not in FIELD_TYPES:
            raise DataError(f"bad header field {cell!r}", file=f"{path}, header",
                            expected=f"name:type with type one of {', '.join(FIELD_TYPES)}, tab-separated")
        if name in out:
            raise DataError(f"field {name!r} appears twice", file=f"{path}, header")
        out[name] = AtomicField(name, typ, cell)
    return out


def _field(fields: dict[str, AtomicField], name: str, file: Path, types: Sequence[str], what: str) -> AtomicField:
    if name not in fields:
        raise DataError(f"no {what} field {name!r}; the header has {', '.join(f.column for f in fields.values())}",
                        file=str(file), column=name, expected=f"a field {name}:{types[0]}")
    f = fields[name]
    if f.type not in types:
        raise DataError(f"the {what} field is of type {f.type}", file=str(file), column=f.column,
                        expected=f"type {' or '.join(types)}")
    return f


def read_recbole(source: str | Path, dataset: str, *, session_field: str | None = None,
                 user_field: str | None = None, item_field: str = "item_id", time_field: str | None = "timestamp",
                 op_field: str | None = "operation", require_op: bool = False,
                 relations: Sequence[str] | None = None, session_gap: float = 3600.0) -> RawData:
    """Read ``source/dataset.inter`` (+ ``dataset.item``) into canonical events and knowledge.

    Without ``session_field`` and ``user_field`` the session field is ``session_id`` when the
    header has one, else ``user_id`` (sessions cut by ``session_gap`` seconds). ``op_field``
    is used when the header has it (an error when absent only with ``require_op``);
    ``time_field`` likewise, except that sessions cut from a user's events need it.
    ``relations``: the ``.item`` fields to use (default: every token / token_seq field).
    All events are in period ``all``: :func:`mkmsr.prepare.prepare` splits them by time.
    """
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"not a directory holding {dataset}.inter", file=str(source))
    inter = source / f"{dataset}.inter"
    if not inter.exists():
        have = sorted(p.name for p in source.glob(f"{dataset}.*"))
        raise DataError(f"no {inter.name} (the events)" + (f"; found {', '.join(have)}" if have else ""),
                        file=str(inter), expected="an atomic file with one event per row")
    fields = read_header(inter)
    if session_field is None and user_field is None:
        if "session_id" in fields:
            session_field = "session_id"
        elif "user_id" in fields:
            user_field = "user_id"
        else:
            raise DataError("neither a session_id nor a user_id field; name the session or user field",
                            file=f"{inter}, header", expected="session_id:token or user_id:token")
    ids = ("token", "float")  # RecBole ids are tokens; a float id column is still read as text
    item = _field(fields, item_field, inter, ("token",), "item")
    sess = _field(fields, session_field, inter, ids, "session") if session_field else None
    user = _field(fields, user_field, inter, ids, "user") if user_field else None
    op = None
    if op_field and (op_field in fields or require_op):
        op = _field(fields, op_field, inter, ("token",), "operation")
    time = None
    if time_field and (time_field in fields or sess is None):
        time = _field(fields, time_field, inter, ("float",), "time")
    cols = ColumnMap(item=item.column, op=op.column if op else None, time=time.column if time else None,
                     session=sess.column if sess else None, user=user.column if user else None)
    events = read_events(inter, cols, "all", "csv", session_gap, separator="\t")
    log.info("%s: %d events, fields %s", inter, events.height,
             ", ".join(f.column for f in (sess or user, item, time, op) if f is not None))

    knowledge, item_file = None, source / f"{dataset}.item"
    if item_file.exists():
        knowledge = read_item_knowledge(item_file, item_field, relations)
    elif relations:
        raise DataError(f"relations {list(relations)} were asked for but there is no {item_file.name}",
                        file=str(item_file))
    src = {"format": "recbole", "path": str(source.resolve()), "dataset": dataset,
           "fields": {"session": session_field, "user": user_field, "item": item_field,
                      "time": time.name if time else None, "operation": op.name if op else None},
           "session_gap": session_gap if user else None}
    return RawData(events, knowledge, src, knowledge_file=str(item_file) if knowledge is not None else None)


def read_item_knowledge(path: str | Path, item_field: str = "item_id",
                        relations: Sequence[str] | None = None) -> pl.DataFrame:
    """Knowledge triplets ``(item, relation, value)`` (str) from a RecBole ``.item`` file: one
    relation per token / token_seq field (see the module docstring)."""
    path = Path(path)
    fields = read_header(path)
    item = _field(fields, item_field, path, ("token",), "item")
    if relations is None:
        rel = [f for f in fields.values() if f.name != item_field and f.type in ("token", "token_seq")]
        skipped = [f.column for f in fields.values() if f.type in ("float", "float_seq")]
        if skipped:
            log.info("%s: numeric fields are not knowledge relations, skipped: %s", path, ", ".join(skipped))
    else:
        rel = [_field(fields, r, path, ("token", "token_seq"), "relation") for r in relations]
    if not rel:
        log.warning("%s: no token or token_seq field besides %s: no knowledge", path, item_field)
    df = read_table(path, [item.column, *(f.column for f in rel)], "csv", separator="\t")
    from .sources import require_values

    require_values(df, item.column, str(path), "an item id")
    dup = df.filter(~pl.col(item.column).is_first_distinct()).head(1)
    if dup.height:
        raise DataError(f"item {dup[item.column][0]!r} has a second row", file=str(path),
                        row=int(dup["__row"][0]), column=item.column, expected="one row per item")
    parts = []
    for f in rel:
        v = pl.col(f.column).str.strip_chars()
        if f.type == "token_seq":
            v = v.str.split(SEQ_SEPARATOR)
        part = df.select(pl.col(item.column).str.strip_chars().alias("item"), v.alias("value"))
        if f.type == "token_seq":
            part = part.explode("value").with_columns(pl.col("value").str.strip_chars())
        parts.append(part.filter(pl.col("value").is_not_null() & (pl.col("value") != ""))
                     .select("item", pl.lit(f.name).alias("relation"), "value"))
    if not parts:
        return pl.DataFrame(schema={"item": pl.Utf8, "relation": pl.Utf8, "value": pl.Utf8})
    return pl.concat(parts).unique(maintain_order=True)


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------

def _check_text(values: pl.Series, what: str, in_seq: bool) -> None:
    # RecBole 1.2.1 reads atomic files with pandas (tab-separated, '"' quotes), splits
    # token_seq cells on spaces
    bad_chars = r'[\t\r\n"]' if not in_seq else r'[\t\r\n" ]'
    bad = values.filter(values.str.contains(bad_chars))
    if bad.len():
        raise DataError(f"{what} {bad[0]!r} holds a {'space, ' if in_seq else ''}tab, line break or '\"', "
                        "which an atomic file cannot carry" + (" in a token_seq field" if in_seq else ""),
                        expected="ids and values without them")


def _write_atomic(path: Path, df: pl.DataFrame) -> None:
    # never quoted: _check_text has refused the characters that would need it
    df.write_csv(path, separator="\t", quote_style="never")


def export_recbole(data: PreparedData | str | Path, out_dir: str | Path, dataset: str | None = None, *,
                   splits: bool = True, max_len: int | None = None, overwrite: bool = False) -> Path:
    """Write a prepared artifact as RecBole atomic files into ``out_dir`` (see the module
    docstring); ``dataset`` names the files (default: ``out_dir``'s name, which is
    what RecBole expects: it reads ``data_path/NAME/NAME.inter``). ``max_len`` keeps only
    the latest ``max_len`` items of each prefix in the per-split files. Written to a temporary
    folder, renamed when complete. Returns ``out_dir``.
    """
    if not isinstance(data, PreparedData):
        data = PreparedData(data)
    out = Path(out_dir)
    name = dataset or out.name
    if not name or any(c in name for c in "/\\\t\n") or name.startswith("."):
        raise ConfigError(f"bad dataset name {name!r}: it names files NAME.inter, NAME.item")
    if max_len is not None and max_len < 1:
        raise ConfigError("max_len must be >= 1")
    if name != out.name:  # RecBole reads DATA_PATH/NAME/NAME.inter
        log.warning("RecBole looks for its files in a folder named after the dataset: %s/%s.inter will load "
                    "only once the folder is renamed to %s", out, name, name)
    items = data.items.sort("item_idx")
    item_ids = items["item_id"].cast(pl.Utf8)
    ops = data.operations.sort("op_idx")["op"].cast(pl.Utf8)
    if (items["item_idx"].to_numpy() != np.arange(1, items.height + 1)).any():
        raise DataError("items.parquet does not hold item_idx 1..n_items", file=str(data.path / "items.parquet"))
    _check_text(item_ids, "item id", in_seq=splits)
    _check_text(ops, "operation", in_seq=False)
    # index -> external id lookups (index 0 = padding, never written); gathers stay in Polars,
    # no Python string objects per event
    item_lut = pl.concat([pl.Series([""], dtype=pl.Utf8), item_ids])
    op_lut = pl.concat([pl.Series([""], dtype=pl.Utf8), ops])

    sess_tables = {s: pl.read_parquet(data.path / f"{s}.sessions.parquet") for s in SPLITS}
    keys = pl.concat([t["session_key"] for t in sess_tables.values()])
    prefix_split = keys.n_unique() < keys.len()
    if prefix_split:  # the same key in two splits would merge two sessions on the way back
        log.warning("session keys repeat across splits: written as <split>/<key>")
    _check_text(keys, "session key", in_seq=False)

    counts: dict[str, dict] = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        frames = []
        for s in SPLITS:
            arr, st = data.split(s), sess_tables[s]
            lens = arr.lengths
            pos = np.arange(arr.items.size, dtype=np.int64) - np.repeat(arr.offsets[:-1], lens)
            key = st["session_key"].cast(pl.Utf8)
            if prefix_split:
                key = f"{s}/" + key
            frames.append(pl.DataFrame([
                key.gather(np.repeat(np.arange(arr.n_sessions), lens)).alias("session_id:token"),
                item_lut.gather(arr.items).alias("item_id:token"),
                # rounded to the microsecond: no float noise in the text (steps are 1000x larger)
                pl.Series("timestamp:float", np.round(np.repeat(st["start"].to_numpy(), lens) + pos * 1e-3, 6)),
                op_lut.gather(arr.ops).alias("operation:token")]))
            counts[s] = {"sessions": arr.n_sessions, "events": int(arr.items.size)}
            if splits:
                counts[s]["samples"] = _write_samples(tmp / f"{name}.{s}.inter", arr, key, item_lut, max_len)
        _write_atomic(tmp / f"{name}.inter", pl.concat(frames))
        item_tbl, relations = _item_table(data, item_ids)
        _write_atomic(tmp / f"{name}.item", item_tbl)
        write_json(tmp / "export.json", {
            "format": "recbole-atomic", "dataset": name, "source": str(data.path.resolve()),
            "source_content_sha256": data.content_hash, "session_keys": "<split>/<key>" if prefix_split else "as is",
            "timestamp": "session start + k ms for the k-th event", "max_len": max_len,
            "files": sorted(p.name for p in tmp.iterdir()) + ["export.json"], "items": item_tbl.height,
            "relations": relations, "splits": counts})
    log.info("exported %s as RecBole atomic files %s/%s.*", data.path, out, name)
    return out


def _write_samples(path: Path, arr, key: pl.Series, item_lut: pl.Series, max_len: int | None) -> int:
    """One prefix -> next-item sample per line (the samples mkmsr trains on), ``max_len`` latest."""
    sess, prefix = arr.samples()
    eff = np.minimum(prefix, max_len) if max_len else prefix
    first = arr.offsets[sess] + prefix - eff
    flat = np.repeat(first - np.cumsum(eff) + eff, eff) + np.arange(int(eff.sum()))
    sample = np.repeat(np.arange(sess.size), eff)
    seqs = pl.DataFrame([pl.Series("s", sample), item_lut.gather(arr.items[flat]).alias("i")]) \
        .group_by("s", maintain_order=True).agg(pl.col("i").str.join(SEQ_SEPARATOR))
    _write_atomic(path, pl.DataFrame({
        "session_id:token": key.gather(sess), "item_id_list:token_seq": seqs["i"],
        "item_id:token": item_lut.gather(arr.items[arr.offsets[sess] + prefix])}))
    return int(sess.size)


def _item_table(data: PreparedData, item_ids: pl.Series) -> tuple[pl.DataFrame, dict[str, str]]:
    """Every catalogue item with one field per relation (values space-joined for token_seq)."""
    kg = data.kg
    n_items = data.spec.n_items
    rel_names = data.relations.sort("relation_idx")["relation"].cast(pl.Utf8).to_list()
    attrs = data.attributes
    value_of = pl.Series([""] * data.spec.n_entities, dtype=pl.Utf8) \
        .scatter(attrs["entity_idx"].to_numpy(), attrs["value"].cast(pl.Utf8))  # entity_idx -> value
    tbl = pl.DataFrame({"item_id:token": item_ids})
    types: dict[str, str] = {}
    for r, rname in enumerate(rel_names):
        if rname == "item_id" or any(c in rname for c in ":\t\n "):
            raise DataError(f"relation name {rname!r} cannot be an atomic-file field name",
                            file=str(data.path / "relations.parquet"), expected="no ':', spaces or tabs; not item_id")
        t = kg[kg[:, 1] == r]
        vals = pl.DataFrame([pl.Series("item", t[:, 0].astype(np.int64)), value_of.gather(t[:, 2]).alias("value")])
        multi = vals["item"].is_duplicated().any()
        _check_text(vals["value"], f"{rname} value", in_seq=multi)
        typ = "token_seq" if multi else "token"
        per_item = vals.group_by("item", maintain_order=True).agg(pl.col("value").str.join(SEQ_SEPARATOR))
        col = pl.Series(f"{rname}:{typ}", [""] * (n_items + 1), dtype=pl.Utf8) \
            .scatter(per_item["item"].to_numpy(), per_item["value"])
        tbl = tbl.with_columns(col.slice(1))
        types[rname] = typ
    return tbl, types
