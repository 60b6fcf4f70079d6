"""Training throughput of MKM-SR (and its variants) on the paper's Demo data.

    flock /tmp/mkmsr-cpu.lock .venv/bin/python benchmarks/train_speed.py [--models mkmsr,m-sr,sr-gnn] [--epochs 2]

Prepares ../shared/data/jdata-demo (drop policy) once, trains each model for a few epochs with the
paper's hyper-parameters (batch 128, d = 100) and prints training samples per second (SR samples
of the train split divided by the wall time of the epoch, knowledge steps included; evaluation
excluded) and evaluation samples per second. Models that precompute statistics before training
(count tables; MKM-SR-RN's neighbourhood of every prefix) also get that set-up time, measured
apart, and their samples per second over ``--amortise`` epochs with the set-up included. Saves
docs/train-speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.data.prepare import PrepareConfig, prepare  # noqa: E402
from mkmsr.data.sources import read_jdata_demo  # noqa: E402
from mkmsr.fsutil import write_json  # noqa: E402
from mkmsr.models import build_model  # noqa: E402
from mkmsr.training.evaluate import evaluate  # noqa: E402
from mkmsr.training.train import TrainConfig, Trainer  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "jdata-demo"))
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "speed"))
    p.add_argument("--models", default="mkmsr,m-sr,sr-gnn")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "docs" / "train-speed.json"))
    p.add_argument("--amortise", type=int, default=10, help="epochs over which the set-up time is spread")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data_dir = Path(a.work) / "demo-drop"
    if not (data_dir / "manifest.json").exists():
        prepare(read_jdata_demo(a.source, "drop"), data_dir, PrepareConfig(cold_start="drop"), overwrite=True)
    data = PreparedData(data_dir)
    rows = []
    for name in a.models.split(","):
        m = build_model(name, data.spec)
        t = time.perf_counter()
        m.fit_statistics(data)
        setup = time.perf_counter() - t
        del m
        tr = Trainer(data, name, None, TrainConfig(epochs=a.epochs, patience=a.epochs, eval_test_each_epoch=False),
                     None, progress=False)
        tr.fit()
        train_sps = max(h["train_samples_per_s"] for h in tr.history)
        t = time.perf_counter()
        n = evaluate(tr.model, data, "train", 512)["samples"]
        eval_sps = n / (time.perf_counter() - t)
        n_train = int(data.manifest["splits"]["train"]["samples"])
        amortised = a.amortise * n_train / (setup + a.amortise * n_train / train_sps)
        rows.append({"model": name, "train_samples_per_s": train_sps, "eval_samples_per_s": round(eval_sps, 1),
                     "setup_seconds": round(setup, 2), f"train_samples_per_s_over_{a.amortise}_epochs_with_setup":
                     round(amortised, 1), "epochs": [h["train_samples_per_s"] for h in tr.history]})
        print(f"{name:10s} train {train_sps:8.0f} samples/s (best of {a.epochs} epochs)   eval {eval_sps:8.0f} samples/s"
              f"   set-up {setup:6.1f} s   over {a.amortise} epochs with set-up {amortised:8.0f} samples/s")
    write_json(a.out, {"load_average_1min": round(os.getloadavg()[0], 2), "command": "benchmarks/train_speed.py " + " ".join(argv or sys.argv[1:]),
                       "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "torch": torch.__version__, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
