"""benchmarks/calibration_speed.py on a finished mkmsr-rn run (synthetic data): the staged
calibration memo chooses what recomputing chooses, with the same validation value at every point,
and what the run recorded when it finished."""
import importlib.util
import json
from pathlib import Path

from mkmsr.data.dataset import PreparedData
from mkmsr.training.train import TrainConfig, Trainer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration_speed.py"


def load_script():
    spec = importlib.util.spec_from_file_location("calibration_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_calibration_speed_staged_equals_unstaged_and_the_record(synthetic_data, tmp_path):
    data = PreparedData(synthetic_data)
    run = tmp_path / "run"
    Trainer(data, "mkmsr-rn", {"dim": 16, "cold_items": "match"}, TrainConfig(epochs=1, seed=0, threads=1), run).fit()
    out = tmp_path / "speed.json"
    mod = load_script()
    # the baseline checkout is this one: the same code in a fresh process
    src = Path(__file__).resolve().parents[1] / "src"
    assert mod.main(["--run", str(run), "--data", str(synthetic_data), "--threads", "1", "--json", str(out),
                     "--baseline-src", str(src)]) == 0
    got = json.loads(out.read_text())
    assert got["identical"] is True and got["as_recorded"] is True and got["identical_to_baseline"] is True
    assert got["staged"]["points"] == got["unstaged"]["points"] > 10
    assert got["staged"]["chosen"] == got["unstaged"]["chosen"] and got["staged"]["chosen"]
    assert got["staged"]["seconds"] > 0 and got["speedup"] > 0
