"""mkmsr tune: real Optuna studies on tiny prepared data (issue 9 item 4)."""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import tomllib

import pytest

optuna = pytest.importorskip("optuna")

from mkmsr import cli  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.errors import ConfigError  # noqa: E402
from mkmsr.models import MODELS, build_model, make_config, model_names  # noqa: E402
from mkmsr.models.narm import NARM  # noqa: E402
from mkmsr.models.pop import Pop  # noqa: E402
from mkmsr.training.benchmark import TUNING_GRIDS  # noqa: E402
from mkmsr.training.evaluate import evaluate  # noqa: E402
from mkmsr.training.train import TrainConfig  # noqa: E402
from mkmsr.training.tune import (PRUNE_STARTUP_TRIALS, Choice, LogUniform, SearchSpace, Uniform,  # noqa: E402
                                 search_space, tune)

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: a sampler seed whose first four draws of a two-point space put a bad point after a good one
SEED_PRUNE = 3

#: a small neural space so the in-process studies stay cheap
SMALL = SearchSpace(model={"dim": Choice((8, 16))}, train={"lr": LogUniform(1e-3, 1e-2)})


def _points(dist):
    """A few values of a distribution: every choice, or both ends of a range."""
    return list(dist.values) if isinstance(dist, Choice) else [dist.low, dist.high]


def test_every_registered_model_has_a_valid_space(planted_data):
    spec = PreparedData(planted_data).spec
    train_options = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in model_names():
        cls, variant = MODELS[name]
        space = search_space(name)
        options = {f.name for f in dataclasses.fields(cls.Config)}
        assert set(space.model) <= options, name
        assert set(space.train) <= train_options, name
        assert not set(space.model) & set(variant), f"{name}: a variant-defining option is tuned"
        for key, dist in space.model.items():
            for v in _points(dist):
                build_model(name, spec, {key: v})  # the model accepts every value of its space
        for key, dist in space.train.items():
            for v in _points(dist):
                TrainConfig(**{key: v}).validate()
        if cls.trainable:
            assert {"lr", "weight_decay"} <= set(space.train), name
            if getattr(make_config(name), "use_knowledge", False):
                assert "kg_weight" in space.train, name
    assert "kg_weight" in search_space("mkmsr").train and "kg_weight" not in search_space("m-sr").train
    assert {"emb_dropout", "ct_dropout"} <= set(search_space("narm").model)
    assert search_space("pop").size() == 1 and search_space("s-pop").size() == 2


def test_count_spaces_cover_the_benchmark_grids():
    for name, grid in TUNING_GRIDS.items():
        space = search_space(name)
        for key, values in grid.items():
            assert all(space.model[key].contains(v) for v in values), (name, key)
    w = search_space("v-sknn").model
    assert set(w["weighting"].values) == set(w["weighting_score"].values) == {"linear", "same", "div", "quadratic", "log"}


def test_spaces_of_models_registered_elsewhere(monkeypatch):
    monkeypatch.setitem(MODELS, "narm-like", (NARM, {"ct_dropout": 0.3}))
    monkeypatch.setitem(MODELS, "pop-like", (Pop, {}))
    s = search_space("narm-like")
    assert set(s.train) == {"lr", "weight_decay"}
    assert set(s.model) == {"dim", "hidden", "emb_dropout"}  # ct_dropout defines the variant
    assert search_space("pop-like").size() == 1 and not search_space("pop-like").model


def test_unknown_model_names_the_valid_ones(planted_data, tmp_path, capsys):
    with pytest.raises(ConfigError, match="valid models: .*mkmsr.*v-sknn"):
        tune(planted_data, "no-such-model", tmp_path / "t", trials=1)
    assert cli.main(["tune", "--model", "no-such-model", "--data", str(planted_data), "--out", str(tmp_path / "c"),
                     "--trials", "1"]) == 2
    assert "unknown model 'no-such-model'; valid models: mkmsr" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="has no option 'nope'"):
        tune(planted_data, "stamp", tmp_path / "t", trials=1, space=SearchSpace(model={"nope": Uniform(0, 1)}))


def test_tiny_budget_writes_study_trials_and_a_config_train_reproduces(planted_data, tmp_path):
    out = tmp_path / "study"
    res = tune(planted_data, "stamp", out, trials=3, seed=1, train_overrides={"epochs": 2, "patience": 2, "threads": 1},
               space=SMALL)
    assert res["stopped"] == "trials" and res["trials"] == {"complete": 3, "pruned": 0, "failed": 0}
    assert (out / "study.db").exists()
    doc = json.loads((out / "trials.json").read_text())
    assert len(doc["trials"]) == 3 and doc["metric"] == "mrr@20"
    for t in doc["trials"]:
        # per-epoch validation values reach the study (what the median pruner compares)
        assert list(t["valid_by_epoch"]) == ["1", "2"] and t["epochs"] == 2
        assert set(t["model_options"]) == {"dim"} and set(t["train_options"]) == {"lr"}
        assert t["train_config"]["eval_test_each_epoch"] is False  # trials never evaluate test per epoch
        assert t["value"] == pytest.approx(t["valid"]["mrr@20"])
    study = optuna.load_study(study_name=doc["study"], storage=f"sqlite:///{out / 'study.db'}")
    assert [dict(t.intermediate_values) for t in study.trials] == \
           [{int(k): v for k, v in t["valid_by_epoch"].items()} for t in doc["trials"]]
    best = max(doc["trials"], key=lambda t: t["value"])
    assert res["best"]["number"] == doc["best"]["number"] == best["number"]

    toml = tomllib.loads((out / "best_config.toml").read_text())
    assert toml["model_name"] == "stamp" and toml["model"] == best["model_options"]
    assert toml["train"]["lr"] == best["train_options"]["lr"] and toml["train"]["seed"] == 1

    run = tmp_path / "run"
    assert cli.main(["-q", "train", "--config", str(out / "best_config.toml"), "--data", str(planted_data),
                     "--out", str(run), "--no-progress"]) == 0
    conf = json.loads((run / "config.json").read_text())
    assert conf["model"] == "stamp" and conf["model_config"] == best["model_config"]
    # the same configuration, except what says where it runs and the per-epoch test figures
    skip = ("eval_test_each_epoch", "threads", "device")
    want = {k: v for k, v in best["train_config"].items() if k not in skip}
    assert {k: v for k, v in conf["train_config"].items() if k not in skip} == want
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["valid"]["mrr@20"] == pytest.approx(best["value"], rel=1e-6)

    # more budget resumes the same study; other settings in the same folder are refused
    res = tune(planted_data, "stamp", out, trials=4, seed=1, train_overrides={"epochs": 2, "patience": 2, "threads": 1},
               space=SMALL)
    assert res["trials"]["complete"] == 4 and len(json.loads((out / "trials.json").read_text())["trials"]) == 4
    with pytest.raises(ConfigError, match="other settings"):
        tune(planted_data, "stamp", out, trials=5, seed=1, train_overrides={"epochs": 3, "patience": 2, "threads": 1},
             space=SMALL)
    with pytest.raises(ConfigError, match="already holds the study"):
        tune(planted_data, "narm", out, trials=1, train_overrides={"epochs": 1, "threads": 1})


def test_median_pruning_stops_a_trial_below_the_median(planted_data, tmp_path, monkeypatch):
    import mkmsr.training.tune as tune_module

    monkeypatch.setattr(tune_module, "PRUNE_STARTUP_TRIALS", 1)
    monkeypatch.setattr(tune_module, "PRUNE_WARMUP_EPOCHS", 0)
    # lr 1e-9 learns nothing: once the default lr 1e-3 (trial 0) has completed, a 1e-9 trial
    # falls below the median at its first epoch
    space = SearchSpace(train={"lr": Choice((1e-3, 1e-9))})
    res = tune(planted_data, "stamp", tmp_path / "p", trials=3, seed=SEED_PRUNE,
               train_overrides={"epochs": 2, "patience": 2, "batch_size": 32, "threads": 1}, space=space)
    doc = json.loads((tmp_path / "p" / "trials.json").read_text())
    assert doc["trials"][0]["start"] == "defaults" and doc["trials"][0]["train_options"]["lr"] == 1e-3
    pruned = [t for t in doc["trials"] if t["state"] == "pruned"]
    assert res["trials"]["pruned"] == len(pruned) >= 1, doc["trials"]
    assert all(t["train_options"]["lr"] == 1e-9 and t["epochs"] == 1 for t in pruned)
    assert res["best"]["train_options"]["lr"] == 1e-3


def test_count_based_model_tunes_until_its_space_is_exhausted(planted_data, tmp_path):
    data = PreparedData(planted_data)
    res = tune(data, "s-pop", tmp_path / "s", trials=10)
    assert res["stopped"] == "space" and res["trials"]["complete"] >= 2
    truth = {}
    for mode in ("recency", "count"):
        m = build_model("s-pop", data.spec, {"mode": mode})
        m.fit_statistics(data)
        truth[mode] = evaluate(m, data, "valid")["mrr@20"]
    assert res["best"]["value"] == pytest.approx(max(truth.values()))
    assert tomllib.loads((tmp_path / "s" / "best_config.toml").read_text())["model"]["mode"] in truth
    doc = json.loads((tmp_path / "s" / "trials.json").read_text())
    assert {t["model_options"]["mode"]: t["value"] for t in doc["trials"]} == pytest.approx(truth)

    res = tune(data, "pop", tmp_path / "p", trials=5)  # nothing to tune: one trial
    assert res["stopped"] == "space" and res["trials"]["complete"] == 1


def test_minutes_budget_stops_between_and_inside_trials(planted_data, tmp_path):
    t0 = time.perf_counter()
    res = tune(planted_data, "v-sknn", tmp_path / "v", trials=1000, minutes=0.03)
    assert res["stopped"] == "minutes" and res["trials"]["complete"] < 1000
    # a neural trial still running at the deadline stops at its next epoch end, recorded as failed
    res = tune(planted_data, "stamp", tmp_path / "n", trials=5, minutes=0.05,
               train_overrides={"epochs": 500, "patience": 500, "threads": 1}, space=SMALL)
    assert res["stopped"] == "minutes" and res["trials"]["failed"] == 1 and res["best"] is None
    trial = json.loads((tmp_path / "n" / "trials.json").read_text())["trials"][0]
    assert trial["state"] == "failed" and "time budget" in trial["stopped"] and 1 <= trial["epochs"] < 500
    assert not (tmp_path / "n" / "best_config.toml").exists()
    assert time.perf_counter() - t0 < 60


def test_cpu_clock_budget_counts_this_process_cpu_time_not_waiting(planted_data, tmp_path, monkeypatch):
    from mkmsr.training import tune as tune_mod

    # a fake CPU clock that advances one minute at every reading: a 2.5-minute budget allows the
    # start, two checks between trials and no more, whatever the wall clock says
    ticks = iter(range(10_000))
    monkeypatch.setitem(tune_mod.CLOCKS, "cpu", lambda: 60.0 * next(ticks))
    res = tune(planted_data, "v-sknn", tmp_path / "fake", trials=50, minutes=2.5, clock="cpu")
    assert res["stopped"] == "minutes" and res["clock"] == "cpu"
    assert res["trials"]["complete"] == 2
    monkeypatch.undo()

    # the real CPU clock: time spent waiting (here a slow consumer of the progress lines, 2.5 s
    # per trial) uses none of a 2 CPU-second budget, which the wall clock spends in one trial
    def slow(line: str) -> None:
        time.sleep(2.5)

    # (the three trials take ~0.6 CPU seconds here, study set-up included)
    res = tune(planted_data, "v-sknn", tmp_path / "cpu", trials=3, minutes=2.0 / 60, on_progress=slow, clock="cpu")
    assert res["stopped"] == "trials" and res["trials"]["complete"] == 3
    res = tune(planted_data, "v-sknn", tmp_path / "wall", trials=3, minutes=2.0 / 60, on_progress=slow)
    assert res["stopped"] == "minutes" and res["trials"]["complete"] == 1 and res["clock"] == "wall"


def test_cpu_clock_is_refused_where_it_cannot_measure(planted_data, tmp_path, capsys):
    with pytest.raises(ConfigError, match="clock must be one of wall, cpu"):
        tune(planted_data, "s-pop", tmp_path / "a", trials=1, clock="gpu")
    with pytest.raises(ConfigError, match="does not see the work a GPU does"):
        tune(planted_data, "stamp", tmp_path / "b", trials=1, minutes=1.0, clock="cpu",
             train_overrides={"device": "cuda"})
    assert cli.main(["tune", "--model", "s-pop", "--data", str(planted_data), "--out", str(tmp_path / "c"),
                     "--clock", "cpu"]) == 2
    assert "--clock needs --minutes" in capsys.readouterr().err


def test_benchmark_records_a_cpu_budget_and_keeps_wall_records_as_they_were(planted_data, tmp_path):
    from mkmsr.training import benchmark as bm

    data = PreparedData(planted_data)
    bm.tune_with_optuna(tmp_path / "cpu", "planted", data, "s-pop", {"trials": 1, "minutes": 1.0, "clock": "cpu"})
    rec = json.loads((tmp_path / "cpu" / "optuna" / "planted" / "s-pop" / "budget.json").read_text())
    assert rec["budget"]["clock"] == "cpu" and rec["summary"]["clock"] == "cpu"
    bm.tune_with_optuna(tmp_path / "wall", "planted", data, "s-pop", {"trials": 1, "minutes": 1.0})
    rec = json.loads((tmp_path / "wall" / "optuna" / "planted" / "s-pop" / "budget.json").read_text())
    # the record a wall budget wrote before the clock was an option: reruns still reuse it
    assert "clock" not in rec["budget"] and rec["summary"]["clock"] == "wall"


def test_a_second_process_on_the_same_study_is_refused(planted_data, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    with open(out / ".tune.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another `mkmsr tune` is working on this study"):
            tune(planted_data, "s-pop", out, trials=1)


def _tune_cmd(data, out, trials):
    return [sys.executable, "-m", "mkmsr", "tune", "--model", "stamp", "--data", str(data), "--out", str(out),
            "--trials", str(trials), "--epochs", "4", "--patience", "4", "--threads", "1", "--no-progress"]


def test_resumes_after_sigkill_mid_trial(planted_data, tmp_path):
    out = tmp_path / "study"
    proc = subprocess.Popen(_tune_cmd(planted_data, out, 50), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    storage = f"sqlite:///{out / 'study.db'}"
    running = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            trials = []
            if (out / "trials.json").exists():  # written once the tuner has created its database
                names = optuna.study.get_all_study_names(storage)
                trials = optuna.load_study(study_name=names[0], storage=storage).trials
            # mid-trial: one or two of its 4 epochs done, so at least two are to come, in a trial the
            # pruner cannot end early yet (no pruning before PRUNE_STARTUP_TRIALS finished trials) —
            # on a loaded machine a trial seen at its last epoch may finish before the kill lands
            if any(t.state.name == "RUNNING" and 1 <= len(t.intermediate_values) <= 2
                   and t.number < PRUNE_STARTUP_TRIALS for t in trials):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        else:
            pytest.fail("the tuner never reached a trial's first epoch: " + proc.stdout.read().decode()[-2000:])
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    names = optuna.study.get_all_study_names(storage)
    before = optuna.load_study(study_name=names[0], storage=storage).trials
    running = [t.number for t in before if t.state.name == "RUNNING"]
    assert running, "the killed process left no trial running"
    # trials may have finished before the kill (a fast machine, a slow poll): the budget counts finished
    # trials, so the resumed run is asked for two more than the killed one had finished
    done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in before)

    p = subprocess.run(_tune_cmd(planted_data, out, done + 2), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr + p.stdout
    assert f"trial {running[0]}: left unfinished by an interrupted run; marked failed" in p.stdout
    # one progress line per finished trial, then the summary
    assert any(line.startswith("trial ") and (" complete: mrr@20 " in line or " pruned: " in line)
               and "| best mrr@20" in line for line in p.stdout.splitlines()), p.stdout
    assert "best configuration:" in p.stdout
    doc = json.loads((out / "trials.json").read_text())
    by_number = {t["number"]: t for t in doc["trials"]}
    for n in running:
        assert by_number[n]["state"] == "failed" and by_number[n]["note"].startswith("interrupted")
    assert sum(t["state"] in ("complete", "pruned") for t in doc["trials"]) == done + 2
    assert (out / "best_config.toml").exists()


def test_fixed_model_options_reach_every_trial_and_the_config(planted_data, tmp_path):
    out = tmp_path / "fixed"
    name = next(f.name for f in dataclasses.fields(make_config("stamp")) if f.name not in SMALL.model
                and isinstance(getattr(make_config("stamp"), f.name), float))
    value = getattr(make_config("stamp"), name) * 0.5
    tune(planted_data, "stamp", out, trials=2, seed=0, train_overrides={"epochs": 1, "threads": 1},
         space=SMALL, model_overrides={name: value})
    assert json.loads((out / "trials.json").read_text())["settings"]["model_overrides"] == {name: value}
    for t in json.loads((out / "trials.json").read_text())["trials"]:
        assert t["model_config"][name] == value
    assert tomllib.loads((out / "best_config.toml").read_text())["model"][name] == value
    with pytest.raises(ConfigError, match="both fixed and searched"):
        tune(planted_data, "stamp", tmp_path / "clash", trials=1, space=SMALL, model_overrides={"dim": 8})
    with pytest.raises(ConfigError, match="no option"):
        tune(planted_data, "stamp", tmp_path / "bad", trials=1, space=SMALL, model_overrides={"nope": 1})


def test_benchmark_tunes_every_model_with_the_same_optuna_budget(planted_data, tmp_path, monkeypatch):
    """--tune-trials: every model (count-based and neural) is searched with the same budget on
    validation; the seeds train with the best configuration; a model with a STAN inside takes
    STAN's searched options (mkmsr-rn-nb: the default mkmsr-rn has no
    neighbourhood since stop 23); a rerun spends no more budget."""
    from mkmsr.training import benchmark as bm
    from mkmsr.training import tune as tune_mod

    small = {"stamp": SMALL, "mkmsr-rn-nb": SearchSpace(train={"lr": LogUniform(1e-3, 1e-2)}),
             "stan": SearchSpace(model={"k": Choice((20, 50)), "lambda_inh": Choice((1.0, 2.05))}),
             "s-pop": search_space("s-pop")}
    monkeypatch.setattr(tune_mod, "search_space", lambda m: small[m])
    budget = {"trials": 2, "minutes": 5.0}
    train = {"epochs": 1, "patience": 1, "threads": 1}
    out = tmp_path / "bench"
    res = bm.run_benchmark(out, {"planted": planted_data}, ["s-pop", "stamp", "mkmsr-rn-nb"], seeds=1,
                           train_overrides=train, optuna=budget)
    assert res["tuning"]["trials"] == 2 and res["tuning"]["minutes"] == 5.0
    for model in ("s-pop", "stamp", "mkmsr-rn-nb", "stan"):
        rec = json.loads((out / "optuna" / "planted" / model / "budget.json").read_text())
        assert rec["budget"]["trials"] == 2
        s = rec["summary"]
        assert s["stopped"] in ("trials", "space") and s["trials"]["complete"] + s["trials"]["pruned"] <= 2
    stan_best = json.loads((out / "optuna" / "planted" / "stan" / "budget.json").read_text())["best"]["model"]
    for model in ("stamp", "mkmsr-rn-nb"):
        best = json.loads((out / "optuna" / "planted" / model / "budget.json").read_text())["best"]
        conf = json.loads((out / "runs" / "planted" / model / "seed0" / "config.json").read_text())
        assert conf["train_config"]["lr"] == pytest.approx(best["train"]["lr"])
        for k, v in best["model"].items():
            assert conf["model_config"][k] == v
    rn = json.loads((out / "runs" / "planted" / "mkmsr-rn-nb" / "seed0" / "config.json").read_text())["model_config"]
    assert all(rn[f"nb_{k}"] == v for k, v in stan_best.items())
    # a rerun reuses the recorded searches: no new trial anywhere
    before = {m: len(json.loads((out / "optuna" / "planted" / m / "trials.json").read_text())["trials"])
              for m in ("s-pop", "stamp", "mkmsr-rn-nb", "stan")}
    bm.run_benchmark(out, {"planted": planted_data}, ["s-pop", "stamp", "mkmsr-rn-nb"], seeds=1,
                     train_overrides=train, optuna=budget)
    assert before == {m: len(json.loads((out / "optuna" / "planted" / m / "trials.json").read_text())["trials"])
                      for m in before}
