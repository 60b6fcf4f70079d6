"""benchmarks/repeat_detect.py: its session features against hand-worked prefixes, the cross-fitting
of the item-history features, and a whole run on a small prepared folder (synthetic data)."""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mkmsr.data.batching import Batch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "repeat_detect.py"


def load_script():
    spec = importlib.util.spec_from_file_location("repeat_detect", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sequence_features_hand_worked():
    mod = load_script()
    items = torch.tensor([[5, 6, 5, 5, 0],     # last 5: 3 times, run 2, last new item (6) 2 steps back
                          [1, 2, 3, 0, 0],     # last item new: count 1, run 1, 0 steps
                          [4, 4, 4, 4, 4]])    # one item: count 5, run 5, first step 4 back
    lengths = torch.tensor([4, 3, 5])
    b = Batch(items=items, ops=torch.zeros_like(items), lengths=lengths)
    f = mod.sequence_features(b)
    expected = torch.tensor([[np.log1p(3), 2.0, np.log1p(2)],
                             [np.log1p(1), 1.0, np.log1p(0)],
                             [np.log1p(5), 5.0, np.log1p(4)]], dtype=torch.float32)
    assert torch.allclose(f, expected)


def test_history_features_cross_fitted():
    """A train prefix's item-history value never counts its own session: with one session per
    item, every cross-fitted share is the smoothed mean and every count 0."""
    mod = load_script()
    n = 10
    train = {"item": np.arange(n), "op": np.zeros(n, dtype=np.int64), "y": np.arange(n) % 2 == 0,
             "session": np.arange(n)}
    out = mod.history_features(train, train, n, 1, cross_fit=True)
    assert np.allclose(out[:, 2], 0.0)                              # log1p(0): never seen elsewhere
    mean = train["y"].mean()
    assert np.allclose(out[:, 0], mean) and np.allclose(out[:, 1], mean)
    # not cross-fitted (validation / test rows): each item's own train prefixes count
    full = mod.history_features(train, train, n, 1, cross_fit=False)
    assert np.allclose(full[:, 2], np.log1p(1.0))
    assert np.allclose(full[:, 0], (train["y"] + mod.SMOOTH * mean) / (1 + mod.SMOOTH))


def test_repeat_detect_runs_on_a_prepared_folder(synthetic_data, tmp_path):
    mod = load_script()
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(synthetic_data, work / "prepared-keep")
    out = tmp_path / "repeat-detect.json"
    assert mod.main(["--work", str(work), "--datasets", "Demo(N),Taobao", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert list(got["datasets"]) == ["Demo(N)"]                  # Taobao not prepared: skipped
    r = got["datasets"]["Demo(N)"]
    assert {"hurdle (logistic)", "+sequence (logistic)", "+item history (logistic)"} <= set(r["auc"])
    for v in r["auc"].values():
        assert 0.0 <= v["valid"] <= 1.0 and 0.0 <= v["test"] <= 1.0
    assert r["samples"]["test"] > 0 and 0.0 < r["repeat_share"]["train"] < 1.0
