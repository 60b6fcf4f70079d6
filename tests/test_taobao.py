"""Taobao UserBehavior (issue 9): the raw reader on fixtures cut from the real head
(tests/fixtures/make_fixtures.py), its truncated-last-row and out-of-period policies, and the
whole shared head against the measured facts of its README."""
import csv
import logging
import random
import shutil
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from mkmsr.cli import main
from mkmsr.data.dataset import PreparedData
from mkmsr.data.prepare import PrepareConfig, prepare
from mkmsr.data.raw_formats import TAOBAO_PERIOD, read
from mkmsr.errors import ConfigError, DataError

from .test_raw_formats import session_keys, triplets

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
HEAD = ROOT.parent / "shared" / "data" / "taobao-head"
FILE = "UserBehavior.csv"


def fixture_rows(name: str = "taobao") -> list[list[str]]:
    with open(FIX / name / FILE, newline="") as fh:
        return list(csv.reader(fh))


def write_rows(tmp_path: Path, rows: list[list[str]], tail: str = "") -> Path:
    """A UserBehavior.csv of ``rows`` (+ ``tail`` text after the last newline) in tmp_path/src."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / FILE).write_text("".join(",".join(r) + "\n" for r in rows) + tail)
    return src


def session_items(raw) -> dict[str, list[int]]:
    """session key -> its items in event order."""
    ev = raw.events.join(raw.session_keys, on="session", maintain_order="left")
    return {k: g["item"].to_list() for (k,), g in ev.group_by("session_key", maintain_order=True)}


# ---- reading the real layout -------------------------------------------------------------------

def test_parses_the_real_fixture_rows_operations_and_period():
    rows = fixture_rows()
    raw = read("taobao", FIX / "taobao")
    inside = [r for r in rows if TAOBAO_PERIOD[0] <= int(r[4]) < TAOBAO_PERIOD[1]]
    assert len(rows) - len(inside) == 3 == raw.source["out_of_period_rows"]   # rows 220, 221, 301
    assert raw.events.height == len(inside) and raw.source["out_of_period"] == "dropped"
    assert raw.source["dropped_truncated_row"] is None
    assert raw.events["item"].dtype == pl.Int64 and raw.events["time"].dtype == pl.Float64
    # every operation of the file, counted as the file counts them
    ops = Counter(raw.events["op"].cast(pl.Utf8).to_list())
    assert ops == Counter(r[3] for r in inside) and set(ops) == {"pv", "cart", "fav", "buy"}
    # one session key per user and session, for the four users of the fixture
    users = {k.split("#")[0] for k in raw.session_keys["session_key"].to_list()}
    assert users == {"1000636", "1000872", "1000944", "1003432"}


def test_sorts_each_user_by_time_and_ties_keep_file_order(tmp_path):
    rows = fixture_rows()
    want = session_items(read("taobao", FIX / "taobao"))
    shuffled = rows[:]
    random.Random(9).shuffle(shuffled)          # the fixture has no two rows of a user at one time
    assert shuffled != rows
    assert session_items(read("taobao", write_rows(tmp_path, shuffled))) == want
    # two events at the same second keep the order of the file, whichever it is
    t = str(TAOBAO_PERIOD[0] + 3600)
    tie = [["7", "30", "1", "pv", t], ["7", "10", "1", "pv", t], ["7", "20", "1", "pv", str(int(t) - 5)]]
    assert session_items(read("taobao", write_rows(tmp_path, tie))) == {"7#0": [20, 30, 10]}
    assert session_items(read("taobao", write_rows(tmp_path, [tie[1], tie[0], tie[2]]))) == {"7#0": [20, 10, 30]}


def test_sessions_cut_after_30_minutes_of_inactivity_and_session_gap_overrides():
    raw = read("taobao", FIX / "taobao")
    session_of_row = dict(zip(raw.events["row"].to_list(), raw.events["session"].to_list()))
    # user 1000636: row 125 follows row 124 after 2,265 s (> 30 min: a new session), row 127
    # follows row 126 after 1,617 s (the same session); user 1003432, row 311: 1,536 s
    assert session_of_row[125] == session_of_row[124] + 1
    assert session_of_row[127] == session_of_row[126] and session_of_row[311] == session_of_row[310]
    wider = read("taobao", FIX / "taobao", session_gap=2265)    # a gap must exceed --session-gap
    s2 = dict(zip(wider.events["row"].to_list(), wider.events["session"].to_list()))
    assert s2[125] == s2[124] and wider.session_keys.height < raw.session_keys.height
    assert wider.source["session_gap_seconds"] == 2265


def test_category_triplets_keep_both_categories_of_an_item(tmp_path):
    raw = read("taobao", FIX / "taobao")
    kg = set(raw.knowledge.with_columns(pl.col("item").cast(pl.Utf8)).rows())
    assert {("2633450", "cate", "2344159"), ("2633450", "cate", "3002561")} <= kg   # the head's one such item
    assert {item for item, _, _ in kg} == {r[1] for r in fixture_rows()}           # every item, one relation
    assert {rel for _, rel, _ in kg} == {"cate"}
    d = PreparedData(prepare(raw, tmp_path / "p", PrepareConfig(min_item_count=3)))
    assert {("2633450", "cate", "2344159"), ("2633450", "cate", "3002561")} <= triplets(d)


@pytest.mark.parametrize("cold", ["drop", "keep"])
def test_prepares_with_the_raw_format_filters_and_both_cold_start_policies(tmp_path, cold, capsys):
    out = tmp_path / cold
    assert main(["prepare", "--format", "taobao", "--source", str(FIX / "taobao"), "--cold-start", cold,
                 "--out", str(out)]) == 0
    d = PreparedData(out)
    d.verify()
    m = d.manifest
    assert m["config"]["min_item_count"] == 3 and m["config"]["min_session_length"] == 2
    assert m["source"]["format"] == "taobao" and m["relations"] == ["cate"]
    assert set(m["operations"]) <= {"pv", "cart", "fav", "buy"} and len(m["operations"]) >= 3
    for s in ("train", "valid", "test"):
        assert m["splits"][s]["sessions"] >= 1 and d.split(s).lengths.min() >= 2
    # the item filter: no item of the training period is seen fewer than 3 times in the whole file
    seen = Counter(r[1] for r in fixture_rows())
    item_id = dict(zip(d.items["item_idx"].to_list(), d.items["item_id"].to_list()))
    period = {item_id[int(i)] for s in ("train", "valid") for i in d.split(s).items}
    assert min(seen[i] for i in period) >= 3 and m["filtering"]["removed_rare_item_events"] > 0
    test_cold = m["splits"]["test"]["cold_target_samples"]
    assert (test_cold == 0) if cold == "drop" else (test_cold > 0)
    assert all(k.split("#")[0] in {"1000636", "1000872", "1000944", "1003432"} for k in session_keys(d))
    assert "items" in capsys.readouterr().out


# ---- the out-of-period policy ------------------------------------------------------------------

def test_out_of_period_rows_are_dropped_by_default_and_kept_on_request(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mkmsr.data.raw_formats"):
        raw = read("taobao", FIX / "taobao")
    assert "dropped 3 rows with a timestamp outside the official period" in caplog.text
    rows = set(raw.events["row"].to_list())
    assert not rows & {220, 221, 301}            # 2017-11-23/24 in UTC+8
    assert 5 in rows                              # 2017-11-25 00:32 UTC+8 (still 11-24 in UTC): inside
    kept = read("taobao", FIX / "taobao", keep_out_of_period=True)
    assert {220, 221, 301} <= set(kept.events["row"].to_list()) and kept.events.height == raw.events.height + 3
    assert kept.source["out_of_period"] == "kept" and kept.source["out_of_period_rows"] == 3
    # the CLI flag reaches the reader; a file with nothing inside the period is an error
    assert main(["prepare", "--format", "taobao", "--source", str(FIX / "taobao"), "--keep-out-of-period",
                 "--out", str(tmp_path / "k")]) == 0
    assert PreparedData(tmp_path / "k").manifest["source"]["out_of_period"] == "kept"
    with pytest.raises(DataError, match="official period"):
        read("taobao", write_rows(tmp_path, [["1", "2", "3", "pv", "1505117799"]]))


# ---- the truncated last row and malformed rows -------------------------------------------------

def test_truncated_last_row_is_an_error_naming_file_row_and_column(tmp_path, capsys):
    src = FIX / "taobao-truncated"
    assert not (src / FILE).read_bytes().endswith(b"\n")       # cut like the real head
    with pytest.raises(DataError) as e:
        read("taobao", src)
    err = e.value
    assert (Path(err.file).name, err.row, err.column) == (FILE, 40, "timestamp")
    assert "100370,1968385,1875258,pv" in str(err) and "4 of the 5 columns" in str(err)
    assert "--drop-truncated-last-row" in str(err) and "last line" in str(err)
    # the CLI: exit status 2 and the same message, no traceback
    assert main(["prepare", "--format", "taobao", "--source", str(src), "--out", str(tmp_path / "o")]) == 2
    msg = capsys.readouterr().err
    assert "row 40, column 'timestamp'" in msg and "Traceback" not in msg and not (tmp_path / "o").exists()


def test_drop_truncated_last_row_drops_it_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mkmsr.data.raw_formats"):
        raw = read("taobao", FIX / "taobao-truncated", drop_truncated_last_row=True)
    assert "dropped the malformed last row 40 '100370,1968385,1875258,pv'" in caplog.text
    assert raw.events.height == 39 and raw.events["row"].max() == 39
    assert raw.source["dropped_truncated_row"] == 40
    assert 1968385 in raw.knowledge["item"].to_list()       # from its complete row 38, not the cut one
    # a complete file is read the same with or without the option
    assert read("taobao", FIX / "taobao", drop_truncated_last_row=True).events.equals(
        read("taobao", FIX / "taobao").events)


@pytest.mark.parametrize("row,column,value,what,expected", [
    (100, "behavior_type", "click", "unknown behavior_type 'click'", "one of pv, cart, fav, buy"),
    (7, "item_id", "abc", "cannot parse 'abc'", "an integer item id"),
    (250, "timestamp", "", "empty value", "unix seconds"),
    (30, "user_id", "1000636.5", "cannot parse '1000636.5'", "an integer user id"),
])
def test_bad_value_mid_file_names_file_row_column_and_valid_values(tmp_path, row, column, value, what, expected):
    rows = fixture_rows()
    rows[row - 1][["user_id", "item_id", "category_id", "behavior_type", "timestamp"].index(column)] = value
    src = write_rows(tmp_path, rows)
    for drop in (False, True):                     # the drop option never excuses a row mid-file
        with pytest.raises(DataError) as e:
            read("taobao", src, drop_truncated_last_row=drop)
        err = e.value
        assert (Path(err.file).name, err.row, err.column) == (FILE, row, column)
        assert what in str(err) and expected in str(err) and "last line" not in str(err)


def test_malformed_rows_mid_file_are_errors_even_before_a_truncated_last_row(tmp_path):
    rows = fixture_rows()
    cut = rows[:-1] + [rows[-1][:2]]
    short = write_rows(tmp_path, rows[:49] + [rows[49][:4]] + rows[50:])
    with pytest.raises(DataError) as e:
        read("taobao", short, drop_truncated_last_row=True)
    assert (e.value.row, e.value.column) == (50, "timestamp") and "4 of the 5 columns" in str(e.value)
    extra = write_rows(tmp_path, rows[:9] + [rows[9] + ["1"]] + rows[10:])
    with pytest.raises(DataError, match="row 10: 6 columns, not 5"):
        read("taobao", extra)
    blank = write_rows(tmp_path, rows[:20] + [[""]] + rows[20:])
    with pytest.raises(DataError, match="row 21: an empty line"):
        read("taobao", blank)
    # a bad row mid-file is reported first even when the last row is cut too
    both = write_rows(tmp_path, rows[:4] + [rows[4][:3] + ["view"] + rows[4][4:]] + cut[5:-1],
                      tail=",".join(cut[-1]))
    with pytest.raises(DataError) as e:
        read("taobao", both, drop_truncated_last_row=True)
    assert (e.value.row, e.value.column) == (5, "behavior_type")
    # a last row cut to two columns, dropped on request
    src = write_rows(tmp_path, cut[:-1], tail=",".join(cut[-1]))
    with pytest.raises(DataError) as e:
        read("taobao", src)
    assert (e.value.row, e.value.column) == (len(rows), "category_id")
    assert read("taobao", src, drop_truncated_last_row=True).source["dropped_truncated_row"] == len(rows)


def test_missing_file_empty_file_and_options_of_other_formats(tmp_path, capsys):
    with pytest.raises(DataError, match=FILE):
        read("taobao", tmp_path)
    (tmp_path / FILE).write_text("")
    with pytest.raises(DataError, match="empty"):
        read("taobao", tmp_path)
    with pytest.raises(ConfigError, match="drop_truncated_last_row"):
        read("kkbox", FIX / "kkbox", drop_truncated_last_row=True)
    assert main(["prepare", "--format", "kkbox", "--source", str(FIX / "kkbox"), "--keep-out-of-period",
                 "--out", str(tmp_path / "o")]) == 2
    assert "taobao only" in capsys.readouterr().err


# ---- the whole shared head ---------------------------------------------------------------------

def head_or_skip() -> Path:
    if not (HEAD / FILE).exists():
        pytest.skip(f"the shared Taobao UserBehavior head is not at {HEAD}; the whole-head check is skipped")
    return HEAD


def test_the_shared_head_matches_its_measured_facts(tmp_path):
    head = head_or_skip()
    with pytest.raises(DataError) as e:
        read("taobao", head)
    assert (e.value.row, e.value.column) == (84476, "timestamp")
    raw = read("taobao", head, drop_truncated_last_row=True, keep_out_of_period=True)
    ev = raw.events
    # README: 84,475 complete rows, 815 users, 55,368 items, 2,914 categories, 1 item with two
    assert ev.height == 84475 and raw.source["dropped_truncated_row"] == 84476
    assert raw.session_keys["session_key"].str.split("#").list.first().n_unique() == 815
    assert ev["item"].n_unique() == 55368 and raw.knowledge["value"].n_unique() == 2914
    assert raw.knowledge.height == 55369
    assert dict(Counter(ev["op"].cast(pl.Utf8).to_list())) == {"pv": 75872, "cart": 4497, "fav": 2356, "buy": 1750}
    # README: 14,122 sessions at a 30-minute gap, 9,724 of 2+ events; 5,940 items seen 3+ times
    lens = ev.group_by("session").len()["len"]
    assert raw.session_keys.height == lens.len() == 14122 and int((lens >= 2).sum()) == 9724
    counts = ev.group_by("item").len()
    assert counts.filter(pl.col("len") >= 3).height == 5940 and counts.filter(pl.col("len") >= 3)["len"].sum() == 26515
    # the official period in UTC+8 leaves 35 rows outside (the README's 1,390 counts UTC days)
    default = read("taobao", head, drop_truncated_last_row=True)
    assert default.source["out_of_period_rows"] == 35 and default.events.height == 84475 - 35
    for cold in ("drop", "keep"):
        d = PreparedData(prepare(default, tmp_path / cold, PrepareConfig(min_item_count=3, cold_start=cold)))
        d.verify()
        sp = d.manifest["splits"]
        assert all(sp[s]["samples"] > 0 for s in ("train", "valid", "test"))
        assert sp["train"]["samples"] == 14034   # the same training split under both policies
        assert (sp["test"]["cold_target_share"] < 0.1) if cold == "drop" else (sp["test"]["cold_target_share"] > 0.5)
