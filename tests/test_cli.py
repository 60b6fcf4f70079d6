"""The command line end to end on synthetic data, in a real subprocess."""
import json
import subprocess
import sys

import pytest


def mkmsr(*args, ok=True):
    p = subprocess.run([sys.executable, "-m", "mkmsr", "-q", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    if ok:
        assert p.returncode == 0, p.stderr + p.stdout
    return p


def test_prepare_train_evaluate_recommend(synthetic_raw, tmp_path):
    data = tmp_path / "data"
    out = mkmsr("prepare", "--format", "csv", "--events", synthetic_raw / "events.csv",
                "--knowledge", synthetic_raw / "knowledge.csv", "--session-col", "session_id",
                "--cold-start", "keep", "--out", data).stdout
    assert "train" in out and "triplets" in out
    assert json.loads((data / "manifest.json").read_text())["config"]["cold_start"] == "keep"

    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nbatch_size = 64\npatience = 3\n[model]\ndim = 16\n')
    run = tmp_path / "run"
    out = mkmsr("train", "--data", data, "--model", "mkmsr", "--seed", 1, "--out", run, "--epochs", 2,
                "--config", cfg, "--no-progress", "--model-opt", "gnn_mode=concat").stdout
    assert "test (selected epoch)" in out
    m = json.loads((run / "metrics.json").read_text())
    assert m["seed"] == 1 and m["epochs_run"] == 2
    conf = json.loads((run / "config.json").read_text())
    assert conf["train_config"]["batch_size"] == 64 and conf["model_config"]["gnn_mode"] == "concat"
    assert conf["model_config"]["dim"] == 16

    out = mkmsr("evaluate", "--run", run, "--data", data, "--split", "valid", "test").stdout
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["results"]["test"]["mrr@20"] == pytest.approx(m["test"]["mrr@20"])
    assert "cold targets" in out

    # resume a finished run: nothing more to do, same metrics
    mkmsr("train", "--data", data, "--model", "mkmsr", "--seed", 1, "--out", run, "--epochs", 2,
          "--config", cfg, "--no-progress", "--model-opt", "gnn_mode=concat", "--resume")
    assert json.loads((run / "metrics.json").read_text())["test"] == m["test"]

    import polars as pl
    items = pl.read_parquet(data / "items.parquet")["item_id"].to_list()
    sess = f"{items[0]}:click,{items[1]}:cart,nonexistent:click"
    lines = mkmsr("recommend", "--run", run, "--session", sess, "-k", 5).stdout.strip().splitlines()
    r = json.loads(lines[0])
    assert len(r["items"]) == 5 and r["ignored_items"] == ["nonexistent"]
    assert all(it["item_id"] in items for it in r["items"])
    f = tmp_path / "sessions.txt"
    f.write_text(f"{items[2]}:click\nnobody:click\n")
    lines = mkmsr("recommend", "--run", run, "--input", f, "-k", 3).stdout.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["fallback"] == "popularity"


def test_prepare_exclude_latest_moves_the_test_block(synthetic_raw, tmp_path):
    args = ("prepare", "--format", "csv", "--events", synthetic_raw / "events.csv", "--session-col", "session_id")
    mkmsr(*args, "--out", tmp_path / "b0")
    mkmsr(*args, "--exclude-latest", "0.1", "--out", tmp_path / "b1")
    m0, m1 = (json.loads((tmp_path / b / "manifest.json").read_text()) for b in ("b0", "b1"))
    assert m1["config"]["exclude_latest"] == 0.1 and m0["config"]["exclude_latest"] == 0.0
    import polars as pl
    t0, t1 = (pl.read_parquet(tmp_path / b / "test.sessions.parquet")["start"] for b in ("b0", "b1"))
    assert t1.max() <= t0.min()   # block 1 ends where block 0 starts
    p = mkmsr(*args, "--exclude-latest", "0.95", "--out", tmp_path / "bad", ok=False)
    assert p.returncode != 0 and "exclude_latest" in p.stderr and not (tmp_path / "bad").exists()


def test_bad_input_exits_with_a_message(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("session_id,item_id,operation,timestamp\ns1,a,v,1\ns1,b,v,soon\n")
    p = mkmsr("prepare", "--format", "csv", "--events", bad, "--session-col", "session_id", "--out",
              tmp_path / "x", ok=False)
    assert p.returncode == 2
    assert "bad.csv, row 2, column 'timestamp'" in p.stderr
    assert not (tmp_path / "x").exists()
    p = mkmsr("train", "--data", tmp_path, "--out", tmp_path / "r", ok=False)
    assert p.returncode == 2 and "mkmsr prepare" in p.stderr
    p = mkmsr("train", "--data", tmp_path, "--out", tmp_path / "r", "--model", "nope", ok=False)
    assert p.returncode == 2


def test_unknown_model_cli(synthetic_data, tmp_path):
    p = mkmsr("train", "--data", synthetic_data, "--model", "nope", "--out", tmp_path / "r", ok=False)
    assert p.returncode == 2 and "valid models" in p.stderr
    assert "mkmsr" in mkmsr("models").stdout
