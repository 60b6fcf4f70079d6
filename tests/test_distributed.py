"""Multi-process training (issue 4): ``torchrun --nproc_per_node=2 -m mkmsr train`` on 2 CPU
processes (gloo) gives single-process result semantics: one writer, metrics over the whole
split, the same sample stream and so weights close to a single-process run's."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mkmsr.checkpoint import load_checkpoint
from mkmsr.data.dataset import PreparedData
from mkmsr.training.evaluate import evaluate
from mkmsr.training.train import TrainConfig, Trainer

ARGS = ["--model", "mkmsr", "--model-opt", "dim=16", "--epochs", "2", "--batch-size", "64", "--seed", "3",
        "--threads", "1", "--no-progress", "--patience", "5"]


def torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                           "-m", "mkmsr", "-q", "train", *args], capture_output=True, text=True, env=env, timeout=300)


def test_two_gloo_processes_match_single_process_semantics(synthetic_data, tmp_path):
    out = tmp_path / "ddp"
    proc = torchrun(2, "--data", str(synthetic_data), "--out", str(out), *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one writer: a single results table on stdout, one run directory
    assert proc.stdout.count("best epoch") == 1
    m = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert m["epochs_run"] == len(log) == 2 and (out / "best" / "model.pt").exists()

    # metrics are over the whole split: the samples of both shards, and exactly what one process
    # computes for the selected weights
    data = PreparedData(synthetic_data)
    model, _ = load_checkpoint(out)
    single = evaluate(model, data, "valid")
    assert m["valid"]["samples"] == single["samples"] == data.manifest["splits"]["valid"]["samples"]
    assert m["valid"]["mrr@20"] == pytest.approx(single["mrr@20"]) and m["valid"]["hit@20"] == pytest.approx(single["hit@20"])

    # the same sample stream and global batch: weights stay close to a one-process run's
    # (not equal: the two half-batch means round differently from one mean)
    cfg = TrainConfig(epochs=2, batch_size=64, seed=3, threads=1, patience=5)
    ref = Trainer(data, "mkmsr", {"dim": 16}, cfg, None, progress=False)
    ref_metrics = ref.fit()
    ours = model.state_dict()
    ref.model.load_state_dict(ref._best_state)
    diff = max(float((ours[k] - v).abs().max()) for k, v in ref.model.state_dict().items())
    assert diff < 0.05, diff
    assert abs(m["valid"]["hit@20"] - ref_metrics["valid"]["hit@20"]) < 5.0


def test_a_single_torchrun_process_is_plain_training(synthetic_data, tmp_path):
    proc = torchrun(1, "--data", str(synthetic_data), "--out", str(tmp_path / "one"), *ARGS[:-2], "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["epochs_run"] == 1
