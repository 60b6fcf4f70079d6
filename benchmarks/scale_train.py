"""Time to accuracy at JDATA scale (issue 10, item 3): the full softmax in float32, the full softmax
with bfloat16 scoring GEMMs, the sampled softmax, and RecBole 1.2.1's SRGNN, in the same run, each
trained for the same wall-clock budget on the whole training split.

    flock /tmp/mkmsr-cpu.lock .venv/bin/python benchmarks/scale_train.py --budget-min 10
    flock /tmp/mkmsr-cpu.lock .venv/bin/python benchmarks/scale_train.py --budget-min 10 --million
    # a check of the script itself in a few minutes (tiny data, not a measurement):
    .venv/bin/python benchmarks/scale_train.py --sessions 3000 --items 2000 --budget-min 0.3 --eval-samples 500

Data (prepared once under ``--work``, reused by later runs):

* default: ``mkmsr.data.synthetic.jdata_scale()`` — 455k sessions, 139k items (134,548 warm +
  4,551 cold), 5 operations, 4 relations, mean length 5.4 — prepared as benchmarks/speed.py does
  (cold items kept, items seen fewer than 3 times removed). The **whole training split** trains;
  validation is cut to its first ``--eval-samples`` samples (evaluation ranks the full catalogue,
  in float32, for every configuration alike, and at this size it would otherwise cost minutes per
  epoch); ``--train-samples`` caps the training split for quick checks only.
* ``--million``: the same generator with 1,000,000 items (967,000 warm + 33,000 cold) and
  2,000,000 sessions, every item kept (``min_item_count=1``; items the generator never drew are not
  in the catalogue, so it holds slightly fewer: the table prints the count).

Configurations (``--configs``), each in its own process, with the paper's hyper-parameters (d = 100,
batch 128, Adam lr 1e-3, L2 1e-5, one GNN step, prefixes cut to the last 50 micro-behaviours) on
the same threads:

* ``full-fp32``: our ``--model`` (default mkmsr) with the full softmax in float32 (the default);
* ``full-bf16``: the same with ``precision="bf16"``; it needs AMX / AVX-512 BF16 or CUDA and is
  reported as skipped elsewhere;
* ``sampled``: ``loss="sampled"`` with ``--negatives`` (2048) ``--sampler`` (uniform) negatives plus
  the in-batch targets, logQ-corrected (batch ``--sampled-batch-size``, 128 unless told otherwise).
  Its step no longer scales with the catalogue in the GEMMs, but still does in Adam over the whole
  item table (dense: the L2 term and the moments touch every row) and in the table-sized gradient;
  a larger batch spreads those;
* ``sampled-lazy``: the same with ``optimizer="lazy-adam"``: the item table's gradient is row-sparse
  and only the rows a step touches take Adam's update (their moments and L2; LazyAdam), so no part
  of the step scales with the catalogue;
* ``recbole-srgnn``: benchmarks/scale_recbole.py in ``--recbole-python`` (.venv-recbole), on the
  same samples exported as atomic files, with its own training step and full-sort evaluation.

Each trains until ``--budget-min`` minutes of training-loop wall time (evaluation excluded) have
passed, mid-epoch if need be (``TrainConfig.time_budget_s``), then reports: training samples/s,
seconds per epoch of the whole training split (measured when one finished within the budget, else
the split's samples / samples/s), and validation MRR@20 / Hit@20 (percent) of the validation-selected
model after the budget (ours validate after each epoch and after the cut; RecBole once, after the
cut). Writes benchmarks/out/scale_train.json (``--json``) and a markdown table beside it, and
prints the issue's targets as met / not met.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

CONFIGS = {"full-fp32": {}, "full-bf16": {"precision": "bf16"}, "sampled": {"loss": "sampled"},
           "sampled-lazy": {"loss": "sampled", "optimizer": "lazy-adam"}, "recbole-srgnn": None}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def generator_config(a: argparse.Namespace):
    from mkmsr.data.synthetic import jdata_scale

    over = {"seed": a.seed}
    if a.million:
        over.update(n_items=967_000, n_cold_items=33_000, n_sessions=2_000_000)
    if a.items:
        over.update(n_items=a.items, n_cold_items=max(1, round(a.items * 0.033)))
    if a.sessions:
        over["n_sessions"] = a.sessions
    return jdata_scale(**over)


def prepare_data(a: argparse.Namespace) -> Path:
    """The prepared artifact, its validation and test cut to ``--eval-samples`` (and its training split
    to ``--train-samples`` when given); reused when already there."""
    from mkmsr.data.dataset import PreparedData
    from mkmsr.data.prepare import PrepareConfig, prepare
    from mkmsr.data.sources import ColumnMap, read_generic
    from mkmsr.data.synthetic import write_synthetic
    from speed import subset

    gen = generator_config(a)
    tag = f"items{gen.n_items + gen.n_cold_items}-sessions{gen.n_sessions}-seed{gen.seed}"
    raw, full = a.work / f"raw-{tag}", a.work / f"prepared-{tag}"
    if not (full / "manifest.json").exists():
        if not (raw / "events.csv").exists():
            t = time.perf_counter()
            write_synthetic(raw, gen)
            print(f"generated {tag} in {time.perf_counter() - t:.0f} s", flush=True)
        t = time.perf_counter()
        cols = ColumnMap(item="item_id", op="operation", time="timestamp", session="session_id")
        prepare(read_generic(raw / "events.csv", cols, knowledge=raw / "knowledge.csv"), full,
                PrepareConfig(cold_start="keep", min_item_count=1 if a.million else 3), overwrite=True)
        print(f"prepared it in {time.perf_counter() - t:.0f} s", flush=True)
    n_train = PreparedData(full).manifest["splits"]["train"]["samples"]
    want = min(a.train_samples or n_train, n_train)
    cut = a.work / f"bench-{tag}-train{want}-eval{a.eval_samples}"
    if not (cut / "manifest.json").exists():
        subset(full, cut, want, a.eval_samples)
    return cut


# --------------------------------------------------------------------------------------------
# our worker
# --------------------------------------------------------------------------------------------

def worker(a: argparse.Namespace) -> None:
    import torch

    from mkmsr.data.dataset import PreparedData
    from mkmsr.training.train import TrainConfig, Trainer

    torch.set_num_threads(a.threads)
    data = PreparedData(a.data)
    opts = dict(CONFIGS[a.worker])
    if opts.get("loss") == "sampled":
        opts.update(negatives=a.negatives, sampler=a.sampler, batch_size=a.sampled_batch_size)
    cfg = TrainConfig(epochs=a.max_epochs, patience=a.max_epochs, eval_test_each_epoch=False, threads=a.threads,
                      max_len=a.max_len, eval_batch_size=a.eval_batch_size, seed=a.seed, device=a.device,
                      time_budget_s=60 * a.budget_min, **opts)
    tr = Trainer(data, a.model, {}, cfg, None, progress=False)
    metrics = tr.fit()
    n = data.manifest["splits"]["train"]["samples"]
    seen = sum(h.get("train_samples", n) for h in tr.history)
    t_train = sum(h["train_seconds"] for h in tr.history)
    whole = [h["train_seconds"] for h in tr.history if "train_samples" not in h]
    sps = seen / t_train
    print(json.dumps({
        "config": a.worker, "model": a.model, "options": opts, "train_samples": n, "samples_seen": seen,
        "epochs": round(seen / n, 3), "train_seconds": round(t_train, 2), "train_samples_per_s": round(sps, 1),
        "epoch_seconds": round(whole[0] if whole else n / sps, 1), "epoch_seconds_measured": bool(whole),
        "valid": {k: metrics["valid"][k] for k in ("mrr@20", "hit@20")}, "best_epoch": metrics["best_epoch"],
        "valid_samples": metrics["valid"].get("samples"), "n_items": data.spec.n_items,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": torch.get_num_threads(), "device": a.device,
        "sr_loss_by_epoch": [round(h["sr_loss"], 4) for h in tr.history],
    }))


def run(cmd: list[str], cwd: Path) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)  # RecBole writes logs into its cwd
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1].replace("mkmsr.errors.ConfigError: ", "")
        if "ConfigError" in proc.stderr:  # an option this machine cannot run (bf16 without support)
            return {"skipped": last}
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        return {"failed": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-min", type=float, default=10.0, help="training wall-clock budget per configuration")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--model", default="mkmsr", help="our model for the full-* and sampled configurations")
    p.add_argument("--negatives", type=int, default=2048)
    p.add_argument("--sampler", default="uniform", choices=["uniform", "popularity"])
    p.add_argument("--sampled-batch-size", type=int, default=128,
                   help="batch of the sampled configuration (default 128, as every other): a larger batch "
                        "spreads the per-step costs that scale with the catalogue (Adam over the item table, "
                        "its dense gradient) over more samples and gives more in-batch negatives")
    p.add_argument("--million", action="store_true", help="a 1M-item synthetic catalogue instead of JDATA's 139k")
    p.add_argument("--items", type=int, default=0, help="warm items of the generator (default: jdata_scale's)")
    p.add_argument("--sessions", type=int, default=0, help="sessions of the generator (default: jdata_scale's)")
    p.add_argument("--train-samples", type=int, default=0, help="cap the training split (0 = whole; checks only)")
    p.add_argument("--eval-samples", type=int, default=20_000, help="validation samples evaluated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu | cuda (ours and RecBole's)")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "scale")
    p.add_argument("--recbole-python", type=Path, default=ROOT / ".venv-recbole" / "bin" / "python")
    p.add_argument("--json", type=Path, default=None, help="default benchmarks/out/scale_train[-1m].json")
    p.add_argument("--worker", choices=[c for c in CONFIGS if CONFIGS[c] is not None], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    configs = a.configs.split(",")
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown configuration {bad[0]!r}; choose from {', '.join(CONFIGS)}")
    a.json = a.json or ROOT / "benchmarks" / "out" / ("scale_train-1m.json" if a.million else "scale_train.json")
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)

    from mkmsr.data.dataset import PreparedData
    from mkmsr.models.scoring import bf16_support

    t0 = time.perf_counter()
    data_dir = prepare_data(a)
    data = PreparedData(data_dir)
    m = data.manifest
    info = {"items": data.spec.n_items, "train_samples": m["splits"]["train"]["samples"],
            "valid_samples": m["splits"]["valid"]["samples"], "budget_min": a.budget_min, "model": a.model,
            "negatives": a.negatives, "sampler": a.sampler, "sampled_batch_size": a.sampled_batch_size,
            "threads": a.threads, "device": a.device,
            "bf16_support": bf16_support(a.device)[1], "cpu_count": os.cpu_count(),
            "load_average_before": os.getloadavg()[0],
            "command": " ".join([os.path.relpath(sys.executable, ROOT), *sys.argv])}
    print(f"\n== {info['items']:,} items, {info['train_samples']:,} training samples, {info['valid_samples']:,} "
          f"validation samples (ready in {time.perf_counter() - t0:.0f} s); budget {a.budget_min:g} min per "
          f"configuration; {info['bf16_support']}", flush=True)
    rows = {}
    for c in configs:
        if c == "recbole-srgnn":
            if not a.recbole_python.exists():
                rows[c] = {"skipped": f"{a.recbole_python} missing (see /work/shared/notes/recbole-peer.md, "
                                      "or pass --recbole-python)"}
                print(f"  {c:14s} skipped: {rows[c]['skipped']}", flush=True)
                continue
            from speed import recbole_files

            rb = a.work / f"recbole-{data_dir.name}" / "bench"
            if not (rb / "bench.train.inter").exists():
                recbole_files(data_dir, rb, a.max_len)
            cmd = [str(a.recbole_python), str(ROOT / "benchmarks" / "scale_recbole.py"), "--data", str(rb),
                   "--threads", str(a.threads), "--budget-s", str(60 * a.budget_min), "--max-len", str(a.max_len),
                   "--eval-batch-size", str(a.eval_batch_size), "--device", a.device, "--max-epochs",
                   str(a.max_epochs)]
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", c, "--data", str(data_dir),
                   "--model", a.model, "--threads", str(a.threads), "--budget-min", str(a.budget_min),
                   "--negatives", str(a.negatives), "--sampler", a.sampler, "--device", a.device,
                   "--sampled-batch-size", str(a.sampled_batch_size),
                   "--max-len", str(a.max_len), "--eval-batch-size", str(a.eval_batch_size),
                   "--max-epochs", str(a.max_epochs), "--seed", str(a.seed)]
        t = time.perf_counter()
        r = rows[c] = run(cmd, a.work)
        r["wall_seconds"] = round(time.perf_counter() - t, 1)
        if "skipped" in r or "failed" in r:
            print(f"  {c:14s} {'skipped' if 'skipped' in r else 'FAILED'}: {r.get('skipped') or r.get('failed')}",
                  flush=True)
            continue
        print(f"  {c:14s} {r['train_samples_per_s']:>9,.1f} samples/s  epoch {r['epoch_seconds']:>8,.1f} s"
              f"{'' if r['epoch_seconds_measured'] else ' (est.)'}  {r['epochs']:.2f} epochs in budget  "
              f"valid MRR@20 {r['valid']['mrr@20']:.2f}  Hit@20 {r['valid']['hit@20']:.2f}  "
              f"peak {r['peak_rss_bytes'] / 2 ** 30:.2f} GiB", flush=True)
    info["load_average_after"] = os.getloadavg()[0]
    info["configs"] = rows
    info["targets"] = targets(rows)
    for line in info["targets"]:
        print("  target: " + line)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(info, indent=2) + "\n")
    md = markdown(info)
    a.json.with_suffix(".md").write_text(md)
    print("\n" + md + f"\nwritten {a.json} and {a.json.with_suffix('.md')}")
    return 0


def ok(r: dict | None) -> bool:
    return bool(r) and "train_samples_per_s" in r


def targets(rows: dict) -> list[str]:
    """The issue's targets, as far as this run's configurations measure them."""
    out = []
    rb = rows.get("recbole-srgnn")
    fulls = {c: rows[c] for c in ("full-fp32", "full-bf16") if ok(rows.get(c))}
    if ok(rb) and fulls:
        best = max(fulls, key=lambda c: fulls[c]["train_samples_per_s"])
        x = fulls[best]["train_samples_per_s"] / rb["train_samples_per_s"]
        out.append(f"full softmax >= 5x RecBole SRGNN samples/s: {best} {x:.2f}x -> {'met' if x >= 5 else 'not met'}")
    for name in ("sampled", "sampled-lazy"):
        s = rows.get(name)
        if not ok(s):
            continue
        e = s["epoch_seconds"]
        out.append(f"{name}: one epoch of the whole training split < 600 s: {e:,.0f} s"
                   f"{'' if s['epoch_seconds_measured'] else ' (extrapolated)'} -> {'met' if e < 600 else 'not met'}")
        for c, r in fulls.items():
            d = s["valid"]["mrr@20"] - r["valid"]["mrr@20"]
            out.append(f"{name} vs {c}: validation MRR@20 after the same budget {s['valid']['mrr@20']:.2f} vs "
                       f"{r['valid']['mrr@20']:.2f} ({d:+.2f} points) -> {'met' if d >= -1 else 'not met'}")
    return out


def markdown(info: dict) -> str:
    rows = info["configs"]
    base = rows.get("recbole-srgnn")
    lines = [f"{info['items']:,} items, {info['train_samples']:,} training samples, {info['valid_samples']:,} "
             f"validation samples; budget {info['budget_min']:g} min of training per configuration; model "
             f"{info['model']}; {info['threads']} threads on {info['device']} ({info['bf16_support']}); load "
             f"average {info['load_average_before']:.2f} before, {info['load_average_after']:.2f} after", "",
             "| configuration | train samples/s | × RecBole | s per epoch | epochs in budget | valid MRR@20 | "
             "valid Hit@20 | peak memory |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c, r in rows.items():
        if not ok(r):
            lines.append(f"| {c} | {'skipped' if 'skipped' in r else 'failed'}: {r.get('skipped') or r.get('failed')} "
                         "| | | | | | |")
            continue
        x = f"{r['train_samples_per_s'] / base['train_samples_per_s']:.2f}" if ok(base) and c != "recbole-srgnn" else "—"
        est = "" if r["epoch_seconds_measured"] else " (est.)"
        lines.append(f"| {c} | {r['train_samples_per_s']:,.0f} | {x} | {r['epoch_seconds']:,.0f}{est} | "
                     f"{r['epochs']:.2f} | {r['valid']['mrr@20']:.2f} | {r['valid']['hit@20']:.2f} | "
                     f"{r['peak_rss_bytes'] / 2 ** 30:.2f} GiB |")
    if info.get("targets"):
        lines += [""] + [f"* {t}" for t in info["targets"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
