"""benchmarks/check_runs.py: the logged validation of a run's selected epoch read back against the
figure recomputed on its checkpoint, from the run's own outputs (synthetic data)."""
import importlib.util
import json
from pathlib import Path

import pytest

from mkmsr.data.dataset import PreparedData
from mkmsr.training.train import TrainConfig, Trainer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "check_runs.py"


def load_script():
    spec = importlib.util.spec_from_file_location("check_runs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def work(synthetic_data, tmp_path_factory):
    """Finished runs of a plain model, one with a boost tuned after training (MKM-SR+) and one with a
    calibration (MKM-SR-RN with a CORE expert), as a benchmark lays them out."""
    w = tmp_path_factory.mktemp("work")
    data = PreparedData(synthetic_data)
    for name, over in (("narm", {"dim": 16}), ("mkmsr+", {"dim": 16}),
                       ("mkmsr-rn-1x", {"dim": 16, "explore_expert": "core", "calibration_starts": 1})):
        Trainer(data, name, over, TrainConfig(epochs=1, batch_size=64, seed=0),
                w / "runs" / "Syn" / name / "seed0", progress=False).fit()
    return w


def test_runs_that_record_their_check_and_runs_read_back_agree(work, tmp_path):
    mod = load_script()
    got = mod.audit(work)
    assert set(got) == {"Syn/narm", "Syn/mkmsr+", "Syn/mkmsr-rn-1x", "Syn/mkmsr-rn-1x/expert"}
    assert all(r["runs"] == r["consistent"] == 1 and r["max_abs_difference"] == 0.0 for r in got.values())
    # the same runs as trained before the check existed: read back from the boost curve, the
    # calibration's first point, the final validation
    for run in (work / "runs").rglob("metrics.json"):
        m = json.loads(run.read_text())
        recorded = m.pop("validation_check")
        run.write_text(json.dumps(m))
        back = mod.check_run(run.parent)
        assert back["source"] == "read back" and back["recomputed"] == recorded["recomputed"], run
    out = tmp_path / "audit.json"
    totals = mod.main(["--work", str(work), "--json", str(out)])
    assert totals == {"runs": 4, "consistent": 4, "inconsistent": 0, "unknown": 0}
    assert json.loads(out.read_text())["totals"] == totals


def test_a_logged_curve_that_differs_from_the_checkpoint_is_reported(work):
    """What stop 29's bug left behind: the logged validation of the selected epoch is not the
    checkpoint's."""
    mod = load_script()
    rd = work / "runs" / "Syn" / "mkmsr+" / "seed0"
    best = json.loads((rd / "metrics.json").read_text())["best_epoch"]
    lines = [json.loads(x) for x in (rd / "log.jsonl").read_text().splitlines()]
    for rec in lines:
        if rec.get("epoch") == best:
            rec["valid"]["mrr@20"] += 2.0
    (rd / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    row = mod.audit(work)["Syn/mkmsr+"]
    assert row["inconsistent"] == 1 and row["max_abs_difference"] == pytest.approx(2.0, abs=1e-3)
    assert row["inconsistent_runs"][0]["run"] == "Syn/mkmsr+/seed0"
    with pytest.raises(SystemExit, match="no elsewhere/ folder"):
        mod.main(["--work", str(work), "--runs", "elsewhere"])
