"""benchmarks/repeat_hurdle.py on a finished MKM-SR-RN run of a small work folder (synthetic data)."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from mkmsr.data.dataset import PreparedData
from mkmsr.training.train import TrainConfig, Trainer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("repeat_hurdle", BENCH / "repeat_hurdle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hit_mrr_sums_use_the_pessimistic_tie_rule():
    mod = load_script()
    lp = torch.tensor([[3.0, 1.0, 1.0, 0.0], [0.0, 5.0, 2.0, 2.0]])
    # row 0: target item 2 (column 1) ties column 2 -> rank 3; row 1: target item 2 ranks first
    h, m = mod.hit_mrr_sums(lp, torch.tensor([2, 2]), k=20)
    assert h == 2.0 and m == pytest.approx(1 / 3 + 1.0)


def test_repeat_hurdle_reads_a_finished_run(synthetic_data, tmp_path):
    mod = load_script()
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(synthetic_data, work / "prepared-taobao")
    data = PreparedData(work / "prepared-taobao")
    rd = work / "runs" / "Taobao" / "mkmsr-rn" / "seed0"
    got = Trainer(data, "mkmsr-rn", {"dim": 8, "explore_expert": "", "explore_expert2": "", "calibrate": False},
                  TrainConfig(epochs=1, batch_size=64, seed=0), rd, progress=False).fit()
    out = tmp_path / "hurdle.json"
    assert mod.main(["--work", str(work), "--datasets", "Taobao", "--seeds", "0,1", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["datasets"]["Taobao"]
    assert [r["seed"] for r in runs] == [0]                               # seed 1 has no run
    r = runs[0]
    # the model as trained gives the run's own test figures; the hurdle's point is chosen on validation
    assert r["test"]["model"]["mrr@20"] == pytest.approx(got["test"]["mrr@20"], abs=1e-3)
    from mkmsr.checkpoint import load_checkpoint
    model = load_checkpoint(rd / "best")[0].eval()
    model.fit_statistics(data)
    valid = mod.evaluate_hurdle(model, data, "valid", mod.repeat_regression(data))
    assert r["valid_mrr@20"]["hurdle"] == pytest.approx(max(v[1] for k, v in valid.items() if k != "model"))
    assert r["valid_mrr@20"]["model"] == pytest.approx(got["valid"]["mrr@20"], abs=1e-3)
    assert r["chosen"]["shift"] in mod.SHIFTS and r["chosen"]["temperature"] in mod.TEMPERATURES
