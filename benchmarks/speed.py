"""Training and evaluation speed, side by side: our MKM-SR, our SR-GNN and RecBole 1.2.1's SRGNN on
the same data with the same hyper-parameters and thread count, plus the arithmetic limit.

    flock /tmp/mkmsr-cpu.lock .venv/bin/python benchmarks/speed.py            # ~15 min on 2 cores

Datasets (prepared in the same run, under --work):

* ``demo``: the paper's Demo (../shared/data/jdata-demo, cold-start items dropped): 12k items.
* ``jdata``: a JDATA-scale synthetic dataset (mkmsr.data.synthetic.jdata_scale: 455k sessions, 139k
  items, 5 operations, 4 relations, mean length 5.4) prepared in full, then cut to its first
  ``--train-samples`` training and ``--eval-samples`` test samples so that every model finishes
  in minutes. The catalogue stays whole (every model ranks all ~139k items) and the knowledge
  step size stays what the full training split would use.

A model name may carry ``@bf16`` (``--models mkmsr,mkmsr@bf16,...``): the same model trained with
``precision="bf16"`` (bfloat16 scoring GEMMs, mkmsr.models.scoring); it needs a CPU with AMX or
AVX-512 BF16 (or CUDA) and is reported as skipped elsewhere.

Every model runs in its own process (peak memory = that process's maximum resident set),
``--repeats`` times (the best run is kept, for every model alike): ours
through mkmsr's Trainer for ``--epochs`` epochs (samples/s of the training loop, knowledge steps
included, evaluation excluded) and ``evaluate`` on the test split; RecBole through its own
``Trainer._train_epoch`` and full-sort ``evaluate`` (benchmarks/speed_recbole.py, run with
.venv-recbole/bin/python). Same samples (RecBole reads our prefixes -> targets as atomic files),
d = 100, batch 128, Adam lr 1e-3, L2 1e-5, one GNN step, prefixes cut to the last 50 items.

Arithmetic limit: training must at least compute the scores of every catalogue item and their
backward: 3 GEMMs of 2*B*d*N FLOPs per batch (logits, d/ds, d/dE), i.e. 6*d*N FLOPs per sample.
The limit is the measured GEMM rate (the better of a 2048^3 GEMM and these three GEMMs at their
real shapes, on the same threads) divided by that: no training can be faster.

Writes benchmarks/out/speed.json and a markdown table (benchmarks/out/speed.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

DEMO = ROOT.parent / "shared" / "data" / "jdata-demo"
RECBOLE_PY = ROOT / ".venv-recbole" / "bin" / "python"
MODELS = ("mkmsr", "sr-gnn", "recbole-srgnn")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def prepare_demo(work: Path) -> Path:
    from mkmsr.data.prepare import PrepareConfig, prepare
    from mkmsr.data.sources import read_jdata_demo

    out = work / "demo"
    if not (out / "manifest.json").exists():
        prepare(read_jdata_demo(DEMO, "drop"), out, PrepareConfig(cold_start="drop"), overwrite=True)
    return out


def prepare_jdata(work: Path, seed: int = 0) -> Path:
    from mkmsr.data.prepare import PrepareConfig, prepare
    from mkmsr.data.sources import ColumnMap, read_generic
    from mkmsr.data.synthetic import jdata_scale, write_synthetic

    out = work / "jdata-full"
    if not (out / "manifest.json").exists():
        raw = work / "jdata-raw"
        if not (raw / "events.csv").exists():
            t = time.perf_counter()
            write_synthetic(raw, jdata_scale(seed=seed))
            print(f"generated the JDATA-scale synthetic dataset in {time.perf_counter() - t:.0f} s", flush=True)
        cols = ColumnMap(item="item_id", op="operation", time="timestamp", session="session_id")
        t = time.perf_counter()
        prepare(read_generic(raw / "events.csv", cols, knowledge=raw / "knowledge.csv"), out,
                PrepareConfig(cold_start="keep", min_item_count=3), overwrite=True)
        print(f"prepared it in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def subset(src: Path, dst: Path, train_samples: int, eval_samples: int) -> Path:
    """A copy of artifact ``src`` whose splits keep only their first sessions (``train_samples``
    training, ``eval_samples`` validation and test samples); catalogue and knowledge stay whole."""
    from mkmsr.data.dataset import PreparedData
    from mkmsr.data.prepare import _split_stats
    from mkmsr.fsutil import atomic_dir, write_json
    import hashlib

    data = PreparedData(src)
    man = json.loads((src / "manifest.json").read_text())
    with atomic_dir(dst, overwrite=True) as tmp:
        for name in ("items.parquet", "attributes.parquet", "operations.parquet", "relations.parquet", "kg.npy"):
            shutil.copyfile(src / name, tmp / name)
        fit_count = data.item_train_count
        for split, want in (("train", train_samples), ("valid", eval_samples), ("test", eval_samples)):
            arr = data.split(split)
            n = int(np.searchsorted(np.cumsum(arr.lengths - 1), want) + 1)
            n = min(n, arr.n_sessions)
            off = np.asarray(arr.offsets[:n + 1])
            np.save(tmp / f"{split}.items.npy", np.asarray(arr.items[:off[-1]]))
            np.save(tmp / f"{split}.ops.npy", np.asarray(arr.ops[:off[-1]]))
            np.save(tmp / f"{split}.offsets.npy", off)
            pl.read_parquet(src / f"{split}.sessions.parquet").head(n).write_parquet(tmp / f"{split}.sessions.parquet")
            man["splits"][split] = _split_stats(np.asarray(arr.items[:off[-1]]), off, fit_count)
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.iterdir())}
        man["files"] = files
        man["content_sha256"] = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in files.items()).encode()).hexdigest()
        man["source"] = {"subset_of": str(src), "train_samples": train_samples, "eval_samples": eval_samples}
        write_json(tmp / "manifest.json", man)
    return dst


def recbole_files(data_dir: Path, dst: Path, max_len: int) -> Path:
    """Our samples as RecBole atomic files: ``bench.{train,valid,test}.inter``, one prefix -> target
    per line (the samples our trainer sees), and ``bench.item`` with every catalogue item
    (mkmsr.data.recbole_files, the same writer as ``mkmsr export --format recbole``)."""
    from mkmsr.data.recbole_files import export_recbole

    return export_recbole(data_dir, dst, "bench", max_len=max_len, overwrite=True)


# --------------------------------------------------------------------------------------------
# the arithmetic limit
# --------------------------------------------------------------------------------------------

def gemm_limit(n_items: int, dim: int, batch: int, threads: int, repeats: int = 5) -> dict:
    import torch

    torch.set_num_threads(threads)

    def best(f) -> float:
        f()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return min(ts)

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    square = 2 * 2048 ** 3 / best(lambda: a @ b)
    s, E, G = torch.randn(batch, dim), torch.randn(n_items, dim), torch.randn(batch, n_items)
    t3 = best(lambda: s @ E.T) + best(lambda: G @ E) + best(lambda: G.T @ s)
    shapes = 6 * batch * dim * n_items / t3
    rate = max(square, shapes)
    flops = 6 * dim * n_items
    return {"gemm_gflops_square": round(square / 1e9, 1), "gemm_gflops_scoring_shapes": round(shapes / 1e9, 1),
            "flops_per_sample": flops, "limit_samples_per_s": round(rate / flops, 1)}


# --------------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------------

def worker_ours(a: argparse.Namespace) -> None:
    import torch

    from mkmsr.data.dataset import PreparedData
    from mkmsr.training.evaluate import evaluate
    from mkmsr.training.train import TrainConfig, Trainer

    torch.set_num_threads(a.threads)
    data = PreparedData(a.data)
    model, _, precision = a.model.partition("@")
    cfg = TrainConfig(epochs=a.epochs, patience=a.epochs, eval_test_each_epoch=False, threads=a.threads,
                      max_len=a.max_len, kg_batch_size=a.kg_batch_size, eval_batch_size=a.eval_batch_size, seed=0,
                      precision=precision or "float32")
    tr = Trainer(data, model, {}, cfg, None, progress=False)
    tr.fit()
    n = sum(h["train_seconds"] * h["train_samples_per_s"] for h in tr.history)
    t_train = sum(h["train_seconds"] for h in tr.history)
    t0 = time.perf_counter()
    res = evaluate(tr.model, data, "test", a.eval_batch_size, a.max_len)
    t_eval = time.perf_counter() - t0
    print(json.dumps({
        "model": a.model, "train_samples": int(round(n / max(1, len(tr.history)))), "train_seconds": round(t_train, 2),
        "train_samples_per_s": round(n / t_train, 1), "eval_samples": res["samples"],
        "eval_seconds": round(t_eval, 2), "eval_samples_per_s": round(res["samples"] / t_eval, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "n_items": data.spec.n_items,
        "threads": torch.get_num_threads(), "test": {k: res[k] for k in ("hit@20", "mrr@20")}}))


def run_worker(cmd: list[str], cwd: Path) -> dict | None:
    """The worker's JSON line; None (with the reason printed) when it refused an option this machine
    cannot run (a ConfigError, e.g. bf16 without native support)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)  # RecBole writes logs into its cwd
    if proc.returncode and "ConfigError" in proc.stderr:
        print("  skipped: " + proc.stderr.strip().splitlines()[-1], flush=True)
        return None
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"worker failed: {' '.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "speed")
    p.add_argument("--datasets", default="demo,jdata")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-samples", type=int, default=8000, help="training samples of the jdata subset")
    p.add_argument("--eval-samples", type=int, default=3000, help="test (and validation) samples of the jdata subset")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2, help="runs per model; the best is kept (same for all models)")
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "speed.json")
    # worker mode (internal)
    p.add_argument("--worker", choices=["ours"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--kg-batch-size", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker_ours(a)

    from mkmsr.data.dataset import PreparedData

    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"threads": a.threads, "epochs": a.epochs, "repeats": a.repeats, "cpu_count": os.cpu_count(),
                     "load_average": os.getloadavg()[0],
                     "command": " ".join([os.path.relpath(sys.executable, ROOT), *sys.argv]), "datasets": {}}
    for ds in a.datasets.split(","):
        t0 = time.perf_counter()
        if ds == "demo":
            data_dir = prepare_demo(a.work)
            kg_bs = 0
        elif ds == "jdata":
            full = prepare_jdata(a.work)
            fd = PreparedData(full)
            n_batches = math.ceil(fd.manifest["splits"]["train"]["samples"] / 128)
            kg_bs = math.ceil(fd.manifest["counts"]["triplets"] / n_batches)  # the full split's KG step size
            data_dir = subset(full, a.work / "jdata-subset", a.train_samples, a.eval_samples)
        else:
            raise SystemExit(f"unknown dataset {ds!r} (demo, jdata)")
        data = PreparedData(data_dir)
        m = data.manifest
        info = {"items": data.spec.n_items, "train_samples": m["splits"]["train"]["samples"],
                "test_samples": m["splits"]["test"]["samples"], "triplets": m["counts"]["triplets"],
                "kg_batch_size": kg_bs or None}
        print(f"\n== {ds}: {info['items']:,} items, {info['train_samples']:,} training samples, "
              f"{info['test_samples']:,} test samples (data ready in {time.perf_counter() - t0:.0f} s)", flush=True)
        info["limit"] = gemm_limit(data.spec.n_items, 100, 128, a.threads)
        print(f"GEMM {info['limit']['gemm_gflops_square']} GFLOP/s (2048^3), "
              f"{info['limit']['gemm_gflops_scoring_shapes']} GFLOP/s (scoring shapes); "
              f"arithmetic limit {info['limit']['limit_samples_per_s']:,} training samples/s", flush=True)
        rows = {}
        for model in a.models.split(","):
            if model == "recbole-srgnn":
                if not RECBOLE_PY.exists():
                    print("  recbole-srgnn: skipped (.venv-recbole missing; see docs/performance.md)")
                    continue
                rb = recbole_files(data_dir, a.work / f"recbole-{ds}" / "bench", a.max_len)
                cmd = [str(RECBOLE_PY), str(ROOT / "benchmarks" / "speed_recbole.py"), "--data", str(rb),
                       "--threads", str(a.threads), "--epochs", str(a.epochs), "--max-len", str(a.max_len),
                       "--eval-batch-size", str(a.eval_batch_size)]
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "ours", "--model", model,
                       "--data", str(data_dir), "--threads", str(a.threads), "--epochs", str(a.epochs),
                       "--max-len", str(a.max_len), "--kg-batch-size", str(kg_bs),
                       "--eval-batch-size", str(a.eval_batch_size)]
            # best of --repeats runs, the same for every model: on a shared machine a run can only
            # be slowed down by other processes, never sped up
            runs = [run_worker(cmd, a.work) for _ in range(a.repeats)]
            if any(x is None for x in runs):
                continue
            r = max(runs, key=lambda x: x["train_samples_per_s"])
            r["eval_samples_per_s"] = max(x["eval_samples_per_s"] for x in runs)
            r["all_train_samples_per_s"] = [x["train_samples_per_s"] for x in runs]
            r["share_of_limit"] = round(r["train_samples_per_s"] / info["limit"]["limit_samples_per_s"], 3)
            rows[model] = r
            print(f"  {model:14s} train {r['train_samples_per_s']:>8,.1f} samples/s   eval "
                  f"{r['eval_samples_per_s']:>8,.1f} samples/s   peak {r['peak_rss_bytes'] / 2 ** 30:5.2f} GiB   "
                  f"{100 * r['share_of_limit']:5.1f}% of limit", flush=True)
        if "recbole-srgnn" in rows:
            base = rows["recbole-srgnn"]
            for model in [m for m in rows if m != "recbole-srgnn"]:
                if model in rows:
                    rows[model]["train_speedup_vs_recbole"] = round(rows[model]["train_samples_per_s"]
                                                                    / base["train_samples_per_s"], 2)
                    rows[model]["eval_speedup_vs_recbole"] = round(rows[model]["eval_samples_per_s"]
                                                                   / base["eval_samples_per_s"], 2)
                    print(f"  {model} / recbole-srgnn: training x{rows[model]['train_speedup_vs_recbole']}, "
                          f"evaluation x{rows[model]['eval_speedup_vs_recbole']}")
        info["models"] = rows
        info["load_average_after"] = os.getloadavg()[0]
        results["datasets"][ds] = info
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    a.json.with_suffix(".md").write_text(md)
    print("\n" + md + f"\nwritten {a.json} and {a.json.with_suffix('.md')}")


def markdown(res: dict) -> str:
    lines = ["| dataset | items | model | train samples/s | × RecBole | % of limit | eval samples/s | × RecBole | peak memory |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for ds, info in res["datasets"].items():
        for model, r in info["models"].items():
            lines.append(f"| {ds} | {info['items']:,} | {model} | {r['train_samples_per_s']:,.0f} | "
                         f"{r.get('train_speedup_vs_recbole', '—')} | {100 * r['share_of_limit']:.0f}% | "
                         f"{r['eval_samples_per_s']:,.0f} | {r.get('eval_speedup_vs_recbole', '—')} | "
                         f"{r['peak_rss_bytes'] / 2 ** 30:.2f} GiB |")
        lim = info["limit"]
        lines.append(f"| {ds} | | *arithmetic limit* | {lim['limit_samples_per_s']:,.0f} | | 100% | | | "
                     f"(GEMM {max(lim['gemm_gflops_square'], lim['gemm_gflops_scoring_shapes'])} GFLOP/s) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
