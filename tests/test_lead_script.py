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
    assert mod.tuning_of(tmp_path, "Demo", "mkmsr-rn") == "grid (nb_* from STAN's) + calibration on validation"
    # without the neighbourhood no STAN option is taken: only the calibration is chosen
    assert mod.tuning_of(tmp_path, "Demo", "mkmsr-rn-no-nb") == "calibration on validation"
    rec = tmp_path / "optuna" / "Demo" / "core" / "budget.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"budget": {"trials": 6, "minutes": 4}}))
    assert mod.tuning_of(tmp_path, "Demo", "core") == "optuna 6 trials / 4 min"
