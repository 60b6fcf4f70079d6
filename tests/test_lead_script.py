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
