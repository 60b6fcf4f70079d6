"""benchmarks/repeat_oracle.py (a synthetic repeat detector of known AUC in a finished MKM-SR-RN's
hurdle) and benchmarks/repeat_order.py (how well a session's own items can be ordered), on finished
runs of a small work folder (synthetic data)."""
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from mkmsr.checkpoint import load_checkpoint
from mkmsr.data.dataset import PreparedData
from mkmsr.errors import ConfigError
from mkmsr.training.train import TrainConfig, Trainer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_synthetic_detector_has_the_auc_it_is_drawn_for():
    mod = load("repeat_oracle")
    rng = np.random.default_rng(0)
    y = rng.random(20_000) < 0.2
    for auc in (0.65, 0.8, 0.95):
        d = mod.separation(auc)
        assert NormalDist().cdf(d / math.sqrt(2)) == pytest.approx(auc)
        z = d * (y - 0.5) + rng.standard_normal(y.size)
        assert mod.auc_of(z, y) == pytest.approx(auc, abs=0.01)
    assert mod.auc_of(np.array([0.1, 0.2, 0.2, 0.9]), np.array([False, False, True, True])) == pytest.approx(0.875)


@pytest.fixture(scope="module")
def work(synthetic_data, tmp_path_factory):
    w = tmp_path_factory.mktemp("oracle") / "work"
    w.mkdir()
    os.symlink(synthetic_data, w / "prepared-taobao")
    data = PreparedData(w / "prepared-taobao")
    runs = w / "runs" / "Taobao"
    Trainer(data, "s-pop", {}, TrainConfig(seed=0), runs / "s-pop" / "seed0", progress=False).fit()
    Trainer(data, "core-kg", {"dim": 8}, TrainConfig(epochs=1, batch_size=64, seed=0), runs / "core-kg" / "seed0",
            progress=False).fit()
    Trainer(data, "mkmsr-rn", {"dim": 8, "explore_expert": "", "explore_expert2": "", "calibrate": False,
                               "hurdle_shift": 2.0},
            TrainConfig(epochs=1, batch_size=64, seed=0), runs / "mkmsr-rn" / "seed0", progress=False).fit()
    return w


def test_repeat_oracle_reads_finished_runs(work, tmp_path):
    mod, target = load("repeat_oracle"), load("repeat_target")
    out = tmp_path / "oracle.json"
    argv = ["--work", str(work), "--datasets", "Taobao", "--model", "mkmsr-rn", "--seeds", "0", "--json", str(out)]
    with pytest.raises(ConfigError, match="no finished run"):
        mod.main(argv[:-3] + ["0,1", "--json", str(out)])        # seed 1 was never trained
    assert mod.main(argv) == 0
    res = json.loads(out.read_text())["datasets"]["Taobao"]
    rows = {r["z"]: r for r in res["rows"]}
    assert list(rows) == ["own"] + [f"{x:.2f}" for x in mod.AUCS]
    assert rows["1.00"]["auc_test"] == pytest.approx(1.0)
    spop = json.loads((work / "runs" / "Taobao" / "s-pop" / "seed0" / "metrics.json").read_text())
    assert res["reference_repeat_mrr@20"]["test"] == pytest.approx(spop["test"]["repeat_mrr@20"])
    for r in rows.values():
        assert r["best"] is not None and set(r["best"]["vs_core-kg"]) == {"hit@20", "mrr@20"}
        # the hindsight point (where one exists) reaches S-POP's test repeat MRR@20 by construction
        if r["hindsight"] is not None:
            assert r["hindsight"]["repeat_mrr@20"] >= res["reference_repeat_mrr@20"]["test"] - 1e-9
            assert r["hindsight"]["meets"]["repeat_target"]

    # the same hurdle arithmetic as repeat_target.py: the model's own z at the session-first point
    data = PreparedData(work / "prepared-taobao")
    model = load_checkpoint(work / "runs" / "Taobao" / "mkmsr-rn" / "seed0" / "best")[0].eval()
    model.fit_statistics(data)
    cache = mod.forward(model, data, "test")
    for key in ((1.0, 40.0), (2.0, 0.5)):
        mine = mod.summary(*mod.score(cache, key[0] * cache["z"] + key[1]))
        theirs = target.summary(*target.sweep(model, data, "test")[key])
        assert mine == pytest.approx(theirs, abs=1e-4)
    # the own row's AUC is the model's z against the labels
    assert rows["own"]["auc_test"] == pytest.approx(mod.auc_of(cache["z"], cache["y"].astype(bool)))


def test_repeat_order_ranks_a_session_own_items(work, tmp_path):
    pytest.importorskip("sklearn", reason="the 'study' extra (scikit-learn) is not installed")
    mod = load("repeat_order")
    data = PreparedData(work / "prepared-taobao")
    pop = np.bincount(data.split("train").items, minlength=data.spec.n_items + 1)
    X, y, g = mod.candidates(data, "test", pop)
    # one candidate per distinct prefix item of each repeat sample, exactly one of them the target
    a = data.split("test")
    sess, prefix = a.samples()
    want_groups, want_rows, rr = 0, 0, []
    for s, p in zip(sess, prefix):
        o = int(a.offsets[s])
        items, t = a.items[o:o + p].tolist(), int(a.items[o + p])
        if t in items:
            want_groups += 1
            want_rows += len(set(items))
            latest = list(dict.fromkeys(items[::-1]))               # the latest first
            rr.append(1.0 / (latest.index(t) + 1))
    assert want_groups > 0 and g.max() + 1 == want_groups and len(y) == want_rows
    assert np.bincount(g, weights=y).tolist() == [1.0] * want_groups
    assert mod.mrr(-X[:, 0], y, g) == pytest.approx(100 * np.mean(rr))      # recency, by hand
    out = tmp_path / "order.json"
    assert mod.main(["--work", str(work), "--datasets", "Taobao", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["datasets"]["Taobao"]
    assert res["test"]["recency"] == pytest.approx(100 * np.mean(rr))
    assert set(res["test"]) == {"recency", "count", "logistic", "boosted"}
    assert all(0 < v <= 100 for v in res["valid"].values())
    assert "s-pop" in res


def test_repeat_time_reads_raw_jd_logs(tmp_path):
    pytest.importorskip("sklearn", reason="the 'study' extra (scikit-learn) is not installed")
    mod = load("repeat_time")
    rng = np.random.default_rng(0)
    rows = ["action_time,user_id,sku_id,type,sessionId,index"]
    for s in range(60):       # sessions of 2-6 actions over 8 items, 5-120 s apart
        t = 1519862400.0 + 1000 * s
        for _ in range(int(rng.integers(2, 7))):
            t += float(rng.integers(5, 120))
            rows.append(f"x,{s},{int(rng.integers(1, 9))},{int(rng.integers(1, 5))},{s},{t}")
    # one hand-made session, written out of time order: A@0, B@30, A@40 -> samples A->B (new), A,B->A (repeat)
    rows += ["x,99,5001,1,999,1519990040.0", "x,99,5001,1,999,1519990000.0", "x,99,5002,2,999,1519990030.0"]
    for name in ("train.csv", "test.csv", "test_new_item.csv"):
        (tmp_path / name).write_text("\n".join(rows) + "\n")
    X, y = mod.samples(tmp_path / "train.csv")
    lengths = {}
    for r in rows[1:]:
        sid = r.split(",")[4]
        lengths[sid] = lengths.get(sid, 0) + 1
    assert len(y) == sum(n - 1 for n in lengths.values())
    mine = X[-2:]                                             # the hand-made session sorts last
    assert y[-2:].tolist() == [False, True]
    assert mine[:, 0].tolist() == [1, 2]                      # prefix lengths
    assert mine[1, mod.N_ORDER] == pytest.approx(np.log1p(30.0))         # the last gap before the prediction
    assert mine[1, mod.N_ORDER + 2] == pytest.approx(np.log1p(30.0))     # the session's duration so far
    out = tmp_path / "time.json"
    assert mod.main(["--source", str(tmp_path), "--json", str(out)]) == 0
    res = json.loads(out.read_text())["datasets"]
    assert set(res) == {"Demo", "Demo(N)"} and set(res["Demo"]["auc"]) == {"order", "order + time"}
    assert all(0.0 <= v <= 1.0 for d in res["Demo"]["auc"].values() for v in d.values())
