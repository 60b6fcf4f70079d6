"""Does MKM-SR-RN's calibration transfer forward in time *within* validation? (A reading of the
benchmark's finished runs, not its protocol; the test split chooses nothing here.)

    .venv/bin/python benchmarks/calibration_transfer.py --work W [--datasets Demo] [--seeds 0,1,2,3,4]

MKM-SR-RN chooses its inference-time options on validation (``Trainer._calibrate``). On the JDATA
Demo the mixture is ahead of its own explore expert (CORE-KG) on validation and behind it on the
test period, which starts 10 hours later. Two explanations predict different things here:

* the calibration *overfits* validation (11 options, ~1,400 samples): then options chosen on the
  earlier half of the validation sessions lose their edge over the expert on the later half;
* the test period *differs* from the training period: then they keep it on the later half.

For each finished run (its validation-selected weights, ``best/``): the validation sessions are
split at their median start time; the calibration search of the run (same grid, starting points,
rounds and metric) runs on the earlier half alone; the later half scores the chosen options and
the expert alone (paired over samples and seeds: ``mkmsr.benchmark.paired_bootstrap``). Beside
it, the same difference on test, from the run's saved ranks (calibrated on all of validation).
Also per dataset: a profile of each split (samples, mean prefix length, repeat share, hours after
the train split's last session starts), and the two differences by prefix length. Prints a table
and saves ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mkmsr.checkpoint import load_checkpoint  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.fsutil import write_json  # noqa: E402
from mkmsr.training.benchmark import paired_bootstrap  # noqa: E402
from mkmsr.training.evaluate import split_rank_counts  # noqa: E402
from mkmsr.training.train import calibration_choice, calibration_paths, calibration_search  # noqa: E402

PREPARED = {"Demo": "prepared-drop", "Demo(N)": "prepared-keep", "Taobao": "prepared-taobao"}


def per_sample(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample Hit@20 and reciprocal rank@20, in percent (pessimistic ranks)."""
    return {"hit@20": (ranks <= 20) * 100.0, "mrr@20": np.where(ranks <= 20, 100.0 / ranks, 0.0)}


def saved_ranks(path: Path) -> np.ndarray:
    z = np.load(path)
    return z["greater"] + z["ties"] + 1


LENGTHS = (("1", 1, 1), ("2-3", 2, 3), ("4-9", 4, 9), ("10+", 10, 10 ** 9))


def split_profile(data: PreparedData) -> dict:
    """Per split: samples, mean prefix length, share of targets repeating a session item, and the
    hours between the train split's last session start and the split's first."""
    from mkmsr.training.evaluate import repeat_mask
    end = pl.read_parquet(data.path / "train.sessions.parquet")["start"].max()
    out = {}
    for split in ("train", "valid", "test"):
        arr = data.split(split)
        sess, prefix = arr.samples()
        start = pl.read_parquet(data.path / f"{split}.sessions.parquet")["start"]
        out[split] = {"samples": int(sess.size), "mean_prefix": round(float(prefix.mean()), 2),
                      "repeat_share": round(float(repeat_mask(arr.items, arr.offsets, sess, prefix).mean()), 3),
                      "hours_after_train": round(float((start.min() - end) / 3600), 1) if split != "train" else 0.0}
    return out


def transfer(rd: Path, data: PreparedData, early: np.ndarray, by_length: bool = False) -> dict:
    """One run: the calibration searched on the ``early`` validation samples; per-sample figures of
    the chosen options and of the expert on every validation sample, and on test. ``by_length``:
    also one search per prefix-length bucket (``LENGTHS``), each on the early samples of its
    bucket, and the figures of every validation sample under its own bucket's options."""
    run = json.loads((rd / "config.json").read_text())
    max_len = run["train_config"].get("max_len")
    model = load_checkpoint(rd / "best")[0].eval()
    model.fit_statistics(data)
    cfg = model.config
    grid = model.calibration_grid()
    search = calibration_search(cfg)
    metric = search.get("metric") or run["train_config"].get("select_metric", "mrr@20")
    cache: dict[str, dict] = {}

    def figures(p: dict) -> dict:
        key = json.dumps(p, sort_keys=True)
        if key not in cache:
            for k, v in p.items():
                setattr(cfg, k, v)
            cache[key] = per_sample(split_rank_counts(model, data, "valid", 512, max_len)["ranks"])
        return cache[key]

    def value(p: dict) -> float:
        f = figures(p)
        return float(sum(f[m][early].mean() for m in metric.split("+")))

    configured = {k: getattr(type(cfg)(), k) for k in grid}     # what the run's search started from
    seed = int(run["train_config"]["seed"])
    t = time.perf_counter()
    with model.calibration_memo():
        chosen, _ = calibration_choice(calibration_paths(value, grid, configured, seed, search), search)
        per_length = {}
        if by_length:
            plen = data.split("valid").samples()[1]
            for bucket, lo, hi in LENGTHS:
                mask = early & (plen >= lo) & (plen <= hi)
                if not mask.any():
                    per_length[bucket] = chosen
                    continue

                def value_b(p: dict, mask=mask) -> float:
                    f = figures(p)
                    return float(sum(f[m][mask].mean() for m in metric.split("+")))
                per_length[bucket] = calibration_choice(
                    calibration_paths(value_b, grid, configured, seed, search), search)[0]
    out = {}
    if by_length:
        out["chosen_by_length"] = per_length
        composite = {m: np.array(v, copy=True) for m, v in figures(chosen).items()}
        for bucket, lo, hi in LENGTHS:
            sel = (plen >= lo) & (plen <= hi)
            for m, v in figures(per_length[bucket]).items():
                composite[m][sel] = v[sel]
        out["valid_by_length"] = composite
    expert_valid = per_sample(split_rank_counts(model.expert, data, "valid", 512, max_len)["ranks"])
    return {**out, "chosen": chosen, "points": len(cache), "seconds": round(time.perf_counter() - t, 1),
            "valid": figures(chosen), "expert_valid": expert_valid,
            "test": per_sample(saved_ranks(rd / "test_ranks.npz")),
            "expert_test": per_sample(saved_ranks(rd / "expert" / "test_ranks.npz"))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="a benchmark work folder (runs/, prepared-*/)")
    p.add_argument("--datasets", default="Demo")
    p.add_argument("--model", default="mkmsr-rn")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--by-length", action="store_true",
                   help="also search the options per prefix-length bucket on the earlier half and score "
                        "them on the later half (against the expert and against one option set)")
    p.add_argument("--json", default=str(ROOT / "docs" / "calibration-transfer.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    res: dict = {"command": "benchmarks/calibration_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "model": a.model, "datasets": {}}
    for label in [d for d in a.datasets.split(",") if d]:
        data = PreparedData(work / PREPARED[label])
        arr = data.split("valid")
        sess, _ = arr.samples()
        start = pl.read_parquet(data.path / "valid.sessions.parquet")["start"].to_numpy()
        early = start[sess] < np.median(start)
        late = ~early
        valid_prefix = arr.samples()[1]
        test_prefix = data.split("test").samples()[1]
        profile = split_profile(data)
        print(f"{label}: " + "; ".join(f"{k} {v['samples']} samples, mean prefix {v['mean_prefix']}, repeat share "
                                       f"{v['repeat_share']}, starts {v['hours_after_train']} h after train" for k, v in profile.items()),
              flush=True)
        runs = {}
        for seed in [int(s) for s in a.seeds.split(",")]:
            rd = work / "runs" / label / a.model / f"seed{seed}"
            if not (rd / "best").exists() or not (rd / "expert" / "test_ranks.npz").exists():
                print(f"{label} seed {seed}: no finished run with an expert in {rd}, skipped", flush=True)
                continue
            runs[seed] = transfer(rd, data, early, a.by_length)
            r = runs[seed]
            print(f"{label} seed {seed}: chosen on the earlier {int(early.sum())} validation samples "
                  f"({r['points']} points, {r['seconds']:.0f} s): {r['chosen']}", flush=True)
        if not runs:
            continue
        out = {"profile": profile, "valid_samples": {"earlier": int(early.sum()), "later": int(late.sum())},
               "test_samples": int(next(iter(runs.values()))["test"]["hit@20"].size),
               "seeds": sorted(runs), "chosen": {s: r["chosen"] for s, r in runs.items()}}
        print(f"\n{label}: {a.model} (options chosen on the earlier half) vs its explore expert alone; "
              "mean over seeds, paired difference ± se (bootstrap over samples and seeds)")
        parts = [("later validation half", "valid", "expert_valid", late),
                 ("test (options chosen on all of validation)", "test", "expert_test", None)]
        if a.by_length:
            out["chosen_by_length"] = {s: r["chosen_by_length"] for s, r in runs.items()}
            parts += [("later half, options per prefix length, vs expert", "valid_by_length", "expert_valid", late),
                      ("later half, per prefix length vs one option set", "valid_by_length", "valid", late)]
        for part, mine, theirs, mask in parts:
            plen = (valid_prefix if mask is not None else test_prefix)
            sel = mask if mask is not None else np.ones(plen.size, dtype=bool)
            row = {}
            for bucket, lo, hi in (("all", 1, 10 ** 9),) + LENGTHS:
                keep = sel & (plen >= lo) & (plen <= hi)
                cell = {"samples": int(keep.sum())}
                if not keep.any():
                    row[bucket] = cell
                    continue
                for m in ("hit@20", "mrr@20"):
                    A = np.stack([r[mine][m][keep] for r in runs.values()])
                    B = np.stack([r[theirs][m][keep] for r in runs.values()])
                    d = paired_bootstrap(A, B)
                    cell[m] = {"model": float(A.mean()), "expert": float(B.mean()), "diff": d["mean"], "se": d["se"]}
                row[bucket] = cell
                name = part if bucket == "all" else f"  prefix length {bucket} ({cell['samples']} samples)"
                print(f"  {name:44s} " + "   ".join(
                    f"{m}: {cell[m]['model']:6.2f} vs {cell[m]['expert']:6.2f} ({cell[m]['diff']:+.2f} ± {cell[m]['se']:.2f})"
                    for m in ("hit@20", "mrr@20")), flush=True)
            out[part] = row
        res["datasets"][label] = out
    write_json(Path(a.json), res)
    print("saved", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
