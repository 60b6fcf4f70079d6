"""benchmarks/lead.py's row labels: how each row's options were chosen."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lead.py"


def load_script():
    spec = importlib.util.spec_from_file_location("lead_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tuning_labels_name_what_was_chosen_on_validation(tmp_path):
    mod = load_script()
    assert mod.tuning_of(tmp_path, "Demo", "stan") == "grid"
    assert mod.tuning_of(tmp_path, "Demo", "core") == "paper defaults"
    # the default mkmsr-rn has no neighbourhood: no STAN option is taken, only the calibration
    assert mod.tuning_of(tmp_path, "Demo", "mkmsr-rn") == "calibration on validation"
    assert mod.tuning_of(tmp_path, "Demo", "mkmsr-rn-no-nb") == "calibration on validation"
    assert mod.tuning_of(tmp_path, "Demo", "mkmsr-rn-nb") == "grid (nb_* from STAN's) + calibration on validation"
    # MKM-SR+'s repeat boost is chosen on validation after training
    assert mod.tuning_of(tmp_path, "Demo", "mkmsr+") == "paper defaults + repeat boost on validation"
    assert mod.tuning_of(tmp_path, "Demo", "mkmsr") == "paper defaults"
    rec = tmp_path / "optuna" / "Demo" / "core" / "budget.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"budget": {"trials": 6, "minutes": 4}}))
    assert mod.tuning_of(tmp_path, "Demo", "core") == "optuna 6 trials / 4 min"
    rec.write_text(json.dumps({"budget": {"trials": 6, "minutes": 4, "clock": "cpu"}}))
    assert mod.tuning_of(tmp_path, "Demo", "core") == "optuna 6 trials / 4 CPU min"


def test_pooled_blocks_put_each_seeds_samples_side_by_side(tmp_path, monkeypatch):
    """The rolling-origin report: a row's seed k on every test block, concatenated over samples (seeds
    cut to the fewest any block has); rows missing a block are left out; verdicts paired over the pool."""
    import numpy as np
    mod = load_script()
    n = {"A": 3, "B": 2}
    # per block, per model: (seeds, samples) hit@20 in percent (mrr@20 = half of it)
    hits = {("A", "lead"): [[100, 100, 0], [100, 0, 0]], ("B", "lead"): [[100, 100], [100, 100], [0, 0]],
            ("A", "other"): [[0, 0, 0]], ("B", "other"): [[100, 0]],
            ("A", "half"): [[0, 0, 0]]}

    class Data:
        def __init__(self, path):
            self.block = Path(path).name

        def split(self, name):
            return type("S", (), {"samples": lambda s: (np.zeros(n[self.block]), None)})()

    monkeypatch.setattr(mod, "PreparedData", Data)
    # the repeat targets: A's first sample, B's second
    monkeypatch.setattr(mod, "repeat_targets", lambda d: np.array({"A": [1, 0, 0], "B": [0, 1]}[d.block], bool))
    monkeypatch.setattr(mod, "run_dirs", lambda work, b, data, m, seeds: [(b, m)] if (b, m) in hits else [])
    monkeypatch.setattr(mod, "seed_matrix", lambda dirs, data, metric: np.asarray(
        hits[dirs[0]], float) * (1.0 if metric == "hit@20" else 0.5))
    res = mod.pooled(tmp_path, {"A": tmp_path / "A", "B": tmp_path / "B"}, ["lead", "other", "half"], 5, "lead")
    assert res["test_samples"] == 5 and set(res["rows"]) == {"lead", "other"}
    assert res["rows"]["lead"]["runs"] == 2 and res["rows"]["other"]["runs"] == 1
    # lead's two pooled seeds: [100, 100, 0, 100, 100] and [100, 0, 0, 100, 100] -> 80 and 60
    assert np.allclose(res["rows"]["lead"]["hit@20"], (70.0, 10.0))
    assert np.allclose(res["rows"]["other"]["mrr@20"], (10.0, 0.0))
    # repeat samples A0, B1: lead seeds [100, 100], [100, 100]; first-time A1, A2, B0: [100, 0, 100], [0, 0, 100]
    assert np.allclose(res["rows"]["lead"]["repeat_hit@20"], (100.0, 0.0))
    assert np.allclose(res["rows"]["lead"]["first_hit@20"], (50.0, 50.0 / 3))
    assert np.allclose(res["rows"]["other"]["first_mrr@20"], (50.0 / 3, 0.0))
    v = res["lead_vs"]["other"]["hit@20"]
    assert np.isclose(v["mean"], 70.0 - 20.0) and v["se"] > 0 and v["seeds_a"] == 2
    assert "**ahead**" in mod.verdict(v) and mod.verdict(None) == "–"


def test_each_rows_runs_and_their_experts_are_validation_checked(tmp_path, monkeypatch):
    """The report counts, per row, the runs (explore experts included) whose logged validation of the
    selected epoch matches their checkpoint's (benchmarks/check_runs.py), and names the others."""
    mod = load_script()
    runs = [tmp_path / "seed0", tmp_path / "seed1"]
    for d in runs:
        (d / "expert").mkdir(parents=True)
        (d / "expert" / "metrics.json").write_text("{}")
    verdicts = {runs[0]: True, runs[0] / "expert": True, runs[1]: False, runs[1] / "expert": None}
    monkeypatch.setattr(mod, "check_run", lambda rd: None if verdicts[rd] is None and rd.name == "nothing"
                        else {"consistent": verdicts[rd]})
    got = mod.validation_checks(runs)
    assert got == {"checked": 3, "inconsistent": [str(runs[1])]}
