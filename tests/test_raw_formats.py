"""Raw public formats (issue 4): JDATA 2018/2019, JDATA 2017 and KKBOX prepare from small
fixtures in their real layouts; malformed rows stop with file, row, column and expectation."""
import shutil
from pathlib import Path

import polars as pl
import pytest

from mkmsr.cli import main
from mkmsr.data.dataset import PreparedData
from mkmsr.data.prepare import PrepareConfig, prepare
from mkmsr.data.raw_formats import FORMATS, read
from mkmsr.errors import ConfigError, DataError

FIX = Path(__file__).resolve().parent / "fixtures"
RELATIONS = {"jdata2018": {"brand", "shop", "cate", "years"}, "jdata2017": {"cate", "brand", "a1", "a2", "a3"},
             "kkbox": {"artist", "genre", "language", "year"}}


def session_keys(d: PreparedData) -> list[str]:
    return pl.concat([pl.read_parquet(d.path / f"{s}.sessions.parquet") for s in ("train", "valid", "test")]
                     )["session_key"].to_list()


def triplets(d: PreparedData) -> set[tuple[str, str, str]]:
    items = dict(zip(d.items["item_idx"].to_list(), d.items["item_id"].to_list()))
    rel = d.relations["relation"].to_list()
    val = dict(zip(d.attributes["entity_idx"].to_list(), d.attributes["value"].to_list()))
    return {(items[h], rel[r], val[t]) for h, r, t in d.kg.tolist()}


@pytest.mark.parametrize("fmt", ["jdata2018", "jdata2017", "kkbox"])
def test_each_format_prepares_from_its_fixtures_with_the_papers_filters(fmt, tmp_path, capsys):
    assert main(["prepare", "--format", fmt, "--source", str(FIX / fmt), "--out", str(tmp_path / fmt)]) == 0
    d = PreparedData(tmp_path / fmt)
    d.verify()
    m = d.manifest
    assert m["config"]["min_item_count"] == 3 and m["config"]["min_session_length"] == 2
    assert m["source"]["format"] == fmt
    for s in ("train", "valid", "test"):
        assert m["splits"][s]["sessions"] >= 1 and d.split(s).lengths.min() >= 2
    # every training-period item occurs at least 3 times there
    counts = pl.concat([pl.Series(d.split(s).items) for s in ("train", "valid")]).value_counts()
    assert counts["count"].min() >= 3
    assert set(m["relations"]) == RELATIONS[fmt] and "items" in capsys.readouterr().out


def test_jdata2018_sessions_time_quirks_and_knowledge(tmp_path):
    raw = read("jdata2018", FIX / "jdata2018")
    # "2018-03-01 08:00:00.0" and "...:00" are the same instant
    assert raw.events["time"].min() == pytest.approx(1519891200.0)
    d = PreparedData(prepare(raw, tmp_path / "a", PrepareConfig(min_item_count=3)))
    keys = session_keys(d)
    # user 300000: events at 0, 1, 60 min (a 59-minute gap: same session), then 121, 122 min (a 61-minute gap)
    assert {"300000#0", "300000#1"} <= set(keys) and "300000#2" not in keys
    assert "1999" not in d.items["item_id"].to_list()  # seen twice: below the paper's 3
    kg = triplets(d)
    assert ("1000", "years", "201501") in kg and ("1000", "brand", "100") in kg and ("1000", "shop", "501") in kg
    assert not any(h == "1003" and r == "brand" for h, r, _ in kg)  # empty brand: no triplet
    assert sorted(d.operations["op"].to_list()) == ["1", "2", "3", "4", "5"]


def test_jdata2017_float_users_duplicates_unknowns_and_gap(tmp_path):
    raw = read("jdata2017", FIX / "jdata2017")
    files = [FIX / "jdata2017" / f"JData_Action_20160{m}.csv" for m in (2, 3, 4)]
    all_rows = pl.concat([pl.read_csv(f, infer_schema=False) for f in files])
    assert raw.events.height == all_rows.unique().height < all_rows.height  # exact duplicates are one event
    assert raw.session_keys["session_key"].str.starts_with("266079#").any()  # "266079.0" is user 266079
    kg = set(map(tuple, raw.knowledge.with_columns(pl.col("item").cast(pl.Utf8)).rows()))
    assert ("5009", "cate", "6") in kg and ("5009", "brand", "204") in kg  # from action rows: not in JData_Product
    assert ("5001", "a1", "1") in kg and ("5001", "a2", "2") in kg
    assert not any(h == "5000" and r == "a2" for h, r, _ in kg)  # -1 = unknown
    # a 31-minute gap (the fixture's) cuts at the default 30 minutes but not at 45
    assert read("jdata2017", FIX / "jdata2017", session_gap=45 * 60).session_keys.height \
        < raw.session_keys.height


def test_kkbox_rows_as_clock_operations_and_isrc_years(tmp_path):
    raw = read("kkbox", FIX / "kkbox")
    keys = raw.session_keys["session_key"].to_list()
    assert {"user0XyZ=#0", "user0XyZ=#1"} <= set(keys)   # a jump of 2,060 rows: new session
    assert "user4XyZ=#1" not in keys                       # a jump of exactly 2,000 rows: same session
    ops = set(raw.events["op"].unique().to_list())
    assert "unknown" in ops and "null" not in ops and "" not in ops
    d = PreparedData(prepare(raw, tmp_path / "k", PrepareConfig(min_item_count=3)))
    kg = triplets(d)
    assert ("song00+/=", "year", "2012") in kg      # TWUM71200043: 12 < 18
    assert ("song01+/=", "year", "1998") in kg      # USSM19800011
    assert ("song07+/=", "year", "1918") in kg      # JPB601800077: 18 is not < 18
    assert ("song00+/=", "genre", "465") in kg and ("song00+/=", "genre", "958") in kg
    assert ("song01+/=", "language", "52") in kg and ("song00+/=", "artist", "Artist, 0") in kg
    assert not any(h == "song05+/=" and r == "language" for h, r, _ in kg)  # -1.0 = unknown
    assert not any(h == "song04+/=" and r == "year" for h, r, _ in kg)      # ISRC "XX"


# ---- malformed input ---------------------------------------------------------------------------

def broken_copy(tmp_path: Path, fmt: str, file: str, row: int, column: str, value: str) -> Path:
    """Copy a fixture and set data row ``row`` (1-based), ``column`` to ``value``."""
    dst = tmp_path / fmt
    shutil.copytree(FIX / fmt, dst)
    df = pl.read_csv(dst / file, infer_schema=False)
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == row - 1).then(pl.lit(value)).otherwise(pl.col(column))
                         .alias(column))
    df.write_csv(dst / file)
    return dst


@pytest.mark.parametrize("fmt,file,row,column,value,expected", [
    ("jdata2018", "jdata_action.csv", 7, "action_time", "2018-02-30 10:00:00", "date-time"),
    ("jdata2018", "jdata_action.csv", 12, "sku_id", "", "an integer"),
    ("jdata2018", "jdata_action.csv", 3, "type", "9", "one of"),
    ("jdata2018", "jdata_product.csv", 2, "market_time", "last year", "date-time"),
    ("jdata2017", "JData_Action_201603.csv", 4, "user_id", "266079.5", "266079.0"),
    ("jdata2017", "JData_Action_201604.csv", 9, "type", "7", "one of"),
    ("kkbox", "train.csv", 100, "msno", "", "a user id"),
    ("kkbox", "songs.csv", 3, "language", "fifty-two", "a number"),
])
def test_malformed_rows_name_file_row_column_and_expectation(tmp_path, fmt, file, row, column, value, expected):
    src = broken_copy(tmp_path, fmt, file, row, column, value)
    with pytest.raises(DataError) as e:
        read(fmt, src)
    err = e.value
    assert (Path(err.file).name, err.row, err.column) == (file, row, column)
    assert expected in str(err)


def test_missing_files_columns_and_unknown_format(tmp_path, capsys):
    with pytest.raises(DataError, match="jdata_product.csv"):
        shutil.copytree(FIX / "jdata2018", tmp_path / "j")
        (tmp_path / "j" / "jdata_product.csv").unlink()
        read("jdata2018", tmp_path / "j")
    shutil.copytree(FIX / "kkbox", tmp_path / "k")
    pl.read_csv(tmp_path / "k" / "train.csv").drop("source_system_tab").write_csv(tmp_path / "k" / "train.csv")
    with pytest.raises(DataError) as e:
        read("kkbox", tmp_path / "k")
    assert e.value.column == "source_system_tab"
    with pytest.raises(ConfigError, match="jdata2018"):
        read("jdata2020", tmp_path)
    assert main(["prepare", "--format", "kkbox", "--out", str(tmp_path / "o")]) == 2
    assert "--source" in capsys.readouterr().err
    assert set(FORMATS) == {"jdata2018", "jdata2019", "jdata2017", "kkbox", "taobao"}
