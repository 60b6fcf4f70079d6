"""How good would the repeat decision have to be for the JD repeat target and the MRR@20 lead at once?

    .venv/bin/python benchmarks/repeat_oracle.py --work W [--datasets Demo,Demo(N)] [--seeds 0,1,2]

repeat_target.py measured that on the JD data S-POP's repeat MRR@20 is reached only by putting the
session's items first, which costs MKM-SR-RN its MRR@20 lead over CORE-KG. Whether a better repeat /
explore decision could give both is a question about that decision's quality alone, so this script
keeps every other part of a finished run — its order among the session's items, its distribution over
new items — and replaces the repeat logit z of its hurdle, q = T z + b, by a synthetic detector of
known quality: z = d (y - 1/2) + e, y = 1 where the target is an item of the session, e ~ N(0, 1), so
that its AUC is Phi(d / sqrt 2). Validation and test each get their own draw. For every AUC level
the hurdle's (T, b) is chosen on validation over repeat_target.py's grid, two ways:

* ``best``: the best validation MRR@20 (what the model's calibration does);
* ``floor``: the best validation MRR@20 among the points whose validation repeat MRR@20 reaches
  S-POP's (the target as a constraint, chosen on validation only);

and read on test, paired against ``--against`` (CORE-KG) over test samples and seeds. A third
point is a bound, not a choice anyone could make:

* ``hindsight``: per seed, the best *test* MRR@20 among the points whose *test* repeat MRR@20
  reaches S-POP's: what the best hurdle could give with that detector, chosen knowing the answers.

The model's own z is the first row (its measured AUC beside it). The answer is the smallest AUC at
which a point meets both targets on test: repeat MRR@20 >= S-POP's, and Hit@20 and MRR@20 ahead
of CORE-KG by more than 2 standard errors. Saves ``--json``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rank_split import PREPARED, auc  # noqa: E402
from repeat_target import SESSION_FIRST, SHIFTS, TEMPERATURES, paired, per_sample, ranks_of, summary  # noqa: E402

from mkmsr.checkpoint import load_checkpoint  # noqa: E402
from mkmsr.data.batching import make_batch  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.errors import ConfigError  # noqa: E402
from mkmsr.fsutil import read_json, write_json  # noqa: E402

#: the synthetic detectors' AUCs (1.0: d large enough that the two classes never overlap in practice)
AUCS = (0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 1.0)
GRID = [(t, s) for t in TEMPERATURES for s in SHIFTS] + [SESSION_FIRST]


def separation(auc: float) -> float:
    """d with Phi(d / sqrt 2) = auc for z = d (y - 1/2) + N(0, 1)."""
    if auc >= 1.0:
        return 40.0
    from statistics import NormalDist
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def auc_of(z: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve of score ``z`` for label ``y`` (ties counted half)."""
    return auc(torch.as_tensor(np.asarray(z, dtype=np.float64)), torch.as_tensor(np.asarray(y, dtype=bool)))


@torch.no_grad()
def forward(model, data: PreparedData, split: str) -> dict:
    """One pass over ``split``: per batch the within-group log-probabilities (the session's items
    normalised among themselves, the others among themselves), the session mask and the targets;
    the model's repeat logit z and the per-sample label y (the target is a session item)."""
    arr = data.split(split)
    sess, prefix = arr.samples()
    saved = model.config.hurdle_shift
    batches, zs, ys = [], [], []
    try:
        model.config.hurdle_shift = -20.0                     # the distribution before the hurdle
        for lo in range(0, sess.size, 512):
            b = make_batch(arr, sess[lo:lo + 512], prefix[lo:lo + 512])
            lp = model.logits(b)
            inside = torch.zeros(len(b), lp.shape[1] + 1, dtype=torch.bool).scatter_(1, b.items, b.mask)[:, 1:]
            neg = torch.tensor(float("-inf"), dtype=lp.dtype)
            l_in = torch.logsumexp(torch.where(inside, lp, neg), 1, keepdim=True)
            l_out = torch.logsumexp(torch.where(inside, neg, lp), 1, keepdim=True)
            batches.append((torch.where(inside, lp - l_in, lp - l_out), inside, b.targets))
            zs.append(model.repeat_logit(b))
            ys.append(inside.gather(1, (b.targets - 1)[:, None])[:, 0])
    finally:
        model.config.hurdle_shift = saved
    return {"batches": batches, "z": torch.cat(zs).numpy().astype(np.float64), "y": torch.cat(ys).numpy()}


@torch.no_grad()
def score(cache: dict, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample reciprocal rank, hit and repeat flag with the hurdle at logit ``q`` per sample."""
    qs = torch.as_tensor(q, dtype=torch.float32)
    out, off = ([], [], []), 0
    for base, inside, targets in cache["batches"]:
        qb = qs[off:off + len(targets), None]
        off += len(targets)
        x = base + torch.where(inside, F.logsigmoid(qb), F.logsigmoid(-qb))
        for d, v in zip(out, per_sample(x, targets, inside)):
            d.append(v)
    return tuple(torch.cat(v).numpy() for v in out)


def choose(valid: dict, z_valid: np.ndarray, floor: float, test: dict, z_test: np.ndarray,
           target: float) -> tuple[dict, dict]:
    """The hurdle points for detector z: ``best`` and ``floor`` chosen on validation, the
    ``hindsight`` bound chosen on test; and every point's per-sample test arrays."""
    vs = {key: summary(*score(valid, key[0] * z_valid + key[1])) for key in GRID}
    ts = {key: score(test, key[0] * z_test + key[1]) for key in GRID}
    tsum = {key: summary(*v) for key, v in ts.items()}
    ok = [k for k in GRID if vs[k]["repeat_mrr@20"] >= floor]
    ok_test = [k for k in GRID if tsum[k]["repeat_mrr@20"] >= target]
    return {"best": max(GRID, key=lambda k: vs[k]["mrr@20"]),
            "floor": max(ok, key=lambda k: vs[k]["mrr@20"]) if ok else None,
            "hindsight": max(ok_test, key=lambda k: tsum[k]["mrr@20"]) if ok_test else None}, ts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="a benchmark work folder (runs/, prepared-*/)")
    p.add_argument("--datasets", default="Demo,Demo(N)")
    p.add_argument("--model", default="mkmsr-rn-1x")
    p.add_argument("--reference", default="s-pop", help="the run whose repeat MRR@20 is the target")
    p.add_argument("--against", default="core-kg", help="the row the lead is paired against")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "docs" / "repeat-oracle.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    out: dict = {"command": "benchmarks/repeat_oracle.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "model": a.model, "aucs": list(AUCS), "datasets": {}}
    for label in [d for d in a.datasets.split(",") if d]:
        ref = work / "runs" / label / a.reference / "seed0" / "metrics.json"
        if not ref.exists():
            raise ConfigError(f"{ref}: no finished {a.reference} run; run benchmarks/lead.py --models {a.reference} first")
        ref_m = read_json(ref)
        floor, target = float(ref_m["valid"]["repeat_mrr@20"]), float(ref_m["test"]["repeat_mrr@20"])
        against = [ranks_of(rd) for rd in sorted((work / "runs" / label / a.against).glob("seed*"))
                   if (rd / "test_ranks.npz").exists()]
        if not against:
            raise ConfigError(f"{work / 'runs' / label / a.against}: no finished runs to pair against")
        data = PreparedData(work / PREPARED[label])
        levels = ["own"] + [f"{x:.2f}" for x in AUCS]
        names = ("best", "floor", "hindsight")
        per = {lv: {**{n: [] for n in names}, "auc_test": [], "points": []} for lv in levels}
        seeds = [int(s) for s in a.seeds.split(",")]
        for seed in seeds:
            rd = work / "runs" / label / a.model / f"seed{seed}"
            if not (rd / "best").exists():
                raise ConfigError(f"{rd}: no finished run")
            model = load_checkpoint(rd / "best")[0].eval()
            model.fit_statistics(data)
            valid, test = forward(model, data, "valid"), forward(model, data, "test")
            yv, yt = valid["y"].astype(bool), test["y"].astype(bool)
            for i, lv in enumerate(levels):
                if lv == "own":
                    zv, zt = valid["z"], test["z"]
                else:
                    d = separation(float(lv))
                    rng = np.random.default_rng([seed, i])
                    zv = d * (yv - 0.5) + rng.standard_normal(yv.size)
                    zt = d * (yt - 0.5) + rng.standard_normal(yt.size)
                chosen, ts = choose(valid, zv, floor, test, zt, target)
                per[lv]["auc_test"].append(auc_of(zt, yt))
                per[lv]["points"].append({k: (list(v) if v else None) for k, v in chosen.items()})
                for name, key in chosen.items():
                    per[lv][name].append(ts[key] if key else None)
                got = {n: summary(*per[lv][n][-1]) for n in chosen if per[lv][n][-1] is not None}
                print(f"{label} seed {seed} z {lv:>4s} (test AUC {per[lv]['auc_test'][-1]:.3f}): " + "; ".join(
                    f"{n} {chosen[n]} MRR@20 {g['mrr@20']:.2f} repeat {g['repeat_mrr@20']:.2f}"
                    for n, g in got.items()), flush=True)
        rows = []
        for lv in levels:
            row = {"z": lv, "auc_test": float(np.mean(per[lv]["auc_test"])), "points": per[lv]["points"]}
            for name in names:
                runs = [r for r in per[lv][name] if r is not None]
                if len(runs) < len(seeds):
                    row[name] = None
                    continue
                means = {k: float(np.mean([summary(*r)[k] for r in runs])) for k in ("hit@20", "mrr@20",
                                                                                       "repeat_mrr@20", "first_mrr@20")}
                pair = paired([r[:2] for r in runs], against)
                lead = {k: {"mean": v["mean"], "se": v["se"]} for k, v in pair.items()}
                meets = {"repeat_target": means["repeat_mrr@20"] >= target,
                         "lead": all(v["mean"] > 2 * v["se"] for v in pair.values())}
                row[name] = {**means, f"vs_{a.against}": lead, "meets": meets}
            rows.append(row)
            print(f"{label} z {lv:>4s} AUC {row['auc_test']:.3f} | " + " | ".join(
                f"{n}: MRR@20 {row[n]['mrr@20']:.2f} repeat {row[n]['repeat_mrr@20']:.2f} "
                f"lead {row[n][f'vs_{a.against}']['hit@20']['mean']:+.2f}±{row[n][f'vs_{a.against}']['hit@20']['se']:.2f}"
                f" / {row[n][f'vs_{a.against}']['mrr@20']['mean']:+.2f}±{row[n][f'vs_{a.against}']['mrr@20']['se']:.2f}"
                f" {'BOTH' if all(row[n]['meets'].values()) else ''}" for n in names if row.get(n)),
                flush=True)
        res = {"reference_repeat_mrr@20": {"valid": floor, "test": target}, "seeds": seeds, "rows": rows}
        for name in names:   # the smallest detector quality at which that point meets both targets
            both = [r for r in rows if r["z"] != "own" and r.get(name) and all(r[name]["meets"].values())]
            res[f"smallest_level_meeting_both_{name}"] = both[0]["z"] if both else None
            print(f"{label}: smallest synthetic AUC at which '{name}' meets both targets: "
                  f"{res[f'smallest_level_meeting_both_{name}']}", flush=True)
        out["datasets"][label] = res
    write_json(Path(a.json), out)
    print("saved", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
