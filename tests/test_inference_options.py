"""Inference-time model options changed at load (`--model-opt` on evaluate / recommend / serve):
MKM-SR-RN's repeat hurdle switched to S-POP's placement without retraining, and everything that
would not fit the trained weights refused with a clear error."""
import json

import polars as pl
import pytest

from mkmsr import cli
from mkmsr.checkpoint import inference_options, load_checkpoint
from mkmsr.data.dataset import PreparedData
from mkmsr.errors import ConfigError
from mkmsr.serving.recommend import Recommender
from mkmsr.training.evaluate import evaluate
from mkmsr.training.evaluate_run import evaluate_checkpoint
from mkmsr.training.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def rn_run(synthetic_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("rn") / "run"
    Trainer(PreparedData(synthetic_data), "mkmsr-rn",
            {"dim": 8, "explore_expert": "", "explore_expert2": "", "calibrate": False, "hurdle_shift": 1.0},
            TrainConfig(epochs=1, batch_size=64, seed=0), run, progress=False).fit()
    return run


def test_only_options_that_leave_the_weights_alone_can_change(rn_run):
    allowed = inference_options("mkmsr-rn")
    assert {"hurdle_shift", "hurdle_temperature", "knowledge_prior", "expert_weight"} <= set(allowed)
    assert "dim" not in allowed and "lr" not in allowed
    with pytest.raises(ConfigError, match="'dim' is learned in training: retrain with it; options that can change"):
        load_checkpoint(rn_run, overrides={"dim": 16})
    with pytest.raises(ConfigError, match="'nope' is not an option of this model"):
        load_checkpoint(rn_run, overrides={"nope": 1})
    # an expert the run was trained without: the weights do not fit the model it asks for
    with pytest.raises(ConfigError, match="change the model's structure"):
        load_checkpoint(rn_run, overrides={"explore_expert": "core-kg"})
    model, meta = load_checkpoint(rn_run)
    assert "overrides" not in meta and model.config.hurdle_shift == 1.0
    model, meta = load_checkpoint(rn_run, overrides={"hurdle_shift": 40.0})
    assert model.config.hurdle_shift == 40.0
    assert meta["overrides"] == {"hurdle_shift": 40.0} and meta["config"]["hurdle_shift"] == 40.0


def test_the_session_first_hurdle_at_load_equals_the_model_set_in_process(rn_run, synthetic_data, tmp_path):
    data = PreparedData(synthetic_data)
    report, path = evaluate_checkpoint(rn_run, synthetic_data, ["test"], device="cpu", out=tmp_path / "e.json",
                                       overrides={"hurdle_shift": 40.0})
    assert report["overrides"] == {"hurdle_shift": 40.0}
    assert json.loads(path.read_text())["overrides"] == {"hurdle_shift": 40.0}
    model, _ = load_checkpoint(rn_run)
    plain = evaluate(model, data, "test")
    model.config.hurdle_shift = 40.0
    model.train()
    model.eval()  # (a change of mode drops the model's cached stages)
    want = evaluate(model, data, "test")
    got = report["results"]["test"]
    for key in ("hit@20", "mrr@20", "repeat_mrr@20"):
        assert got[key] == pytest.approx(want[key], abs=1e-6)
    # S-POP's placement ranks the repeat targets at least as well as the calibrated point did
    assert got["repeat_mrr@20"] >= plain["repeat_mrr@20"] - 1e-6

    # the Recommender puts every item of the session above every new item
    rec = Recommender.load(rn_run, overrides={"hurdle_shift": 40.0})
    assert rec.describe()["overrides"] == {"hurdle_shift": 40.0}
    items = pl.read_parquet(rn_run / "best" / "items.parquet")["item_id"].to_list()
    ops = pl.read_parquet(rn_run / "best" / "operations.parquet")["op"].to_list()
    session = [(items[3], ops[0]), (items[7], ops[0]), (items[3], ops[-1]), (items[11], ops[0])]
    top = [it for it, _ in rec.recommend(session, k=5).items]
    assert set(top[:3]) == {items[3], items[7], items[11]}


def test_cli_model_opt_on_evaluate_recommend_and_serve(rn_run, synthetic_data, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert cli.main(["-q", "evaluate", "--run", str(rn_run), "--data", str(synthetic_data), "--json", str(out),
                     "--model-opt", "hurdle_shift=40"]) == 0
    assert json.loads(out.read_text())["overrides"] == {"hurdle_shift": 40}
    # without --json the report goes beside the checkpoint, named by its options: the plain one stays
    assert cli.main(["-q", "evaluate", "--run", str(rn_run), "--data", str(synthetic_data),
                     "--model-opt", "hurdle_shift=40"]) == 0
    assert json.loads((rn_run / "evaluation-hurdle_shift=40.json").read_text())["overrides"] == {"hurdle_shift": 40}
    assert not (rn_run / "evaluation.json").exists()
    assert cli.main(["-q", "recommend", "--run", str(rn_run), "--session", "x:y", "--model-opt", "dim=8"]) == 2
    assert "'dim' is learned in training" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["serve", "--model", str(rn_run), "--model-opt", "hurdle_shift=40",
                                          "--model-opt", "hurdle_temperature=2"])
    assert cli._serve_config(args).model_options == {"hurdle_shift": 40, "hurdle_temperature": 2}


def test_a_real_server_serves_the_override_and_keeps_it_at_reload(rn_run, tmp_path):
    import subprocess
    import sys
    import time

    from .test_serve import HOST, call, free_port

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mkmsr", "serve", "--model", str(rn_run), "--host", HOST,
                             "--port", str(port), "--threads", "1", "--model-opt", "hurdle_shift=40",
                             "--admin-token", "t"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if call(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)
        st, m = call(port, "GET", "/model")
        assert st == 200 and m["overrides"] == {"hurdle_shift": 40} and m["config"]["hurdle_shift"] == 40
        items = pl.read_parquet(rn_run / "best" / "items.parquet")["item_id"].to_list()
        session = [items[3], items[7], items[3], items[11]]
        events = [{"item_id": str(i), "operation": "click"} for i in session]
        st, r = call(port, "POST", "/recommend", {"events": events, "k": 5})
        assert st == 200 and {x["item_id"] for x in r["items"][:3]} == {str(items[3]), str(items[7]), str(items[11])}
        assert r["items"] == [{"item_id": str(i), "score": pytest.approx(s, rel=1e-5)} for i, s in
                              Recommender.load(rn_run, overrides={"hurdle_shift": 40.0}).recommend(
                                  [(str(i), "click") for i in session], k=5).items]
        st, _ = call(port, "POST", "/admin/reload", {}, headers={"X-Admin-Token": "t"})
        assert st == 200 and call(port, "GET", "/model")[1]["overrides"] == {"hurdle_shift": 40}
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
