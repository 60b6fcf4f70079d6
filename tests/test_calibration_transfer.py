"""The calibration search's parts (coordinate ascent, starting points) and
benchmarks/calibration_transfer.py on a finished mkmsr-rn run (synthetic data)."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mkmsr.data.dataset import PreparedData
from mkmsr.models import make_config
from mkmsr.training.train import (TrainConfig, Trainer, calibration_choice, calibration_paths,
                                 calibration_search, calibration_start_points, coordinate_ascent)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration_transfer.py"


def load_script():
    spec = importlib.util.spec_from_file_location("calibration_transfer", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GRID = {"a": (0.0, 1.0, 2.0, 3.0), "b": (-1.0, 0.0, 1.0)}


def test_coordinate_ascent_climbs_axis_by_axis_and_counts_its_points():
    seen = []

    def value(p):
        seen.append(dict(p))
        return -(p["a"] - 2.0) ** 2 - (p["b"] - 1.0) ** 2

    end, best = coordinate_ascent(value, GRID, {"a": 0.0, "b": 0.0}, rounds=2)
    assert end == {"a": 2.0, "b": 1.0} and best == 0.0
    # first pass: the start, 4 values of a, 3 of b; the second pass changes nothing and stops
    assert len(seen) == 1 + 2 * (4 + 3)


def test_coordinate_ascent_keeps_the_current_value_on_ties_and_depends_on_its_start():
    # two separated optima: the path from each start ends at the one on its side
    value = lambda p: {(0.0, -1.0): 5.0, (3.0, 1.0): 6.0}.get((p["a"], p["b"]), 0.0)  # noqa: E731
    assert coordinate_ascent(value, GRID, {"a": 0.0, "b": 0.0}, rounds=3) == ({"a": 0.0, "b": -1.0}, 5.0)
    assert coordinate_ascent(value, GRID, {"a": 3.0, "b": 0.0}, rounds=3) == ({"a": 3.0, "b": 1.0}, 6.0)
    flat = lambda p: 1.0  # noqa: E731
    assert coordinate_ascent(flat, GRID, {"a": 1.0, "b": 0.0}, rounds=2) == ({"a": 1.0, "b": 0.0}, 1.0)


def test_calibration_start_points_are_the_configured_values_then_seeded_grid_points():
    pts = calibration_start_points(GRID, {"a": 1.0, "b": 0.0}, seed=3, n=5)
    assert len(pts) == 5 and pts[0] == {"a": 1.0, "b": 0.0}
    assert all(p["a"] in GRID["a"] and p["b"] in GRID["b"] for p in pts)
    assert pts == calibration_start_points(GRID, {"a": 1.0, "b": 0.0}, seed=3, n=5)
    assert pts != calibration_start_points(GRID, {"a": 1.0, "b": 0.0}, seed=4, n=5)
    assert calibration_start_points(GRID, {"a": 1.0, "b": 0.0}, seed=3, n=1) == [{"a": 1.0, "b": 0.0}]


def test_nested_calibration_searches_as_without_the_axis_then_continues_from_its_best():
    grid = {**GRID, "w": (0.0, 1.0, 2.0)}
    # w helps only a little, and only away from the optimum over (a, b); a flat search over
    # (a, b, w) from these starts could end elsewhere, the nested one cannot end below (a, b)'s best
    value = lambda p: -(p["a"] - 2.0) ** 2 - (p["b"] - 1.0) ** 2 + 0.1 * p["w"]  # noqa: E731
    configured = {"a": 0.0, "b": 0.0, "w": 0.0}
    flat = {"method": "coordinate ascent", "rounds": 2, "starts": 3}
    nested = {**flat, "nested": ["w"]}
    paths = calibration_paths(value, grid, configured, 7, nested)
    without = calibration_paths(lambda p: value({**p, "w": 0.0}), GRID, {"a": 0.0, "b": 0.0}, 7, flat)
    # the first paths are the model's without the axis: the same starts and ends, w held at its configured 0
    assert len(paths) == len(without) + 1
    for (s, e, v), (s0, e0, v0) in zip(paths, without):
        assert s == {**s0, "w": 0.0} and e == {**e0, "w": 0.0} and v == v0
    best_without = max(v for _, _, v in without)
    start, end, v = paths[-1]
    assert start == max(paths[:-1], key=lambda t: t[2])[1] and v >= best_without
    assert calibration_choice(paths, nested) == (end, v) == ({"a": 2.0, "b": 1.0, "w": 2.0}, pytest.approx(0.2))
    # without nesting, the best path wins (the first of equals)
    assert calibration_choice(without, flat)[1] == best_without


def test_both_searches_keep_the_better_end_of_the_nested_and_the_flat_search():
    grid = {**GRID, "w": (0.0, 1.0, 2.0)}
    # two separated optima, the higher one out of the nested search's reach (flat wins); and one
    # smooth optimum both searches reach (a tie: the nested end is kept)
    peaks = {(0.0, -1.0, 0.0): 5.0, (3.0, 1.0, 2.0): 6.0}
    values = [lambda p: peaks.get((p["a"], p["b"], p["w"]), 0.1 * p["a"]),
              lambda p: -(p["a"] - 2.0) ** 2 - (p["b"] - 1.0) ** 2 + 0.1 * p["w"]]
    configured = {"a": 0.0, "b": 0.0, "w": 0.0}
    flat = {"method": "coordinate ascent", "rounds": 2, "starts": 4}
    nested = {**flat, "nested": ["w"]}
    both = {**nested, "flat_too": True}
    seen = set()
    for value in values:
        for seed in range(4):
            pn, pf, pb = (calibration_paths(value, grid, configured, seed, s) for s in (nested, flat, both))
            assert pb[:len(pn)] == pn and pb[len(pn):] == pf       # the nested paths, then the flat ones
            vn, vf, vb = (calibration_choice(p, s)[1] for p, s in ((pn, nested), (pf, flat), (pb, both)))
            assert vb == max(vn, vf)
            if vn >= vf:                                          # ties: the nested end
                assert calibration_choice(pb, both) == calibration_choice(pn, nested)
            seen.add("flat" if vf > vn else "nested")
    assert seen == {"flat", "nested"}
    assert "flat_too" not in calibration_search(make_config("mkmsr-rn"))
    assert calibration_search(make_config("mkmsr-rn-both-searches"))["flat_too"] is True
    assert "flat_too" not in calibration_search(make_config("mkmsr-rn-1x", {"calibration_flat_too": True}))


def test_only_a_second_expert_makes_the_calibration_nested():
    assert "nested" not in calibration_search(make_config("mkmsr-rn-1x"))
    assert "nested" not in calibration_search(make_config("mkmsr-rn-no-prior"))
    for name in ("mkmsr-rn", "mkmsr-rn-2x-core"):
        assert calibration_search(make_config(name))["nested"] == ["expert2_weight"]
    assert "nested" not in calibration_search(make_config("mkmsr-rn-2x-core-flat"))
    assert "nested" not in calibration_search(make_config("core"))


def test_calibration_transfer_reruns_the_runs_own_search(synthetic_data, tmp_path):
    mod = load_script()
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(synthetic_data, work / "prepared-taobao")
    data = PreparedData(work / "prepared-taobao")
    rd = work / "runs" / "Taobao" / "mkmsr-rn" / "seed0"
    m = Trainer(data, "mkmsr-rn", {"dim": 16, "explore_expert": "core"}, TrainConfig(epochs=1, batch_size=64, seed=0),
                rd, progress=False).fit()
    n_valid = data.split("valid").samples()[0].size
    # searched on all of validation, the script's search is the run's own: same options chosen
    r = mod.transfer(rd, data, np.ones(n_valid, dtype=bool))
    tuned = m["tuned_on_validation"]
    assert all(tuned[k] == v for k, v in r["chosen"].items())
    assert r["valid"]["mrr@20"].mean() == pytest.approx(m["valid"]["mrr@20"])
    assert r["test"]["hit@20"].mean() == pytest.approx(m["test"]["hit@20"])

    out = tmp_path / "ct.json"
    assert mod.main(["--work", str(work), "--datasets", "Taobao", "--seeds", "0,1", "--by-length",
                     "--json", str(out)]) == 0
    res = json.loads(out.read_text())["datasets"]["Taobao"]
    assert res["seeds"] == [0]                                            # seed 1 has no run: skipped
    assert res["valid_samples"]["earlier"] + res["valid_samples"]["later"] == n_valid
    t = res["test (options chosen on all of validation)"]["all"]
    lengths = res["test (options chosen on all of validation)"]
    assert sum(lengths[b]["samples"] for b in ("1", "2-3", "4-9", "10+")) == t["samples"]
    per_length = res["later half, options per prefix length, vs expert"]["all"]
    assert per_length["samples"] == res["valid_samples"]["later"]
    assert set(res["chosen_by_length"]["0"]) == {"1", "2-3", "4-9", "10+"}
    assert res["profile"]["test"]["samples"] == t["samples"] and 0.0 <= res["profile"]["valid"]["repeat_share"] <= 1.0
    expert = json.loads((rd / "expert" / "metrics.json").read_text())["test"]
    assert t["mrr@20"]["model"] == pytest.approx(m["test"]["mrr@20"])
    assert t["mrr@20"]["expert"] == pytest.approx(expert["mrr@20"])
    assert t["hit@20"]["diff"] == pytest.approx(m["test"]["hit@20"] - expert["hit@20"])
