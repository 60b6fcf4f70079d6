"""RecBole atomic files in and out: a prepared artifact -> atomic files -> back (our reader, and
RecBole 1.2.1 itself in its own venv) keeps the sessions, their order, the items and the knowledge."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mkmsr.data.dataset import PreparedData
from mkmsr.data.prepare import SPLITS, PrepareConfig, prepare
from mkmsr.data.recbole_files import export_recbole, read_header, read_recbole
from mkmsr.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
RECBOLE_PY = ROOT / ".venv-recbole" / "bin" / "python"


def artifact_sessions(data: PreparedData) -> dict[str, list[tuple[str, str]]]:
    """Every session of every split: key -> [(item_id, operation), ...] in order."""
    items = np.concatenate([[""], data.items.sort("item_idx")["item_id"].cast(pl.Utf8).to_numpy()])
    ops = np.concatenate([[""], data.operations.sort("op_idx")["op"].cast(pl.Utf8).to_numpy()])
    out = {}
    for s in SPLITS:
        arr = data.split(s)
        keys = pl.read_parquet(data.path / f"{s}.sessions.parquet")["session_key"].to_list()
        for k, a, b in zip(keys, arr.offsets[:-1], arr.offsets[1:]):
            out[k] = list(zip(items[arr.items[a:b]].tolist(), ops[arr.ops[a:b]].tolist()))
    return out


def artifact_triplets(data: PreparedData) -> set[tuple[str, str, str]]:
    items = dict(zip(data.items["item_idx"].to_list(), data.items["item_id"].cast(pl.Utf8).to_list()))
    rel = dict(zip(data.relations["relation_idx"].to_list(), data.relations["relation"].to_list()))
    val = dict(zip(data.attributes["entity_idx"].to_list(), data.attributes["value"].cast(pl.Utf8).to_list()))
    return {(items[h], rel[r], val[t]) for h, r, t in data.kg.tolist()}


def raw_sessions(events: pl.DataFrame) -> dict[str, list[tuple[str, str]]]:
    ev = events.sort(["session", "time", "row"])
    return {k[0]: list(zip(g["item"].to_list(), g["op"].to_list()))
            for k, g in ev.group_by("session", maintain_order=True)}


@pytest.fixture(scope="module")
def exported(synthetic_data, tmp_path_factory) -> Path:
    return export_recbole(synthetic_data, tmp_path_factory.mktemp("recbole") / "syn")


def test_export_then_import_keeps_sessions_items_order_and_knowledge(synthetic_data, exported, tmp_path):
    data = PreparedData(synthetic_data)
    assert {f.column for f in read_header(exported / "syn.inter").values()} == \
        {"session_id:token", "item_id:token", "timestamp:float", "operation:token"}
    raw = read_recbole(exported, "syn")
    want = artifact_sessions(data)
    assert raw_sessions(raw.events) == want
    assert set(map(tuple, raw.knowledge.rows())) == artifact_triplets(data)
    # prepared again with the artifact's own options: the same catalogue, sessions and splits
    again = PreparedData(prepare(raw, tmp_path / "again", PrepareConfig(**data.manifest["config"])))
    assert sorted(again.items["item_id"].to_list()) == sorted(data.items["item_id"].to_list())
    assert artifact_sessions(again) == want
    for s in SPLITS:
        assert again.manifest["splits"][s] == data.manifest["splits"][s]
    # the per-split files: the artifact's samples, in its order
    meta = json.loads((exported / "export.json").read_text())
    for s in SPLITS:
        rows = pl.read_csv(exported / f"syn.{s}.inter", separator="\t", infer_schema=False)
        assert rows.height == meta["splits"][s]["samples"] == data.manifest["splits"][s]["samples"]
    first_key = pl.read_parquet(data.path / "train.sessions.parquet")["session_key"][0]
    first = pl.read_csv(exported / "syn.train.inter", separator="\t", infer_schema=False).row(0)
    assert first == (first_key, want[first_key][0][0], want[first_key][1][0])


def test_recbole_1_2_1_loads_the_export(synthetic_data, exported):
    if not RECBOLE_PY.exists():
        pytest.skip(f"RecBole 1.2.1 peer not installed ({RECBOLE_PY} missing): run scripts/setup_recbole.sh")
    data = PreparedData(synthetic_data)
    rels = data.relations["relation"].to_list()
    p = subprocess.run([str(RECBOLE_PY), str(ROOT / "tests" / "recbole_load.py"), "--path", str(exported),
                        "--dataset", "syn", "--item-fields", ",".join(rels)],
                       capture_output=True, text=True, timeout=600, cwd=exported)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    g, b = got["general"], got["benchmark"]
    want = artifact_sessions(data)
    m = data.manifest["splits"]
    assert g["inter_num"] == sum(m[s]["events"] for s in SPLITS)
    assert g["session_num"] == sum(m[s]["sessions"] for s in SPLITS) == len(want)
    assert g["item_num"] == data.spec.n_items  # the whole catalogue, cold-start items included
    assert {k: [tuple(e) for e in v] for k, v in g["sessions"].items()} == want  # RecBole's time order = ours
    triplets = artifact_triplets(data)
    for r in rels:
        assert {(i, r, v) for i, v in g["item_features"][r].items()} == {t for t in triplets if t[1] == r}
    assert (b["train"], b["valid"], b["test"]) == tuple(m[s]["samples"] for s in SPLITS)
    assert b["item_num"] == data.spec.n_items
    for s in SPLITS:  # every prefix -> next-item sample, as RecBole holds it
        keys = pl.read_parquet(data.path / f"{s}.sessions.parquet")["session_key"].to_list()
        ours = sorted([k, [i for i, _ in want[k][:n]], want[k][n][0]] for k in keys for n in range(1, len(want[k])))
        assert b[f"{s}_samples"] == ours, s


def test_user_sessions_token_seq_knowledge_and_cli(tmp_path):
    """A hand-written RecBole dataset: user_id + time gap sessions, no operation field, a
    token_seq relation, a float field (skipped), an empty cell (no triplet); through the CLI."""
    src = tmp_path / "rb"
    src.mkdir()
    (src / "ml.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ta\t5\t100\nu1\tb\t4\t160\nu1\tc\t3\t9000\nu1\ta\t3\t9050\n"
        "u2\tb\t1\t50\nu2\tc\t2\t70\nu2\ta\t2\t80\n")
    (src / "ml.item").write_text(
        "item_id:token\tgenre:token_seq\tyear:token\tprice:float\n"
        "a\tdrama comedy\t1999\t1.5\nb\tdrama\t\t2\nc\t\t2001\t3\n")
    raw = read_recbole(src, "ml", session_gap=600)
    assert raw_sessions(raw.events) == {"u1#0": [("a", "_"), ("b", "_")], "u1#1": [("c", "_"), ("a", "_")],
                                        "u2#0": [("b", "_"), ("c", "_"), ("a", "_")]}
    assert set(map(tuple, raw.knowledge.rows())) == {("a", "genre", "drama"), ("a", "genre", "comedy"),
                                                     ("a", "year", "1999"), ("b", "genre", "drama"),
                                                     ("c", "year", "2001")}
    # the CLI: prepare from atomic files, export again
    out = tmp_path / "prep"
    p = subprocess.run([sys.executable, "-m", "mkmsr", "-q", "prepare", "--format", "recbole", "--source", str(src),
                        "--dataset", "ml", "--session-gap", "10m", "--test-fraction", "0.34",
                        "--valid-fraction", "0.5", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert PreparedData(out).manifest["source"]["format"] == "recbole"
    p = subprocess.run([sys.executable, "-m", "mkmsr", "-q", "export", "--format", "recbole", "--data", str(out),
                        "--out", str(tmp_path / "x"), "--dataset", "ml2"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "ml2.inter" in p.stdout
    item = pl.read_csv(tmp_path / "x" / "ml2.item", separator="\t", infer_schema=False)
    assert item.columns == ["item_id:token", "genre:token_seq", "year:token"]
    assert sorted(" ".join(sorted(v.split())) for v in item["genre:token_seq"].fill_null("")) == \
        ["", "comedy drama", "drama"]
    again = read_recbole(tmp_path / "x", "ml2")
    assert raw_sessions(again.events) == artifact_sessions(PreparedData(out))


def test_bad_atomic_files_name_file_row_and_field(tmp_path):
    def write(text, item=None):
        d = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "x.inter").write_text(text)
        if item is not None:
            (d / "x.item").write_text(item)
        return d

    with pytest.raises(DataError, match=r"x\.inter, header: bad header field 'item_id:tokn'"):
        read_recbole(write("session_id:token\titem_id:tokn\n"), "x")
    with pytest.raises(DataError, match=r"x\.inter, row 2, column 'timestamp:float': cannot parse 'soon'"):
        read_recbole(write("session_id:token\titem_id:token\ttimestamp:float\ns\ta\t1\ns\tb\tsoon\n"), "x")
    with pytest.raises(DataError, match=r"x\.inter, row 1, column 'item_id:token': empty"):
        read_recbole(write("session_id:token\titem_id:token\ns\t\ns\tb\n"), "x")
    with pytest.raises(DataError, match=r"neither a session_id nor a user_id field"):
        read_recbole(write("sess:token\titem_id:token\ns\ta\n"), "x")
    with pytest.raises(DataError, match=r"column 'session_id:token_seq'.*expected type token or float"):
        read_recbole(write("session_id:token_seq\titem_id:token\n1\t2\n"), "x")
    with pytest.raises(DataError, match=r"no operation field 'op'"):
        read_recbole(write("session_id:token\titem_id:token\ns\ta\n"), "x", op_field="op", require_op=True)
    with pytest.raises(DataError, match=r"x\.item, row 2, column 'item_id:token'.*second row"):
        read_recbole(write("session_id:token\titem_id:token\ns\ta\n", "item_id:token\tc:token\na\t1\na\t2\n"), "x")
    with pytest.raises(DataError, match=r"no x\.inter"):
        read_recbole(tmp_path, "x")


def test_export_refuses_ids_an_atomic_file_cannot_carry(tmp_path):
    ev = pl.DataFrame({"session_id": ["s1"] * 3 + ["s2"] * 3 + ["s3"] * 3,
                       "item_id": ["a b", "c", "a b", "c", "a b", "c", "a b", "c", "a b"],
                       "operation": ["v"] * 9, "timestamp": [float(i) for i in range(9)]})
    ev.write_csv(tmp_path / "e.csv")
    from mkmsr.data.sources import ColumnMap, read_generic

    raw = read_generic(tmp_path / "e.csv", ColumnMap(session="session_id"))
    d = prepare(raw, tmp_path / "p", PrepareConfig(valid_fraction=0.34, test_fraction=0.34))
    with pytest.raises(DataError, match=r"item id 'a b' holds a space"):
        export_recbole(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    export_recbole(d, tmp_path / "out", splits=False)  # without token_seq files a space is fine
    assert (tmp_path / "out" / "out.inter").read_text().splitlines()[1] == "s1\ta b\t0.0\tv"
