"""benchmarks/rank_split.py on finished runs of a small work folder (synthetic data)."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mkmsr.data.dataset import PreparedData
from mkmsr.training.train import TrainConfig, Trainer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rank_split.py"


def load_script():
    spec = importlib.util.spec_from_file_location("rank_split", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_auc_against_brute_force():
    mod = load_script()
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 6, (200,), generator=g).float()                 # ties
    y = torch.rand(200, generator=g) < 0.3
    pos, neg = s[y], s[~y]
    brute = ((pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()).mean()
    assert mod.auc(s, y) == pytest.approx(float(brute))


def test_session_features_label_repeats(synthetic_data):
    mod = load_script()
    data = PreparedData(synthetic_data)
    X, Y = mod.session_features(data, "test")
    sess, prefix = data.split("test").samples()
    assert X.shape[0] == Y.shape[0] == sess.size and torch.isfinite(X).all()
    from mkmsr.training.evaluate import repeat_mask
    arr = data.split("test")
    assert np.array_equal(Y.numpy(), repeat_mask(arr.items, arr.offsets, sess, prefix))


def test_rank_split_reads_finished_runs(synthetic_data, tmp_path):
    mod = load_script()
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(synthetic_data, work / "prepared-taobao")
    data = PreparedData(work / "prepared-taobao")
    for name, cfg in (("s-pop", {}), ("core", {"dim": 16})):
        Trainer(data, name, cfg, TrainConfig(epochs=1, batch_size=64, seed=0),
                work / "runs" / "Taobao" / name / "seed0", progress=False).fit()
    out = tmp_path / "split.json"
    assert mod.main(["--work", str(work), "--datasets", "Taobao", "--models", "s-pop,core,narm",
                     "--seeds", "0", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["datasets"]["Taobao"]
    assert set(res["models"]) == {"s-pop", "core"}                       # narm has no run: skipped
    for split in ("train", "valid", "test"):
        assert 0.0 <= res["repeat_predictability"][split]["auc"] <= 1.0
    spop = res["models"]["s-pop"]
    # S-POP ranks the session's items first: repeat ranks are their ranks among the session items
    assert spop["repeat_mrr@20"][0] == pytest.approx(spop["repeat_inside_mrr@20"][0])
    core = res["models"]["core"]
    assert core["first_outside_mrr@20"][0] >= core["first_mrr@20"][0]
    metrics = json.loads((work / "runs" / "Taobao" / "core" / "seed0" / "metrics.json").read_text())
    assert core["mrr@20"][0] == pytest.approx(metrics["test"]["mrr@20"])
    assert "inside_above" in np.load(work / "runs" / "Taobao" / "core" / "seed0" / "test_ranks.npz")


def test_repeat_decision_aucs_of_a_gated_model(synthetic_data):
    """The repeat-decision AUCs lie in [0, 1]; the gate AUC exists for a model with a repeat gate
    only, and equals the AUC of the gate read off by hand."""
    from mkmsr.models import build_model
    mod = load_script()
    data = PreparedData(synthetic_data)
    m = build_model("mkmsr-rn", data.spec, {"dim": 8, "explore_expert": "", "explore_expert2": ""})
    m.fit_statistics(data)
    m.eval()
    got = mod.repeat_decision(m, data, "test", None)
    assert 0.0 <= got["repeat_margin_auc"] <= 1.0 and 0.0 <= got["repeat_gate_auc"] <= 1.0
    from mkmsr.data.batching import make_batch
    sess, prefix = data.split("test").samples()
    b = make_batch(data.split("test"), sess, prefix)
    with torch.no_grad():
        g = m._parts(b, m.scoring_vectors(), own_excluded=False)["log_pi"][:, m.components.index("repeat")]
    y = ((b.items == b.targets[:, None]) & b.mask).any(1)
    assert got["repeat_gate_auc"] == pytest.approx(mod.auc(g, y))
    core = build_model("core", data.spec, {"dim": 8})
    core.fit_statistics(data)
    assert mod.repeat_decision(core.eval(), data, "test", None)["repeat_gate_auc"] is None
