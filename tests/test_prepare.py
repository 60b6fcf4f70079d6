"""The prepared artifact: id maps, splits, filters, cold-start policy, manifest, bad input."""
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mkmsr.data.dataset import PreparedData
from mkmsr.data.prepare import PrepareConfig, prepare
from mkmsr.data.sources import ColumnMap, read_generic
from mkmsr.errors import ConfigError, DataError

COLS = ColumnMap(item="item", op="op", time="ts", session="sess")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def events_csv(tmp_path, n_sessions=40, extra="") -> Path:
    lines = ["sess,item,op,ts"]
    for s in range(n_sessions):
        for t, item in enumerate([f"a{s % 5}", f"b{s % 3}", f"a{s % 5}"]):
            lines.append(f"s{s},{item},{'click' if t < 2 else 'buy'},{1000 * s + t}")
    return write(tmp_path / "events.csv", "\n".join(lines) + "\n" + extra)


def test_artifact_layout_maps_and_chronological_split(tmp_path):
    ev = events_csv(tmp_path)
    kg = write(tmp_path / "kg.csv", "item_id,relation,value\n" + "".join(
        f"a{i},brand,x{i % 2}\na{i},cate,c\n" for i in range(5)) + "b0,brand,x0\n")
    out = prepare(read_generic(ev, COLS, knowledge=kg), tmp_path / "art")
    d = PreparedData(out)
    d.verify()
    m = d.manifest
    assert m["format"] == "mkmsr-prepared" and len(m["content_sha256"]) == 64
    # 40 sessions: 4 (10%) test, then 4 of the remaining 36 (10%) validation, the latest in time
    assert [m["splits"][s]["sessions"] for s in ("train", "valid", "test")] == [32, 4, 4]
    starts = {s: pl.read_parquet(out / f"{s}.sessions.parquet")["start"] for s in ("train", "valid", "test")}
    assert starts["train"].max() < starts["valid"].min() and starts["valid"].max() < starts["test"].min()
    # ids: index 0 is padding, every index maps back to its external id
    items = d.items
    assert items["item_idx"].to_list() == list(range(1, d.spec.n_items + 1))
    assert set(items["item_id"].to_list()) == {f"a{i}" for i in range(5)} | {f"b{i}" for i in range(3)}
    tr = d.split("train")
    assert tr.items.min() >= 1 and tr.ops.min() >= 1
    first_item = items.filter(pl.col("item_idx") == int(tr.items[0]))["item_id"][0]
    assert first_item == "a0"  # session s0 is the earliest and starts with a0
    # knowledge: heads are items, tails attribute entities after the items, relations 0..R-1
    assert d.kg.shape == (11, 3)
    assert d.kg[:, 0].max() <= d.spec.n_items and d.kg[:, 2].min() > d.spec.n_items
    assert d.relations["relation"].to_list() == ["brand", "cate"]
    # samples: n events give n - 1 prefix -> next item samples
    sess, prefix = tr.samples()
    assert sess.size == m["splits"]["train"]["samples"] == 32 * 2
    assert np.array_equal(tr.targets(), tr.items[tr.offsets[sess] + prefix])


def test_cold_start_drop_and_keep(tmp_path):
    lines = ["sess,item,op,ts"]
    for s in range(30):
        lines += [f"s{s},w{s % 4},v,{s * 10}", f"s{s},w{(s + 1) % 4},v,{s * 10 + 1}"]
    # the latest session holds an item never seen before, with and without knowledge
    lines += ["z,w1,v,1000", "z,new_kg,v,1001", "z,new_nokg,v,1002", "z,w2,v,1003"]
    ev = write(tmp_path / "ev.csv", "\n".join(lines) + "\n")
    kg = write(tmp_path / "kg.csv", "item_id,relation,value\nnew_kg,brand,b\nw1,brand,b\n")
    cfg = dict(test_fraction=0.05)
    drop = PreparedData(prepare(read_generic(ev, COLS, knowledge=kg), tmp_path / "d", PrepareConfig(cold_start="drop", **cfg)))
    keep = PreparedData(prepare(read_generic(ev, COLS, knowledge=kg), tmp_path / "k", PrepareConfig(cold_start="keep", **cfg)))
    assert "new_kg" not in drop.items["item_id"].to_list()
    assert "new_kg" in keep.items["item_id"].to_list()
    assert "new_nokg" not in keep.items["item_id"].to_list()
    idx = keep.items.filter(pl.col("item_id") == "new_kg")["item_idx"][0]
    assert keep.item_train_count[idx] == 0 and keep.manifest["splits"]["test"]["cold_target_samples"] >= 1
    assert drop.manifest["filtering"]["cold_policy_removed_test_events"] == 2


def test_filters_min_item_count_and_short_sessions(tmp_path):
    ev = events_csv(tmp_path, extra="lone,zz,click,5\nrare1,r,click,7\nrare1,a1,click,8\n")
    d = PreparedData(prepare(read_generic(ev, COLS), tmp_path / "a", PrepareConfig(min_item_count=2)))
    assert "r" not in d.items["item_id"].to_list()
    f = d.manifest["filtering"]
    assert f["dropped_short_sessions_raw"] == 1  # 'lone' has a single event
    assert f["removed_rare_item_events"] >= 1


def test_sessions_cut_by_time_gap_per_user(tmp_path):
    ev = write(tmp_path / "ev.csv", "user,item,op,ts\n" + "".join(
        f"u{u},i{(u + t) % 7},v,{u * 100000 + t * 60 + (5000 if t >= 3 else 0)}\n" for u in range(30) for t in range(6)))
    raw = read_generic(ev, ColumnMap(item="item", op="op", time="ts", user="user"), session_gap=3600)
    assert raw.events["session"].n_unique() == 60  # a 5000 s gap splits each user's 6 events in two


def test_datetime_strings_are_parsed(tmp_path):
    ev = write(tmp_path / "ev.csv", "s,i,o,t\n" + "".join(
        f"s{k},i{k % 4},o,2018-03-01 00:{k:02d}:0{j}\n" for k in range(30) for j in range(3)))
    raw = read_generic(ev, ColumnMap(item="i", op="o", time="t", session="s"))
    assert raw.events["time"].min() == pytest.approx(1519862400.0)


def test_prepare_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    ev = events_csv(tmp_path)
    out = prepare(read_generic(ev, COLS), tmp_path / "art")
    with pytest.raises(FileExistsError):
        prepare(read_generic(ev, COLS), out)
    import mkmsr.data.prepare as P

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(P.np, "save", boom)
    with pytest.raises(RuntimeError):
        prepare(read_generic(ev, COLS), tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


# ---- bad input -----------------------------------------------------------------------------

def test_missing_column(tmp_path):
    ev = write(tmp_path / "e.csv", "sess,item,ts\ns1,a,1\n")
    with pytest.raises(DataError, match=r"e\.csv.*column 'op'.*missing column"):
        read_generic(ev, COLS)


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_generic(write(tmp_path / "e.csv", ""), COLS)
    with pytest.raises(DataError, match="no rows"):
        read_generic(write(tmp_path / "h.csv", "sess,item,op,ts\n"), COLS)


def test_wrong_type_names_row_and_column(tmp_path):
    ev = write(tmp_path / "e.csv", "sess,item,op,ts\ns1,a,v,1\ns1,b,v,2\ns1,c,v,yesterday\n")
    with pytest.raises(DataError) as e:
        read_generic(ev, COLS)
    assert e.value.row == 3 and e.value.column == "ts" and "yesterday" in str(e.value)


def test_nan_and_empty_cells(tmp_path):
    ev = write(tmp_path / "e.csv", "sess,item,op,ts\ns1,a,v,1\ns1,,v,2\n")
    with pytest.raises(DataError) as e:
        read_generic(ev, COLS)
    assert (e.value.row, e.value.column) == (2, "item")
    ev = write(tmp_path / "n.csv", "sess,item,op,ts\ns1,a,v,1\ns1,b,v,NaN\n")
    with pytest.raises(DataError) as e:
        read_generic(ev, COLS)
    assert (e.value.row, e.value.column) == (2, "ts")


def test_unknown_relation(tmp_path):
    ev = events_csv(tmp_path)
    kg = write(tmp_path / "kg.csv", "item_id,relation,value\na1,brand,x\na2,colour,red\n")
    with pytest.raises(DataError) as e:
        read_generic(ev, COLS, knowledge=kg, relations=["brand", "cate"])
    assert (e.value.row, e.value.column) == (2, "relation") and "colour" in str(e.value)


def test_only_one_event_sessions(tmp_path):
    ev = write(tmp_path / "e.csv", "sess,item,op,ts\n" + "".join(f"s{i},a{i},v,{i}\n" for i in range(20)))
    with pytest.raises(DataError, match="at least 2 micro-behaviours"):
        prepare(read_generic(ev, COLS), tmp_path / "x")
    with pytest.raises(ConfigError, match="min_session_length"):
        PrepareConfig(min_session_length=1).validate()


def test_not_a_prepared_dataset(tmp_path):
    with pytest.raises(DataError, match="mkmsr prepare"):
        PreparedData(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="unsupported"):
        PreparedData(tmp_path)


def test_parquet_input_and_user_gap_sessions(tmp_path):
    import polars as pl
    df = pl.DataFrame({"user": [f"u{u}" for u in range(30) for _ in range(4)],
                       "item": [f"i{(u + t) % 6}" for u in range(30) for t in range(4)],
                       "op": ["v"] * 120, "ts": [u * 86400.0 + t * 60 for u in range(30) for t in range(4)]})
    df.write_parquet(tmp_path / "ev.parquet")
    raw = read_generic(tmp_path / "ev.parquet", ColumnMap(item="item", op="op", time="ts", user="user"))
    d = PreparedData(prepare(raw, tmp_path / "art"))
    assert sum(d.manifest["splits"][s]["sessions"] for s in ("train", "valid", "test")) == 30


def test_exclude_latest_moves_the_test_block_back_disjoint_and_adjacent(tmp_path):
    """Rolling origin: exclude_latest = k * test_fraction leaves the latest k blocks out, so the test
    blocks of k = 0, 1, 2 are disjoint, adjacent in time, and each trains on earlier sessions only."""
    ev = events_csv(tmp_path, n_sessions=50)
    tests = []
    for k in range(3):
        out = prepare(read_generic(ev, COLS), tmp_path / f"art{k}", PrepareConfig(exclude_latest=0.1 * k))
        m = PreparedData(out).manifest
        assert m["config"]["exclude_latest"] == pytest.approx(0.1 * k)
        # 50 sessions: 5 per block left out, 5 in test, 10% of the rest in validation
        assert m["splits"]["test"]["sessions"] == 5
        assert m["filtering"].get("excluded_latest_sessions", 0) == 5 * k
        assert m["splits"]["train"]["sessions"] + m["splits"]["valid"]["sessions"] == 50 - 5 * (k + 1)
        starts = {s: pl.read_parquet(out / f"{s}.sessions.parquet")["start"] for s in ("train", "valid", "test")}
        assert starts["valid"].max() < starts["test"].min()
        tests.append(pl.read_parquet(out / "test.sessions.parquet")["start"].to_list())
    # session s starts at 1000 * s: block 0 is s45..s49, block 1 s40..s44, block 2 s35..s39
    assert [sorted(t) for t in tests] == [[1000 * s for s in range(45 - 5 * k, 50 - 5 * k)] for k in range(3)]
    with pytest.raises(ConfigError, match="exclude_latest"):
        prepare(read_generic(ev, COLS), tmp_path / "bad", PrepareConfig(exclude_latest=0.95))
    assert not (tmp_path / "bad").exists()
