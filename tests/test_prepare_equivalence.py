"""The fast preparation (integer session indices, numpy gathers) writes exactly the artifact of
the original string-keyed implementation (tests/reference_prepare.py), file for file."""
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mkmsr.data.prepare import PrepareConfig, prepare
from mkmsr.data.sources import ColumnMap, read_generic, read_jdata_demo

from . import reference_prepare as ref
from .conftest import SYN_COLS, demo_or_skip


def same_artifact(raw, tmp_path: Path, **cfg) -> dict:
    fast = prepare(raw, tmp_path / "fast", PrepareConfig(**cfg))
    slow = ref.prepare(raw, tmp_path / "slow", ref.PrepareConfig(**cfg))


    a = json.loads((fast / "manifest.json").read_text())
    b = json.loads((slow / "manifest.json").read_text())
    for name in b["files"]:
        if name.endswith(".npy"):
            assert np.array_equal(np.load(fast / name), np.load(slow / name)), name
        else:
            assert pl.read_parquet(fast / name).equals(pl.read_parquet(slow / name)), name
    assert a["splits"] == b["splits"] and a["filtering"] == b["filtering"] and a["counts"] == b["counts"]
    assert a["files"] == b["files"] and a["content_sha256"] == b["content_sha256"]
    return a


@pytest.mark.parametrize("cold,min_count", [("keep", 1), ("drop", 3), ("keep", 3)])
def test_synthetic_sessions_with_cold_items(synthetic_raw, tmp_path, cold, min_count):
    raw = read_generic(synthetic_raw / "events.csv", SYN_COLS, knowledge=synthetic_raw / "knowledge.csv")
    m = same_artifact(raw, tmp_path, cold_start=cold, min_item_count=min_count)
    assert m["filtering"]["removed_rare_item_events"] > 0 or min_count == 1


def test_user_gap_sessions_ties_and_rare_first_events(tmp_path):
    rng = np.random.default_rng(5)
    rows = []
    for u in range(150):
        t = int(rng.integers(0, 50)) * 100  # many sessions share a start time: ties break on the key
        for k in range(int(rng.integers(1, 9))):
            t += int(rng.choice([10, 10, 4000]))
            rows.append((f"u{u}", f"i{int(rng.zipf(1.5)) % 60}", rng.choice(["a", "b"]), t))
    ev = tmp_path / "ev.csv"
    pl.DataFrame(rows, schema=["user", "item", "op", "ts"], orient="row").write_csv(ev)
    raw = read_generic(ev, ColumnMap(item="item", op="op", time="ts", user="user"), session_gap=3600)
    same_artifact(raw, tmp_path, min_item_count=3, valid_fraction=0.2, test_fraction=0.15)


def test_real_demo_with_given_test_period(tmp_path):
    raw = read_jdata_demo(demo_or_skip(), "keep")
    same_artifact(raw, tmp_path, cold_start="keep")
