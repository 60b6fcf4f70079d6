"""One process vs two DDP processes on the same data: validation metrics and training speed.

    flock /tmp/mkmsr-cpu.lock .venv/bin/python benchmarks/ddp_demo.py [--epochs 8]

Prepares the paper's Demo (../shared/data/jdata-demo, cold-start items dropped) and trains MKM-SR
twice with the same seed and hyper-parameters: ``mkmsr train --threads 2`` (one process) and
``torchrun --nproc_per_node=2 -m mkmsr train --threads 1`` (two gloo processes, one thread each,
the same global batch). Prints validation and test metrics at the selected epoch and training
samples/s of both, and writes them to benchmarks/out/ddp_demo.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT.parent / "shared" / "data" / "jdata-demo"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "ddp")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="mkmsr")
    a = p.parse_args()
    data = a.work / "demo"
    if not (data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "mkmsr", "-q", "prepare", "--format", "jdata-demo", "--source", str(DEMO),
                        "--cold-start", "drop", "--out", str(data), "--overwrite"], check=True, cwd=ROOT)
    common = ["train", "--data", str(data), "--model", a.model, "--epochs", str(a.epochs), "--patience", str(a.epochs),
              "--seed", str(a.seed), "--no-progress", "--overwrite"]
    runs = {
        "1 process x 2 threads": [sys.executable, "-m", "mkmsr", "-q", *common, "--threads", "2",
                                  "--out", str(a.work / "one")],
        "2 DDP processes x 1 thread": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       "--nproc_per_node=2", "-m", "mkmsr", "-q", *common, "--threads", "1",
                                       "--out", str(a.work / "two")],
    }
    res = {}
    for name, cmd in runs.items():
        print("$", " ".join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1" if "DDP" in name else "2"},
                       stdout=subprocess.DEVNULL)
        m = json.loads((Path(cmd[cmd.index("--out") + 1]) / "metrics.json").read_text())
        res[name] = {"best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
                     "valid": {k: round(m["valid"][k], 2) for k in ("hit@20", "mrr@20")},
                     "test": {k: round(m["test"][k], 2) for k in ("hit@20", "mrr@20")},
                     "train_samples_per_s": m["train_samples_per_s"]}
    print(f"\n{'run':28s} {'best epoch':>10s} {'valid Hit@20':>12s} {'valid MRR@20':>12s} {'test Hit@20':>11s} "
          f"{'test MRR@20':>11s} {'train samples/s':>15s}")
    for name, r in res.items():
        print(f"{name:28s} {r['best_epoch']:>10d} {r['valid']['hit@20']:>12.2f} {r['valid']['mrr@20']:>12.2f} "
              f"{r['test']['hit@20']:>11.2f} {r['test']['mrr@20']:>11.2f} {r['train_samples_per_s']:>15,.0f}")
    out = ROOT / "benchmarks" / "out" / "ddp_demo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"epochs": a.epochs, "seed": a.seed, "model": a.model, "runs": res}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
