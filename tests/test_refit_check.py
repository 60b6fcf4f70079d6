"""benchmarks/refit_check.py's data step: a prepared dataset whose train split is train + valid."""
import importlib.util
from pathlib import Path

import numpy as np

from mkmsr.data.dataset import PreparedData

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "refit_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("refit_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fit_plus_valid_appends_the_validation_sessions_and_keeps_test(synthetic_data, tmp_path):
    mod = load_script()
    src = PreparedData(synthetic_data)
    out = PreparedData(mod.fit_plus_valid(Path(synthetic_data), tmp_path / "fv"))
    tr, va, both = src.split("train"), src.split("valid"), out.split("train")
    n_tr, n_va = len(tr.offsets) - 1, len(va.offsets) - 1
    assert len(both.offsets) - 1 == n_tr + n_va
    for k in (0, n_tr - 1):                               # train sessions unchanged
        assert np.array_equal(both.items[both.offsets[k]:both.offsets[k + 1]], tr.items[tr.offsets[k]:tr.offsets[k + 1]])
    for k in (0, n_va - 1):                               # then the validation sessions, whole
        j = n_tr + k
        assert np.array_equal(both.items[both.offsets[j]:both.offsets[j + 1]], va.items[va.offsets[k]:va.offsets[k + 1]])
        assert np.array_equal(both.ops[both.offsets[j]:both.offsets[j + 1]], va.ops[va.offsets[k]:va.offsets[k + 1]])
    ts, ps = src.split("test").samples()
    to, po = out.split("test").samples()
    assert np.array_equal(ts, to) and np.array_equal(ps, po)   # the same test samples
    assert (tmp_path / "fv").exists() and not (tmp_path / "fv.tmp").exists()
    assert mod.fit_plus_valid(Path(synthetic_data), tmp_path / "fv") == tmp_path / "fv"   # reused
