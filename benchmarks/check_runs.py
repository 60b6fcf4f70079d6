"""Audit finished runs: did each run's per-epoch validation score the weights it saved?

    .venv/bin/python benchmarks/check_runs.py --work W [--runs runs] [--json docs/check-runs.json]

Early stopping and the epoch choice read the validation figure logged after every epoch. Stop 29
found a bug (stale cached item vectors in MKM-SR+, MKM-SR-RN and CORE-KG) under which that logged
curve was not the saved weights' curve. Since then every run records ``validation_check`` in its
``metrics.json`` (the selected epoch's figure recomputed on its checkpoint, before any
inference-time option is tuned: ``train.validation_check``). This script reads the same check back
from runs trained before it existed, without evaluating anything:

* a run with no inference-time tuning: its final validation figure *is* the recomputed one;
* MKM-SR+ (a repeat boost tuned after training): the boost curve's point at the configured boost;
* MKM-SR-RN (a calibration after training): the calibration's first point, the configured options.

Every ``metrics.json`` under ``W/runs`` (``--runs``: another folder of ``W``; explore experts included) with a per-epoch log is checked;
count-based runs have none. Prints one line per dataset and model, saves ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mkmsr.fsutil import write_json  # noqa: E402
from mkmsr.training.train import validation_check  # noqa: E402


def recomputed_before_tuning(metrics: dict, config: dict, select: str) -> float | None:
    """The selected checkpoint's validation ``select`` before any inference-time tuning, as the
    run's own outputs record it; None when they do not."""
    tuned = metrics.get("tuned_on_validation")
    if not tuned:
        return metrics["valid"].get(select)
    if f"valid_{select}_by_boost" in tuned:
        boost = float((config.get("model_config") or {}).get("repeat_boost", 0.0))
        return tuned[f"valid_{select}_by_boost"].get(str(boost))
    seen, paths = tuned.get(f"valid_{select}_by_calibration"), tuned.get("calibration_paths")
    if seen and paths:
        return seen.get(json.dumps(paths[0]["start"], sort_keys=True))
    return None


def check_run(run: Path) -> dict | None:
    """``validation_check`` of one run folder; None for a run without per-epoch validation."""
    metrics = json.loads((run / "metrics.json").read_text())
    logs = run / "log.jsonl"
    if not logs.exists():
        return None
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    select = (config.get("train_config") or {}).get("select_metric", "mrr@20")
    logged = next((rec["valid"].get(select) for rec in map(json.loads, logs.read_text().splitlines())
                   if rec.get("epoch") == metrics["best_epoch"] and rec.get("valid")), None)
    if logged is None:
        return None
    recorded = metrics.get("validation_check")
    again = recorded["recomputed"] if recorded else recomputed_before_tuning(metrics, config, select)
    if again is None:
        return {"metric": select, "logged": logged, "recomputed": None, "consistent": None, "source": "not recorded"}
    return {**validation_check(logged, again, select), "source": "recorded" if recorded else "read back"}


def audit(work: Path, runs: str = "runs") -> dict:
    """Per ``dataset/model`` (an expert as ``dataset/model/expert``): runs, consistent, inconsistent,
    unknown, the largest |logged - recomputed| and the inconsistent runs."""
    out: dict[str, dict] = defaultdict(lambda: {"runs": 0, "consistent": 0, "inconsistent": 0, "unknown": 0,
                                                "max_abs_difference": 0.0, "inconsistent_runs": []})
    root = work / runs
    for path in sorted(root.rglob("metrics.json")):
        run = path.parent
        got = check_run(run)
        if got is None:
            continue
        rel = run.relative_to(root).parts
        # runs/<dataset>/<model>/seed<N>[/<expert>]
        key = "/".join(rel[:2] + rel[3:]) if len(rel) > 3 else "/".join(rel[:2])
        row = out[key]
        row["runs"] += 1
        if got["consistent"] is None:
            row["unknown"] += 1
            continue
        diff = abs(got["logged"] - got["recomputed"])
        row["max_abs_difference"] = max(row["max_abs_difference"], round(diff, 4))
        if got["consistent"]:
            row["consistent"] += 1
        else:
            row["inconsistent"] += 1
            row["inconsistent_runs"].append({"run": str(run.relative_to(root)), "logged": round(got["logged"], 4),
                                             "recomputed": round(got["recomputed"], 4)})
    return dict(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, type=Path, help="a benchmark folder (with runs/)")
    p.add_argument("--runs", default="runs", help="the folder of runs inside --work (default runs)")
    p.add_argument("--json", type=Path, help="save the audit here")
    a = p.parse_args(argv)
    if not (a.work / a.runs).is_dir():
        raise SystemExit(f"{a.work}: no {a.runs}/ folder (a benchmarks/lead.py or table2.py --work folder expected)")
    got = audit(a.work, a.runs)
    print(f"{'dataset/model':44s} {'runs':>5s} {'ok':>5s} {'bad':>5s} {'?':>4s} {'max |diff|':>10s}")
    for key, row in got.items():
        print(f"{key:44s} {row['runs']:5d} {row['consistent']:5d} {row['inconsistent']:5d} {row['unknown']:4d} "
              f"{row['max_abs_difference']:10.4f}")
    totals = {k: sum(r[k] for r in got.values()) for k in ("runs", "consistent", "inconsistent", "unknown")}
    print(f"all: {totals['runs']} runs, {totals['consistent']} consistent, {totals['inconsistent']} inconsistent, "
          f"{totals['unknown']} not recorded")
    if a.json:
        write_json(a.json, {"work": str(a.work), "runs": a.runs, "totals": totals, "by_run_group": got,
                            "command": f"benchmarks/check_runs.py --work {a.work} --runs {a.runs}"})
    return totals


if __name__ == "__main__":
    main()
