"""Tooling around training: TensorBoard event files, logs without progress-bar frames."""
import subprocess
import sys

import pytest

from mkmsr.errors import ConfigError

EPOCH_TAGS = {"loss/sr", "loss/kg", "lr", "item_embedding_norm", "train/samples_per_s", "valid/mrr@20",
              "valid/hit@20", "valid/ndcg@20", "test/mrr@20", "test/hit@20", "test/cold_hit@20"}


def scalars(event_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``event_dir``, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_cli_writes_tensorboard_scalars_and_a_quiet_log(synthetic_data, tmp_path):
    """``mkmsr train --tensorboard DIR`` with stdout + stderr to a file (not a terminal): the event
    file holds every per-epoch scalar at steps 1..epochs, matching log.jsonl; the log holds one
    line per epoch and no progress-bar frames."""
    tb, run, logf = tmp_path / "tb", tmp_path / "run", tmp_path / "train.log"
    with open(logf, "w") as fh:
        p = subprocess.run([sys.executable, "-m", "mkmsr", "train", "--data", str(synthetic_data), "--out", str(run),
                            "--epochs", "2", "--batch-size", "64", "--model-opt", "dim=16", "--tensorboard", str(tb)],
                           stdout=fh, stderr=subprocess.STDOUT, timeout=600)
    text = logf.read_bytes().decode()  # bytes: read_text() would turn a bar's '\r' into '\n'
    assert p.returncode == 0, text
    assert "\r" not in text and "batch/s" not in text and "it/s" not in text, "progress-bar frames in a log file"
    lines = text.splitlines()
    assert len(lines) < 100
    assert sum(" epoch " in ln and "valid mrr@20" in ln for ln in lines) == 2, text  # one INFO line per epoch

    got = scalars(tb)
    assert EPOCH_TAGS <= set(got), sorted(EPOCH_TAGS - set(got))
    for tag in EPOCH_TAGS:
        assert [s for s, _ in got[tag]] == [1, 2], tag
    import json
    hist = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    for h in hist:
        step = h["epoch"]
        assert dict(got["loss/sr"])[step] == pytest.approx(h["sr_loss"], rel=1e-6)
        assert dict(got["valid/mrr@20"])[step] == pytest.approx(h["valid"]["mrr@20"], rel=1e-6)
        assert dict(got["test/hit@20"])[step] == pytest.approx(h["test"]["hit@20"], rel=1e-6)
        assert dict(got["lr"])[step] == pytest.approx(h["lr"])
        assert dict(got["item_embedding_norm"])[step] == pytest.approx(h["item_embedding_norm"], rel=1e-5)


def test_progress_flag_forces_bars_into_a_file(planted_data, tmp_path):
    """``--progress`` shows the bars even when stderr is a file; ``--no-progress`` still wins."""
    def run(*flags):
        p = subprocess.run([sys.executable, "-m", "mkmsr", "train", "--data", str(planted_data), "--out",
                            str(tmp_path / f"r{len(flags)}"), "--epochs", "1", "--model", "gru4rec-ce",
                            "--overwrite", *flags], capture_output=True, timeout=600)
        assert p.returncode == 0, p.stderr
        return p.stderr.decode()  # not text=True: that would turn '\r' into '\n'
    forced = run("--progress")
    assert "batch/s" in forced and "\r" in forced
    assert "\r" not in run("--progress", "--no-progress")


def test_benchmark_tensorboard_per_run_subfolders(planted_data, tmp_path):
    from mkmsr.training.benchmark import run_benchmark

    run_benchmark(tmp_path / "bench", {"planted": planted_data}, ["gru4rec-ce", "pop"], seeds=2,
                  train_overrides={"epochs": 2, "patience": 2}, tensorboard_dir=tmp_path / "tb")
    for seed in (0, 1):
        got = scalars(tmp_path / "tb" / "planted" / "gru4rec-ce" / f"seed{seed}")
        assert [s for s, _ in got["valid/mrr@20"]] == [1, 2]
        assert "loss/kg" not in got  # a model without a knowledge task
    assert not (tmp_path / "tb" / "planted" / "pop").exists()  # nothing trained, no epochs


def test_missing_tensorboard_names_the_extra(monkeypatch, tmp_path, capsys):
    from mkmsr.cli import main
    from mkmsr.training.tensorboard_log import open_writer

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"mkmsr\[tensorboard\]"):
        open_writer(tmp_path / "tb")
    # the CLI stops before training, with the message
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--tensorboard",
                 str(tmp_path / "tb")]) == 2
    assert "pip install 'mkmsr[tensorboard]'" in capsys.readouterr().err
