"""benchmarks/knowledge_prior.py: the relation shares by hand, and the held-out check on a finished
run of a small work folder (synthetic data)."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from mkmsr.data.batching import make_batch
from mkmsr.data.dataset import PreparedData
from mkmsr.training.train import TrainConfig, Trainer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("knowledge_prior", BENCH / "knowledge_prior.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_relation_shares_by_hand(synthetic_data):
    mod = load_script()
    data = PreparedData(synthetic_data)
    got = mod.relation_shares(data)
    arr = data.split("test")
    sess, prefix = arr.samples()
    b = make_batch(arr, sess, prefix)
    kg = np.asarray(data.kg)
    names = dict(zip(data.relations["relation_idx"].to_list(), data.relations["relation"].to_list()))
    for r, name in names.items():
        vals: dict[int, set] = {}
        for h, rr, t in kg:
            if rr == r:
                vals.setdefault(int(h), set()).add(int(t))
        shared, sizes = [], []
        for i in range(len(b)):
            s = {int(x) for x, m in zip(b.items[i], b.mask[i]) if m}
            t = int(b.targets[i])
            if t in s:
                continue
            sv = set().union(*[vals.get(x, set()) for x in s])
            shared.append(bool(vals.get(t, set()) & sv))
            sizes.append(sum(1 for it, v in vals.items() if v & sv))
        assert got["first_time_targets"] == len(shared)
        assert got[name]["share_of_first_time"] == pytest.approx(np.mean(shared), abs=1e-3)
        assert got[name]["median_items_sharing"] == pytest.approx(float(np.sort(sizes)[(len(sizes) - 1) // 2]))


def test_knowledge_prior_reads_a_finished_run(synthetic_data, tmp_path):
    mod = load_script()
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(synthetic_data, work / "prepared-taobao")
    data = PreparedData(work / "prepared-taobao")
    rd = work / "runs" / "Taobao" / "mkmsr-rn-no-prior" / "seed0"
    got = Trainer(data, "mkmsr-rn-no-prior", {"dim": 8, "explore_expert": "", "explore_expert2": "", "calibrate": False},
                  TrainConfig(epochs=1, batch_size=64, seed=0), rd, progress=False).fit()
    out = tmp_path / "prior.json"
    assert mod.main(["--work", str(work), "--datasets", "Taobao", "--models", "mkmsr-rn-no-prior",
                     "--seeds", "0,1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["datasets"]["Taobao"]
    runs = res["models"]["mkmsr-rn-no-prior"]["runs"]
    assert [r["seed"] for r in runs] == [0]                                # seed 1 has no run
    r = runs[0]
    # w = 0 is the run as trained; the prior's point is the best on validation (test chooses nothing)
    assert r["test"]["model"][1] == pytest.approx(got["test"]["mrr@20"], abs=1e-3)
    assert r["valid"]["model"][1] == pytest.approx(got["valid"]["mrr@20"], abs=1e-3)
    from mkmsr.checkpoint import load_checkpoint
    model = load_checkpoint(rd / "best")[0].eval()
    model.fit_statistics(data)
    valid = mod.evaluate_prior(model, data, "valid")
    assert r["valid"]["prior"][1] == pytest.approx(max(v[1] for v in valid.values()))
    assert r["chosen"]["prior_weight"] in mod.WEIGHTS and r["chosen"]["prior_idf"] in mod.IDFS
    # the shipped model at the chosen point ranks as the script's prior does
    model.config.knowledge_prior = True
    model.config.prior_weight, model.config.prior_idf = r["chosen"]["prior_weight"], r["chosen"]["prior_idf"]
    from mkmsr.training.evaluate import metrics_from_counts, split_rank_counts
    m = metrics_from_counts(split_rank_counts(model, data, "test", 512, None), data.item_train_count)
    assert m["mrr@20"] == pytest.approx(r["test"]["prior"][1], abs=1e-3)
    assert m["hit@20"] == pytest.approx(r["test"]["prior"][0], abs=1e-3)
    shares = [v["share_of_first_time"] for v in res["relations"].values() if isinstance(v, dict)]
    assert shares and all(0.0 <= x <= 1.0 for x in shares)
