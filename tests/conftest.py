"""Shared fixtures: small prepared datasets built on the fly, and the shared JDATA Demo path."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from mkmsr.data.prepare import PrepareConfig, prepare
from mkmsr.data.sources import ColumnMap, read_generic
from mkmsr.data.synthetic import SyntheticConfig, write_synthetic

ROOT = Path(__file__).resolve().parents[1]
DEMO = Path(os.environ.get("MKMSR_DEMO_DATA", ROOT.parent / "shared" / "data" / "jdata-demo"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def demo_or_skip() -> Path:
    if not (DEMO / "train.csv").exists():
        pytest.skip(f"shared JDATA Demo not found at {DEMO} (set MKMSR_DEMO_DATA to its folder); "
                    "the quality floor on real data is skipped")
    return DEMO


SYN_COLS = ColumnMap(item="item_id", op="operation", time="timestamp", session="session_id")


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> Path:
    """A small synthetic dataset (events.csv + knowledge.csv) with cold-start test items."""
    d = tmp_path_factory.mktemp("syn")
    return write_synthetic(d / "raw", SyntheticConfig(n_sessions=900, n_items=200, n_cold_items=20,
                                                      n_categories=8, n_brands=10, seed=1))


@pytest.fixture(scope="session")
def synthetic_data(synthetic_raw, tmp_path_factory) -> Path:
    raw = read_generic(synthetic_raw / "events.csv", SYN_COLS, knowledge=synthetic_raw / "knowledge.csv")
    return prepare(raw, tmp_path_factory.mktemp("prep") / "syn", PrepareConfig(cold_start="keep"))


def planted_events(n_sessions: int = 400, n_items: int = 12, seed: int = 0) -> pl.DataFrame:
    """Sessions that walk i -> i+1 -> i+2 (mod n_items) with operation 'view': the planted
    next item of a session ending in i is i+1."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sessions):
        start = int(rng.integers(0, n_items))
        for t in range(4):
            rows.append((f"s{s}", f"it{(start + t) % n_items}", "view", float(s * 100 + t)))
    return pl.DataFrame(rows, schema=["session_id", "item_id", "operation", "timestamp"], orient="row")


@pytest.fixture(scope="session")
def planted_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("planted")
    ev = planted_events()
    ev.write_csv(d / "events.csv")
    items = sorted(set(ev["item_id"].to_list()))
    kg = pl.DataFrame({"item_id": items, "relation": ["parity"] * len(items),
                       "value": [str(int(i[2:]) % 2) for i in items]})
    kg.write_csv(d / "knowledge.csv")
    raw = read_generic(d / "events.csv", SYN_COLS, knowledge=d / "knowledge.csv")
    return prepare(raw, d / "prepared", PrepareConfig())
