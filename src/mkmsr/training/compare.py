"""Paired comparison of two sets of finished runs on the same test samples (``mkmsr compare``).

Every run of ``mkmsr train`` (and of the benchmark) saves the per-sample rank counts of its
validation-selected model on test (``test_ranks.npz``). Two groups of runs — e.g. model A's seeds
and model B's seeds — are compared on the same test samples with the benchmark's own paired
bootstrap (:func:`mkmsr.training.benchmark.paired_bootstrap`: test samples drawn with replacement,
the same draw for both, and each group's seeds drawn with replacement), so the standard error
covers both the test set and the seeds. The verdict rule is the one docs/results.md uses: A is
ahead (behind) when the difference is more than 2 standard errors above (below) zero, else level.

Where the runs' prepared dataset is still at the path they recorded (and has the same content),
the comparison is also split into repeat targets (the target is an item of its own session) and
first-time targets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..fsutil import read_json
from .benchmark import paired_bootstrap, per_sample_metric

#: the metrics compared by default
METRICS = ("hit@20", "mrr@20")


def _load(run: str | Path) -> dict:
    run = Path(run)
    ranks, metrics = run / "test_ranks.npz", run / "metrics.json"
    if not metrics.exists():
        raise DataError("not a finished run (no metrics.json): give run directories of `mkmsr train`", file=str(run))
    if not ranks.exists():
        raise DataError("this run saved no per-sample test ranks (test_ranks.npz): rerun `mkmsr train` to get them",
                        file=str(run))
    m = read_json(metrics)
    z = np.load(ranks)
    return {"run": str(run), "model": m.get("model"), "seed": m.get("seed"), "dataset": m.get("dataset"),
            "dataset_sha256": m.get("dataset_sha256"), "greater": z["greater"], "ties": z["ties"],
            "targets": z["targets"], "test": m.get("test", {})}


def _repeat_flags(run: dict) -> np.ndarray | None:
    """Per test sample: is the target an item of its session? None when the runs' dataset is gone
    or has changed since."""
    from ..data.dataset import PreparedData
    from .evaluate import repeat_mask

    path = run.get("dataset")
    if not path or not Path(path).exists():
        return None
    try:
        data = PreparedData(path)
    except (DataError, OSError, ValueError):
        return None
    if data.content_hash != run["dataset_sha256"]:
        return None
    arr = data.split("test")
    sess, prefix = arr.samples()
    if sess.size != run["targets"].size:
        return None
    return repeat_mask(arr.items, arr.offsets, sess, prefix)


def compare_runs(a: Sequence[str | Path], b: Sequence[str | Path], metrics: Sequence[str] = METRICS,
                 n_boot: int = 2000, seed: int = 0) -> dict:
    """A − B for each of ``metrics`` (``hit@k`` / ``mrr@k``, percent), paired over the test samples
    and the seeds of the two groups of run directories. Raises DataError when the runs were not
    evaluated on the same test samples (another dataset, or another version of it)."""
    if not a or not b:
        raise ConfigError("compare needs at least one run on each side")
    if n_boot < 2:
        raise ConfigError(f"the bootstrap needs at least 2 draws, got {n_boot}")
    for metric in metrics:
        kind, _, k = metric.partition("@")
        if kind not in ("hit", "mrr") or not k.isdigit() or int(k) < 1:
            raise ConfigError(f"metrics must be hit@k or mrr@k, got {metric!r}")
    runs_a, runs_b = [_load(r) for r in a], [_load(r) for r in b]
    first = runs_a[0]
    for r in runs_a + runs_b:
        if r["dataset_sha256"] != first["dataset_sha256"]:
            raise DataError(f"evaluated on another dataset than {first['run']} (content "
                            f"{str(r['dataset_sha256'])[:12]} vs {str(first['dataset_sha256'])[:12]}): a paired "
                            "comparison needs the same test samples", file=r["run"])
        if not np.array_equal(r["targets"], first["targets"]):
            raise DataError(f"its test targets differ from {first['run']}'s: a paired comparison needs the same "
                            "test samples", file=r["run"])
    repeat = _repeat_flags(first)
    subsets = {"all": np.ones(first["targets"].size, dtype=bool)}
    if repeat is not None:
        subsets.update({"repeat": repeat, "first-time": ~repeat})
    out: dict = {"a": {"runs": [r["run"] for r in runs_a], "models": sorted({str(r["model"]) for r in runs_a})},
                 "b": {"runs": [r["run"] for r in runs_b], "models": sorted({str(r["model"]) for r in runs_b})},
                 "test_samples": int(first["targets"].size), "dataset": first["dataset"],
                 "dataset_sha256": first["dataset_sha256"], "n_boot": n_boot, "rule": "ahead / behind beyond 2 SE",
                 "subsets": {}}
    for name, mask in subsets.items():
        if not mask.any():
            continue
        res = {"samples": int(mask.sum())}
        for metric in metrics:
            va = np.stack([per_sample_metric(r["greater"], r["ties"], metric)[mask] for r in runs_a])
            vb = np.stack([per_sample_metric(r["greater"], r["ties"], metric)[mask] for r in runs_b])
            p = paired_bootstrap(va, vb, n_boot=n_boot, seed=seed)
            verdict = "ahead" if p["mean"] > 2 * p["se"] else "behind" if p["mean"] < -2 * p["se"] else "level"
            res[metric] = {"a": float(va.mean()), "b": float(vb.mean()), "a_minus_b": p["mean"], "se": p["se"],
                           "ci95": [p["lo"], p["hi"]], "verdict": verdict}
        out["subsets"][name] = res
    return out


def compare_table(res: dict) -> str:
    """The comparison as a Markdown table, one row per subset and metric."""
    def n_runs(side: dict) -> str:
        return f"{len(side['runs'])} run{'s' if len(side['runs']) != 1 else ''}"

    lines = [f"A: {', '.join(res['a']['models'])} ({n_runs(res['a'])}) vs B: "
             f"{', '.join(res['b']['models'])} ({n_runs(res['b'])}), {res['test_samples']} test samples, "
             f"paired over samples and seeds ({res['n_boot']} bootstrap draws)", "",
             "| targets | samples | metric | A | B | A − B ± SE | 95% interval | A is |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, sub in res["subsets"].items():
        for metric, v in sub.items():
            if metric == "samples":
                continue
            lines.append(f"| {name} | {sub['samples']} | {metric} | {v['a']:.2f} | {v['b']:.2f} | "
                         f"{v['a_minus_b']:+.2f} ± {v['se']:.2f} | [{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}] | "
                         f"{v['verdict']} |")
    return "\n".join(lines)
