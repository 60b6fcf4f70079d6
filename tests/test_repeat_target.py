"""benchmarks/repeat_target.py on finished MKM-SR-RN, S-POP and CORE-KG runs of a small work
folder (synthetic data)."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mkmsr.data.dataset import PreparedData
from mkmsr.errors import ConfigError
from mkmsr.training.train import TrainConfig, Trainer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("repeat_target", BENCH / "repeat_target.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_per_sample_ranks_use_the_pessimistic_tie_rule():
    mod = load_script()
    lp = torch.tensor([[3.0, 1.0, 1.0, 0.0], [0.0, 5.0, 2.0, 2.0]])
    inside = torch.tensor([[True, False, True, False], [False, True, False, False]])
    rr, hit, rep = mod.per_sample(lp, torch.tensor([2, 2]), inside)
    # row 0: item 2 (column 1) ties column 2 -> rank 3, not a session item; row 1: first, a session item
    assert rr.tolist() == pytest.approx([1 / 3, 1.0]) and hit.tolist() == [1.0, 1.0]
    assert rep.tolist() == [False, True]
    s = mod.summary(rr.numpy(), hit.numpy(), rep.numpy())
    assert s["repeat_mrr@20"] == pytest.approx(100.0) and s["first_mrr@20"] == pytest.approx(100 / 3)


def test_repeat_target_reads_finished_runs(synthetic_data, tmp_path):
    mod = load_script()
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(synthetic_data, work / "prepared-taobao")
    data = PreparedData(work / "prepared-taobao")
    runs = work / "runs" / "Taobao"
    out = tmp_path / "target.json"
    argv = ["--work", str(work), "--datasets", "Taobao", "--seeds", "0,1", "--json", str(out)]
    with pytest.raises(ConfigError, match="s-pop"):                     # no reference run yet
        mod.main(argv)
    Trainer(data, "s-pop", {}, TrainConfig(seed=0), runs / "s-pop" / "seed0", progress=False).fit()
    Trainer(data, "core-kg", {"dim": 8}, TrainConfig(epochs=1, batch_size=64, seed=0), runs / "core-kg" / "seed0",
            progress=False).fit()
    got = Trainer(data, "mkmsr-rn", {"dim": 8, "explore_expert": "", "explore_expert2": "", "calibrate": False, "hurdle_shift": 2.0},
                  TrainConfig(epochs=1, batch_size=64, seed=0), runs / "mkmsr-rn" / "seed0", progress=False).fit()
    assert mod.main(argv) == 0
    res = json.loads(out.read_text())["datasets"]["Taobao"]
    assert [r["seed"] for r in res["runs"]] == [0]                       # seed 1 has no run
    r = res["runs"][0]
    # the calibrated point is the run itself
    assert (r["calibrated"]["temperature"], r["calibrated"]["shift"]) == (1.0, 2.0)
    assert r["calibrated"]["test"]["mrr@20"] == pytest.approx(got["test"]["mrr@20"], abs=1e-3)
    assert r["calibrated"]["test"]["hit@20"] == pytest.approx(got["test"]["hit@20"], abs=1e-3)
    assert res["reference_valid_repeat_mrr@20"] == pytest.approx(
        json.loads((runs / "s-pop" / "seed0" / "metrics.json").read_text())["valid"]["repeat_mrr@20"])
    # the floor point (when there is one) meets the reference on validation, and is the best such point
    if r["floor"] is not None:
        assert r["floor"]["valid"]["repeat_mrr@20"] >= res["reference_valid_repeat_mrr@20"]
    # the session-first point puts every session item first: its repeat MRR@20 is the model's order
    # among the session's items, at least as good as any other point's
    sf = r["session-first"]["test"]
    assert (r["session-first"]["temperature"], r["session-first"]["shift"]) == (1.0, 40.0)
    assert sf["repeat_mrr@20"] >= r["calibrated"]["test"]["repeat_mrr@20"] - 1e-6
    assert set(res["paired"]["session-first"]) == {"vs_calibrated", "vs_core-kg"}
    assert np.isfinite(res["paired"]["session-first"]["vs_core-kg"]["mrr@20"]["se"])
