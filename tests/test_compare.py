"""mkmsr compare: two groups of finished runs, paired over the same test samples and the seeds."""
import json
import shutil

import numpy as np
import pytest

from mkmsr import cli
from mkmsr.data.dataset import PreparedData
from mkmsr.errors import ConfigError, DataError
from mkmsr.training.compare import compare_runs
from mkmsr.training.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def runs(synthetic_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    data = PreparedData(synthetic_data)
    out = {"stamp": [], "s-pop": []}
    for seed in (0, 1):
        rd = d / f"stamp-{seed}"
        Trainer(data, "stamp", {"dim": 8}, TrainConfig(epochs=1, batch_size=64, seed=seed), rd, progress=False).fit()
        out["stamp"].append(rd)
    rd = d / "s-pop"
    Trainer(data, "s-pop", {}, TrainConfig(seed=0), rd, progress=False).fit()
    out["s-pop"].append(rd)
    out["dir"] = d
    return out


def test_the_means_are_the_runs_own_test_figures_and_split_by_repeats(runs):
    res = compare_runs(runs["stamp"], runs["s-pop"], ["hit@20", "mrr@20"], n_boot=200)
    metrics = [json.loads((r / "metrics.json").read_text())["test"] for r in runs["stamp"]]
    spop = json.loads((runs["s-pop"][0] / "metrics.json").read_text())["test"]
    for m in ("hit@20", "mrr@20"):
        v = res["subsets"]["all"][m]
        assert v["a"] == pytest.approx(np.mean([x[m] for x in metrics]), abs=1e-6)
        assert v["b"] == pytest.approx(spop[m], abs=1e-6)
        assert v["a_minus_b"] == pytest.approx(v["a"] - v["b"], abs=1e-9) and v["se"] > 0
        assert v["ci95"][0] <= v["a_minus_b"] <= v["ci95"][1]
        assert v["verdict"] == ("ahead" if v["a_minus_b"] > 2 * v["se"] else
                                "behind" if v["a_minus_b"] < -2 * v["se"] else "level")
        # the runs' dataset is where they left it: the repeat / first-time split matches evaluate's
        assert res["subsets"]["repeat"][m]["b"] == pytest.approx(spop[f"repeat_{m}"], abs=1e-6)
        assert res["subsets"]["first-time"][m]["b"] == pytest.approx(spop[f"first_{m}"], abs=1e-6)
    assert res["subsets"]["repeat"]["samples"] + res["subsets"]["first-time"]["samples"] == res["test_samples"]
    same = compare_runs(runs["s-pop"], runs["s-pop"], n_boot=50)["subsets"]["all"]["mrr@20"]
    assert same["a_minus_b"] == 0 and same["se"] == 0 and same["verdict"] == "level"


def test_runs_on_other_samples_or_without_ranks_are_refused(runs, planted_data, tmp_path):
    other = tmp_path / "other"
    Trainer(PreparedData(planted_data), "s-pop", {}, TrainConfig(seed=0), other, progress=False).fit()
    with pytest.raises(DataError, match="another dataset .* needs the same test samples") as e:
        compare_runs(runs["stamp"], [other])
    assert str(other) in str(e.value)
    bare = tmp_path / "bare"
    shutil.copytree(runs["s-pop"][0], bare)
    (bare / "test_ranks.npz").unlink()
    with pytest.raises(DataError, match="test_ranks.npz"):
        compare_runs(runs["stamp"], [bare])
    with pytest.raises(DataError, match="not a finished run"):
        compare_runs(runs["stamp"], [tmp_path])
    with pytest.raises(ConfigError, match="hit@k or mrr@k"):
        compare_runs(runs["stamp"], runs["s-pop"], ["ndcg@20"])


def test_cli_prints_the_table_and_writes_json(runs, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    argv = ["compare", "--a", *map(str, runs["stamp"]), "--b", str(runs["s-pop"][0]), "--boot", "100",
            "--json", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "| all |" in text and "| repeat |" in text and "A: stamp (2 runs) vs B: s-pop (1 run)" in text
    assert json.loads(out.read_text())["subsets"]["all"]["hit@20"]["verdict"] in ("ahead", "behind", "level")
    assert cli.main(["compare", "--a", str(runs["stamp"][0]), "--b", str(runs["dir"] / "nope")]) == 2
