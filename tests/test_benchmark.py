"""`mkmsr benchmark` on a tiny dataset: the table, resume, tuning on validation only, the
experiments and the figures."""
import json

import pytest

from mkmsr.cli import main
from mkmsr.data.dataset import PreparedData
from mkmsr.errors import ConfigError
from mkmsr.fsutil import read_json
from mkmsr.training import benchmark as bm


@pytest.fixture(scope="module")
def bench(planted_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    argv = ["-q", "benchmark", "--data", f"{planted_data}=planted", "--models", "pop,s-pop,v-sknn,fpmc,km-sr,mkmsr",
            "--seeds", "2", "--epochs", "2", "--out", str(out), "--strategies", "alternate,joint,pretrain",
            "--lambdas", "1e-4,1e-1", "--embedding-map"]
    assert main(argv) == 0
    return out, argv


def test_table_both_protocols_and_seeds(bench):
    out, _ = bench
    res = read_json(out / "results.json")
    rows = res["datasets"]["planted"]["models"]
    assert list(rows) == ["pop", "s-pop", "v-sknn", "fpmc", "km-sr", "mkmsr"]
    assert rows["fpmc"]["runs"] == 2 and rows["pop"]["runs"] == 1 and rows["pop"]["deterministic"]
    for r in rows.values():
        for proto in ("selected", "best_over_epochs"):
            m, s = r[proto]["mrr@20"]
            assert 0 <= m <= 100 and s >= 0
        assert r["best_over_epochs"]["mrr@20"][0] >= r["selected"]["mrr@20"][0] - 1e-9
    # mean and std are over the per-seed runs on disk
    seeds = [read_json(out / "runs" / "planted" / "fpmc" / f"seed{s}" / "metrics.json")["test"]["mrr@20"] for s in (0, 1)]
    assert rows["fpmc"]["selected"]["mrr@20"][0] == pytest.approx(sum(seeds) / 2)
    md = (out / "results.md").read_text()
    assert "| fpmc | 2 |" in md and "best over epochs" in md and "±" in md


def test_resume_does_not_redo_finished_runs(bench, capsys):
    out, argv = bench
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.json")}
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "trained in" not in printed and "done before" in printed
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.json")} == stamp


def test_a_blind_benchmark_shows_validation_not_test_in_its_progress_lines(planted_data, tmp_path, monkeypatch):
    """MKMSR_BLIND_TEST (benchmarks/lead.py --blind): each finished run's progress line carries the
    validation figures instead of the test ones; the figures it shows are the run's own."""
    from mkmsr.training.train import BLIND_TEST_ENV
    lines: list[str] = []
    bm.run_benchmark(tmp_path, {"planted": planted_data}, ["s-pop"], 1, on_progress=lines.append)
    m = read_json(tmp_path / "runs" / "planted" / "s-pop" / "seed0" / "metrics.json")
    done = [x for x in lines if "s-pop seed 0" in x]
    assert len(done) == 1 and f"test Hit@20 {m['test']['hit@20']:.2f} MRR@20 {m['test']['mrr@20']:.2f}" in done[0]
    lines.clear()
    monkeypatch.setenv(BLIND_TEST_ENV, "1")
    bm.run_benchmark(tmp_path, {"planted": planted_data}, ["s-pop"], 1, on_progress=lines.append)
    done = [x for x in lines if "s-pop seed 0" in x]
    assert len(done) == 1 and "done before" in done[0] and "test Hit@20" not in done[0] and "(test hidden)" in done[0]
    assert f"valid Hit@20 {m['valid']['hit@20']:.2f} MRR@20 {m['valid']['mrr@20']:.2f}" in done[0]


def test_interrupted_run_is_resumed(planted_data, tmp_path):
    data = PreparedData(planted_data)
    spec = bm.RunSpec("planted", data.path, "fpmc", 0, {}, {"epochs": 1})
    bm.run_one(tmp_path, spec, data)
    rd = spec.run_dir(tmp_path)
    (rd / "metrics.json").unlink()              # as if killed after its last epoch
    longer = bm.RunSpec("planted", data.path, "fpmc", 0, {}, {"epochs": 2})
    m, fresh = bm.run_one(tmp_path, longer, data)
    assert fresh and m["epochs_run"] == 2
    assert len((rd / "log.jsonl").read_text().splitlines()) == 2


def test_count_models_are_tuned_on_validation_only(bench):
    out, _ = bench
    t = read_json(out / "tuning" / "planted" / "v-sknn.json")
    grid = bm.TUNING_GRIDS["v-sknn"]
    # coordinate ascent: at least one full pass over every axis, far fewer points than the grid
    assert sum(map(len, grid.values())) - len(grid) < len(t["points"]) < len(bm.grid_points(grid))
    assert t["search"] == "coordinate ascent"
    assert all(set(p) == {"options", "valid"} for p in t["points"])        # test is never looked at
    assert all(set(p["valid"]) <= {"hit@20", "mrr@20", "ndcg@20", "rt_hit@20"} for p in t["points"])
    best = max(t["points"], key=lambda p: p["valid"]["mrr@20"])
    assert t["best"] == best["options"]
    for axis, vals in grid.items():                  # no single-axis move from the best improves it
        for v in vals:
            p = next((q for q in t["points"] if q["options"] == {**t["best"], axis: v}), None)
            assert p is not None and p["valid"]["mrr@20"] <= best["valid"]["mrr@20"]
    cfg = read_json(out / "runs" / "planted" / "v-sknn" / "seed0" / "config.json")
    assert all(cfg["model_config"][k] == v for k, v in t["best"].items())


def test_experiments_and_figures(bench):
    out, _ = bench
    st = read_json(out / "strategies.json")
    assert set(st["strategies"]) == {"alternate", "joint", "pretrain"}
    for r in st["strategies"].values():
        assert len(r["runs"][0]["valid_mrr@20"]) >= 1
    # alternating is the table's own KM-SR run, the others have their own directories
    assert (out / "runs" / "planted" / "km-sr@joint" / "seed0" / "metrics.json").exists()
    assert not (out / "runs" / "planted" / "km-sr@alternate").exists()
    lam = read_json(out / "lambda.json")
    assert lam["lambdas"] == [1e-4, 1e-1]
    em = read_json(out / "embedding_map.json")
    assert set(em["panels"]) == {"word2vec", "transh", "mkmsr"}
    assert all(len(p["xy"]) == len(em["items"]) for p in em["panels"].values())
    pytest.importorskip("matplotlib")
    for name in ("fig3_strategies.png", "fig4_embedding_map.png", "fig5_lambda1.png", "table2.png"):
        f = out / "figures" / name
        assert f.exists() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments(planted_data, tmp_path):
    with pytest.raises(ConfigError, match="valid models"):
        bm.run_benchmark(tmp_path, {"p": planted_data}, ["nope"], 1)
    with pytest.raises(ConfigError, match="not a prepared dataset"):
        bm.parse_datasets([str(tmp_path)])
    assert main(["benchmark", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_tsne_separates_clusters():
    import numpy as np
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(6 * c, 1, (40, 5)) for c in range(3)])
    lab = np.repeat(np.arange(3), 40)
    Y = bm.tsne(X, perplexity=10, iters=500)
    assert Y.shape == (120, 2) and bm.neighbour_purity(Y, lab, metric="euclidean") > 0.95
    assert bm.separation_ratio(X, lab) > 3


def test_interrupted_rerun_never_pairs_new_config_with_old_metrics(planted_data, tmp_path, monkeypatch):
    data = PreparedData(planted_data)
    old = bm.RunSpec("planted", data.path, "fpmc", 0, {}, {"epochs": 1})
    bm.run_one(tmp_path, old, data)
    new = bm.RunSpec("planted", data.path, "fpmc", 0, {"n_negatives": 7}, {"epochs": 1})

    def crash(self, *a, **k):
        from mkmsr.fsutil import write_json
        write_json(self.out_dir / "config.json", self._run_config())   # what fit() writes first
        raise KeyboardInterrupt
    monkeypatch.setattr(bm.Trainer, "fit", crash)
    with pytest.raises(KeyboardInterrupt):
        bm.run_one(tmp_path, new, data)
    monkeypatch.undo()
    assert not bm._same_run(new.run_dir(tmp_path), new, data)
    assert not (new.run_dir(tmp_path) / "metrics.json").exists()


def test_a_report_names_why_a_finished_run_is_not_reported(planted_data, tmp_path, caplog):
    """train=False (the --report-only path) finds a finished run with other training options: it
    reports nothing for it and says which options differ, instead of a silent "not run"."""
    data = PreparedData(planted_data)
    bm.run_one(tmp_path, bm.RunSpec("planted", data.path, "fpmc", 0, {}, {"epochs": 1, "patience": 3}), data)
    other = bm.RunSpec("planted", data.path, "fpmc", 0, {}, {"epochs": 1, "patience": 5})
    with caplog.at_level("WARNING"):
        assert bm.run_one(tmp_path, other, data, train=False) == (None, False)
    assert "patience 3 (asked: 5)" in caplog.text and "not reported" in caplog.text
    assert bm._run_mismatch(other.run_dir(tmp_path), other, data).startswith("training options differ")
    same = bm.RunSpec("planted", data.path, "fpmc", 0, {}, {"epochs": 1, "patience": 3})
    assert bm._run_mismatch(same.run_dir(tmp_path), same, data) is None


def test_execution_only_and_later_options_do_not_invalidate_a_finished_run(planted_data, tmp_path):
    """An option that changes how, not what, a model computes (mkmsr-rn's nb_cache) may differ
    from a finished run's; an option the saved run lacks (added after it) counts as its default:
    the run is reused; a real difference still counts."""
    data = PreparedData(planted_data)
    spec = bm.RunSpec("planted", data.path, "mkmsr-rn", 0, {"dim": 8}, {"epochs": 1})
    rd = spec.run_dir(tmp_path)
    bm.run_one(tmp_path, spec, data)
    cfg = read_json(rd / "config.json")
    del cfg["model_config"]["nb_cache"]                      # as a run from before the option
    del cfg["model_config"]["recency_buckets"]               # an option added later, at its default
    del cfg["train_config"]["bucket"]                        # likewise a training option
    (rd / "config.json").write_text(json.dumps(cfg))
    assert bm._same_run(rd, spec, data)
    assert bm._same_run(rd, bm.RunSpec("planted", data.path, "mkmsr-rn", 0, {"dim": 8, "nb_cache": False},
                                       {"epochs": 1}), data)
    assert not bm._same_run(rd, bm.RunSpec("planted", data.path, "mkmsr-rn", 0, {"dim": 8, "nb_k": 7},
                                           {"epochs": 1}), data)
    assert not bm._same_run(rd, bm.RunSpec("planted", data.path, "mkmsr-rn", 0, {"dim": 8, "recency_buckets": 3},
                                           {"epochs": 1}), data)
    assert not bm._same_run(rd, bm.RunSpec("planted", data.path, "mkmsr-rn", 0, {"dim": 8},
                                           {"epochs": 1, "bucket": 7}), data)


def test_a_run_differing_in_inference_options_only_reuses_a_finished_training(synthetic_data, tmp_path):
    """mkmsr-rn (knowledge match, inference only) trains exactly as mkmsr-rn-no-match: the benchmark
    reuses the finished no-match run's weights (Trainer.refinish) and its figures equal those of
    training mkmsr-rn from scratch; a run whose training differs is never a donor."""
    from mkmsr.training.train import TrainConfig, Trainer

    data = PreparedData(synthetic_data)
    over, train = {"dim": 8}, {"epochs": 1, "threads": 1}
    donor = bm.RunSpec("syn", data.path, "mkmsr-rn-no-match", 0, over, train)
    bm.run_one(tmp_path, donor, data)
    other = bm.RunSpec("syn", data.path, "mkmsr-rn", 0, {**over, "repeat": False}, train)
    assert bm._training_donor(tmp_path, other, data) is None
    assert bm._training_donor(tmp_path, bm.RunSpec("syn", data.path, "mkmsr-rn", 1, over, train), data) is None
    spec = bm.RunSpec("syn", data.path, "mkmsr-rn", 0, over, train)
    assert bm._training_donor(tmp_path, spec, data) == donor.run_dir(tmp_path)
    got, trained = bm.run_one(tmp_path, spec, data)
    assert trained and bm._same_run(spec.run_dir(tmp_path), spec, data)
    assert "match_alpha" in got["tuned_on_validation"]
    fresh = Trainer(data, "mkmsr-rn", over, TrainConfig(**train, seed=0), tmp_path / "fresh", progress=False).fit()
    for key in ("valid", "test", "tuned_on_validation", "best_epoch", "epochs_run"):
        assert got[key] == fresh[key], key
    assert read_json(spec.run_dir(tmp_path) / "config.json")["model"] == "mkmsr-rn"
    # the donor is untouched, and the reused run is read back as finished
    assert bm._same_run(donor.run_dir(tmp_path), donor, data)
    again, trained = bm.run_one(tmp_path, spec, data)
    assert not trained and again["test"] == got["test"]
    # a run calibrated over an older grid (an axis missing) is finished again, without training
    mp = spec.run_dir(tmp_path) / "metrics.json"
    old = read_json(mp)
    del old["tuned_on_validation"]["calibration_grid"], old["tuned_on_validation"]["repeat_recency"]
    mp.write_text(json.dumps(old))
    assert not bm._same_run(spec.run_dir(tmp_path), spec, data)
    redone, trained = bm.run_one(tmp_path, spec, data)
    assert trained and redone["test"] == got["test"] and bm._same_run(spec.run_dir(tmp_path), spec, data)
    # so is one calibrated by another search (one start: runs from before the multi-start search)
    old = read_json(mp)
    old["tuned_on_validation"]["calibration_search"]["starts"] = 1
    mp.write_text(json.dumps(old))
    assert "calibrated" in bm._run_mismatch(spec.run_dir(tmp_path), spec, data)
    redone, trained = bm.run_one(tmp_path, spec, data)
    assert trained and redone["tuned_on_validation"]["calibration_search"]["starts"] == 4


def test_the_lead_models_explore_expert_is_the_experts_own_finished_run(synthetic_data, tmp_path):
    """mkmsr-rn trains its explore expert (CORE-KG) with its own training options first; in the
    benchmark that is exactly CORE-KG's row for the same dataset and seed, so a finished run of it is
    copied into RUN/expert instead of trained again (its per-epoch log, timings included, is the
    row's), and the expert's figures are the row's. A variant with another expert
    (mkmsr-rn-core-expert) reuses the mixture's training but never the other expert. (On the
    one-expert model, mkmsr-rn-1x; the default's second expert is checked last.)"""
    data = PreparedData(synthetic_data)
    train = {"epochs": 2, "patience": 2, "threads": 1}
    kg = bm.RunSpec("syn", data.path, "core-kg", 0, {}, train)
    row, _ = bm.run_one(tmp_path, kg, data)
    spec = bm.RunSpec("syn", data.path, "mkmsr-rn-1x", 0, {"dim": 8}, train)
    got, trained = bm.run_one(tmp_path, spec, data)
    rd, cd = spec.run_dir(tmp_path), kg.run_dir(tmp_path)
    assert trained and (rd / "expert" / "log.jsonl").read_text() == (cd / "log.jsonl").read_text()
    assert got["explore_expert"]["test"] == row["test"] and got["explore_expert"]["model"] == "core-kg"
    # another seed has no finished CORE-KG run: the expert is trained there, in the run's folder
    other = bm.RunSpec("syn", data.path, "mkmsr-rn-1x", 1, {"dim": 8}, train)
    got1, _ = bm.run_one(tmp_path, other, data)
    assert (other.run_dir(tmp_path) / "expert" / "metrics.json").exists()
    assert not kg.run_dir(tmp_path).with_name("seed1").exists()
    assert got1["explore_expert"]["model"] == "core-kg"
    # the same mixture with plain CORE as its expert: the mixture's training is reused from the
    # mkmsr-rn run, the expert is CORE's own row (not the donor's CORE-KG)
    core = bm.RunSpec("syn", data.path, "core", 0, {}, train)
    core_row, _ = bm.run_one(tmp_path, core, data)
    alt = bm.RunSpec("syn", data.path, "mkmsr-rn-core-expert", 0, {"dim": 8}, train)
    assert bm._training_donor(tmp_path, alt, data) == rd
    got2, trained = bm.run_one(tmp_path, alt, data)
    assert trained and got2["explore_expert"]["model"] == "core" and got2["explore_expert"]["test"] == core_row["test"]
    assert got2["best_epoch"] == got["best_epoch"] and got2["epochs_run"] == got["epochs_run"]
    assert (alt.run_dir(tmp_path) / "expert" / "log.jsonl").read_text() == (core.run_dir(tmp_path) / "log.jsonl").read_text()
    # a second expert (mkmsr-rn-2x-sasrec: SASRec beside CORE-KG): the mixture's training and the first
    # expert come from the mkmsr-rn run, the second expert is SASRec's own row in RUN/expert2, and
    # its weight is calibrated on validation with the rest
    sas = bm.RunSpec("syn", data.path, "sasrec", 0, {}, train)
    sas_row, _ = bm.run_one(tmp_path, sas, data)
    two = bm.RunSpec("syn", data.path, "mkmsr-rn-2x-sasrec", 0, {"dim": 8}, train)
    assert bm._training_donor(tmp_path, two, data) == rd
    got3, trained = bm.run_one(tmp_path, two, data)
    td = two.run_dir(tmp_path)
    assert trained and got3["best_epoch"] == got["best_epoch"]
    assert got3["explore_expert"]["model"] == "core-kg" and got3["explore_expert"]["test"] == row["test"]
    assert got3["explore_expert2"]["model"] == "sasrec" and got3["explore_expert2"]["test"] == sas_row["test"]
    assert (td / "expert2" / "log.jsonl").read_text() == (sas.run_dir(tmp_path) / "log.jsonl").read_text()
    assert "expert2_weight" in got3["tuned_on_validation"]["calibration_grid"]
    # the greedy search over the wider grid need not pass through mkmsr-rn's end point; what it
    # keeps is the best validation figure it visited
    seen = got3["tuned_on_validation"]["valid_mrr@20_by_calibration"]
    assert abs(got3["valid"]["mrr@20"] - max(seen.values())) < 1e-6
    # nested (mkmsr-rn-2x-core, CORE's own row as the second expert): the search first runs exactly
    # as mkmsr-rn's (the same paths, the second expert's weight held at 0), then one more ascent frees
    # that weight from their best point, so validation is at least mkmsr-rn's
    two_core = bm.RunSpec("syn", data.path, "mkmsr-rn-2x-core", 0, {"dim": 8}, train)
    got4, trained = bm.run_one(tmp_path, two_core, data)
    assert trained and got4["explore_expert2"]["test"] == core_row["test"]
    paths4, paths1 = (g["tuned_on_validation"]["calibration_paths"] for g in (got4, got))
    assert got4["tuned_on_validation"]["calibration_search"]["nested"] == ["expert2_weight"]
    assert len(paths4) == len(paths1) + 1
    assert [p["end"] for p in paths4[:-1]] == [{**p["end"], "expert2_weight": 0.0} for p in paths1]
    assert [p["valid_mrr@20"] for p in paths4[:-1]] == pytest.approx([p["valid_mrr@20"] for p in paths1])
    assert paths4[-1]["start"] == max(paths4[:-1], key=lambda p: p["valid_mrr@20"])["end"]
    assert got4["valid"]["mrr@20"] >= got["valid"]["mrr@20"] - 1e-6
    assert got4["valid"]["mrr@20"] == pytest.approx(paths4[-1]["valid_mrr@20"])
