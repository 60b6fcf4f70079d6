"""What the "repeat MRR@20 >= S-POP's" target costs: a held-out check on finished MKM-SR-RN runs.

    .venv/bin/python benchmarks/repeat_target.py --work W [--datasets Demo,Demo(N)] [--seeds 0,1,2,3,4]

On a repeat target S-POP puts every item of the session above every new item, so its repeat MRR@20
is the quality of its order *among* the session's items. MKM-SR-RN orders them as well (its
``repeat_inside`` MRR), but its validation-calibrated repeat hurdle lets the best new items in above
them where the session does not look like a repeat — which buys first-time MRR@20. This script
measures that trade on the finished runs, every option as validation chose it except the hurdle's
two, (T, b) of q = sigmoid(T z + b), swept over a grid. Three points, each read on test:

* ``calibrated``: the run as it is (the point its calibration chose);
* ``floor``: the best validation MRR@20 among the grid points whose *validation* repeat MRR@20 is at
  least S-POP's validation repeat MRR@20 — the target turned into a constraint, still chosen on
  validation only (none when no point meets it there);
* ``session-first``: b = 40, q = 1 up to float precision: S-POP's placement (every session item
  above every new item) with the model's order among them.

Paired differences (over test samples and seeds, ``paired_bootstrap``) of the last two against the
calibrated model and, where its runs exist, against ``--against`` (default CORE-KG). Saves ``--json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rank_split import PREPARED  # noqa: E402

from mkmsr.checkpoint import load_checkpoint  # noqa: E402
from mkmsr.data.batching import make_batch  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.errors import ConfigError  # noqa: E402
from mkmsr.fsutil import read_json, write_json  # noqa: E402
from mkmsr.training.benchmark import paired_bootstrap  # noqa: E402

TEMPERATURES = (0.5, 1.0, 2.0)
SHIFTS = tuple(x / 2 for x in range(-8, 25))          # -4 .. 12 by 0.5
OFF = (1.0, -20.0)                                    # the hurdle off (the model's own mass)
SESSION_FIRST = (1.0, 40.0)


def per_sample(lp: torch.Tensor, targets: torch.Tensor, inside: torch.Tensor, k: int = 20):
    """Per-sample reciprocal rank within the top k (0 beyond), hit, and whether the target is a
    session item; full ranking, pessimistic ties (the benchmark's rule)."""
    t = lp.gather(1, (targets - 1)[:, None])
    rank = ((lp > t).sum(1) + (lp == t).sum(1)).float()
    hit = rank <= k
    return torch.where(hit, 1.0 / rank, torch.zeros_like(rank)), hit.float(), inside.gather(1, (targets - 1)[:, None])[:, 0]


@torch.no_grad()
def sweep(model, data: PreparedData, split: str) -> dict:
    """{(T, b): (rr, hit, repeat)} per-sample arrays of ``split`` for every hurdle point (and
    :data:`OFF`), every other option of ``model`` as configured."""
    arr = data.split(split)
    sess, prefix = arr.samples()
    saved = model.config.hurdle_shift
    acc: dict = {}
    try:
        for lo in range(0, sess.size, 512):
            b = make_batch(arr, sess[lo:lo + 512], prefix[lo:lo + 512])
            model.config.hurdle_shift = -20.0                     # the distribution before the hurdle
            lp = model.logits(b)
            z = model.repeat_logit(b)[:, None]
            inside = torch.zeros(len(b), lp.shape[1] + 1, dtype=torch.bool).scatter_(1, b.items, b.mask)[:, 1:]
            neg = torch.tensor(float("-inf"), dtype=lp.dtype)
            l_in = torch.logsumexp(torch.where(inside, lp, neg), 1, keepdim=True)
            l_out = torch.logsumexp(torch.where(inside, neg, lp), 1, keepdim=True)
            points = {OFF: lp}
            for T in TEMPERATURES:
                for s in SHIFTS + (SESSION_FIRST[1],):
                    q = T * z + s
                    points[(T, s)] = torch.where(inside, lp - l_in + F.logsigmoid(q), lp - l_out + F.logsigmoid(-q))
            for key, x in points.items():
                parts = per_sample(x, b.targets, inside)
                dest = acc.setdefault(key, ([], [], []))
                for d, v in zip(dest, parts):
                    d.append(v)
    finally:
        model.config.hurdle_shift = saved
    return {k: tuple(torch.cat(v).numpy() for v in vs) for k, vs in acc.items()}


def summary(rr: np.ndarray, hit: np.ndarray, rep: np.ndarray) -> dict:
    rep = rep.astype(bool)
    return {"hit@20": 100 * float(hit.mean()), "mrr@20": 100 * float(rr.mean()),
            "repeat_mrr@20": 100 * float(rr[rep].mean()) if rep.any() else float("nan"),
            "first_mrr@20": 100 * float(rr[~rep].mean()) if (~rep).any() else float("nan")}


def ranks_of(rd: Path) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(rd / "test_ranks.npz")
    r = z["greater"] + z["ties"] + 1
    return np.where(r <= 20, 1.0 / r, 0.0), (r <= 20).astype(np.float64)


def paired(a: list, b: list) -> dict:
    """MRR@20 and Hit@20 of ``a`` minus ``b`` (lists of (rr, hit) per seed), percent points."""
    return {"hit@20": paired_bootstrap(100 * np.stack([x[1] for x in a]), 100 * np.stack([x[1] for x in b])),
            "mrr@20": paired_bootstrap(100 * np.stack([x[0] for x in a]), 100 * np.stack([x[0] for x in b]))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="a benchmark work folder (runs/, prepared-*/)")
    p.add_argument("--datasets", default="Demo,Demo(N)")
    p.add_argument("--model", default="mkmsr-rn")
    p.add_argument("--reference", default="s-pop", help="the run whose validation repeat MRR@20 is the floor")
    p.add_argument("--against", default="core-kg", help="also paired against this row's runs, where they exist")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "docs" / "repeat-target.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    out: dict = {"command": "benchmarks/repeat_target.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "datasets": {}}
    for label in [d for d in a.datasets.split(",") if d]:
        ref = work / "runs" / label / a.reference / "seed0" / "metrics.json"
        if not ref.exists():
            raise ConfigError(f"{ref}: no finished {a.reference} run; run benchmarks/lead.py --models {a.reference} first")
        floor = float(read_json(ref)["valid"]["repeat_mrr@20"])
        data = PreparedData(work / PREPARED[label])
        rows, tests = [], {"calibrated": [], "floor": [], "session-first": []}
        for seed in [int(s) for s in a.seeds.split(",")]:
            rd = work / "runs" / label / a.model / f"seed{seed}"
            if not (rd / "best").exists():
                continue
            model = load_checkpoint(rd / "best")[0].eval()
            model.fit_statistics(data)
            c = model.config
            calibrated = (c.hurdle_temperature, c.hurdle_shift) if c.repeat_hurdle and c.hurdle_shift > -20 else OFF
            valid, test = sweep(model, data, "valid"), sweep(model, data, "test")
            if calibrated not in valid:
                raise ConfigError(f"{rd}: calibrated hurdle {calibrated} is not on this script's grid")
            vs = {k: summary(*v) for k, v in valid.items()}
            ok = [k for k in vs if vs[k]["repeat_mrr@20"] >= floor]
            chosen = {"calibrated": calibrated, "floor": max(ok, key=lambda k: vs[k]["mrr@20"]) if ok else None,
                      "session-first": SESSION_FIRST}
            row = {"seed": seed}
            for name, key in chosen.items():
                if key is None:
                    row[name] = None
                    continue
                row[name] = {"temperature": key[0], "shift": key[1], "valid": vs[key], "test": summary(*test[key])}
                tests[name].append(test[key][:2])
                print(f"{label} seed {seed} {name:13s} (T {key[0]}, b {key[1]}): valid MRR@20 {vs[key]['mrr@20']:.2f} "
                      f"repeat {vs[key]['repeat_mrr@20']:.2f} | test Hit@20 {row[name]['test']['hit@20']:.2f} "
                      f"MRR@20 {row[name]['test']['mrr@20']:.2f} repeat {row[name]['test']['repeat_mrr@20']:.2f} "
                      f"first-time {row[name]['test']['first_mrr@20']:.2f}", flush=True)
            rows.append(row)
        res: dict = {"reference_valid_repeat_mrr@20": floor, "runs": rows, "means": {}, "paired": {}}
        for name in tests:
            got = [r[name]["test"] for r in rows if r.get(name)]
            if got:
                res["means"][name] = {"seeds": len(got), **{k: float(np.mean([g[k] for g in got])) for k in got[0]}}
        others = [work / "runs" / label / a.against / f"seed{s}" for s in range(5)]
        against = [ranks_of(rd) for rd in others if (rd / "test_ranks.npz").exists()]
        for name in ("floor", "session-first"):
            if not tests[name]:
                continue
            cal = [tests["calibrated"][i] for i, r in enumerate(rows) if r.get(name)]
            res["paired"][name] = {"vs_calibrated": paired(tests[name], cal)}
            if against:
                res["paired"][name][f"vs_{a.against}"] = paired(tests[name], against)
            for k, v in res["paired"][name].items():
                print(f"{label} {name} {k}: Hit@20 {v['hit@20']['mean']:+.2f} ± {v['hit@20']['se']:.2f}, "
                      f"MRR@20 {v['mrr@20']['mean']:+.2f} ± {v['mrr@20']['se']:.2f}")
        out["datasets"][label] = res
    write_json(Path(a.json), out)
    print("saved", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
