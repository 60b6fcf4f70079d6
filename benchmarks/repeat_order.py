"""How well can anything order a session's own items? The other half of the repeat target.

    .venv/bin/python benchmarks/repeat_order.py --work W [W2 ...] [--datasets Demo,Demo(N),Taobao]

On a target that repeats an item of its session, S-POP's MRR@20 is the quality of its order among
the session's items (every one of them above every new item). A model can reach S-POP's repeat
MRR@20 only with an order among them at least as good, so this script measures how good such an
order can be, on the repeat samples of validation and test only (their MRR@20 among the session's
items, which is the repeat MRR@20 of a model that puts the session's items first):

* ``recency``: the latest first (S-POP's 'recency' mode; S-POP's own run beside it);
* ``count``: the most frequent first, ties by recency;
* ``logistic`` and ``boosted``: a learned order, fitted on the train split's repeat samples (every
  item of a session is a candidate, the target the positive) over 30 features of a candidate — its
  recency rank, count, share of the prefix, distance of its last and first occurrence, the number
  of distinct items and the prefix length, its training popularity, its per-operation counts, the
  operation of its last occurrence, the session's last operation (and that crossed with "the most
  recent item") — logistic regression and scikit-learn's HistGradientBoostingClassifier;
* ``model_test``: MKM-SR-RN's own order among them on test (the repeat MRR@20 its hurdle gives with a
  perfect repeat detector, i.e. the session first on every repeat sample), read from ``--oracle``
  (repeat_oracle.py's JSON) where given.

Saves ``--json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rank_split import PREPARED  # noqa: E402

from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.errors import ConfigError  # noqa: E402
from mkmsr.fsutil import read_json, write_json  # noqa: E402


def candidates(data: PreparedData, split: str, pop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct item of every repeat sample's prefix as a row of features; its label (the
    target) and its sample's group number."""
    n_ops = data.spec.n_ops + 1
    a = data.split(split)
    sess, prefix = a.samples()
    X, y, g = [], [], []
    group = 0
    for s, p in zip(sess, prefix):
        o = int(a.offsets[s])
        items, ops, target = a.items[o:o + p], a.ops[o:o + p], a.items[o + p]
        if target not in items:
            continue
        last, first, count, op_count, last_op = {}, {}, {}, {}, {}
        for j, (it, op) in enumerate(zip(items.tolist(), ops.tolist())):
            last[it] = j
            first.setdefault(it, j)
            count[it] = count.get(it, 0) + 1
            op_count.setdefault(it, np.zeros(n_ops))[op] += 1
            last_op[it] = op
        order = sorted(last, key=lambda it: -last[it])
        session_op = np.eye(n_ops)[ops[-1]]
        for r, it in enumerate(order, 1):
            X.append(np.concatenate([[r, np.log(r), r == 1, count[it], count[it] / p, p - 1 - last[it],
                                      p - 1 - first[it], len(order), p, np.log1p(pop[it])],
                                     op_count[it], np.eye(n_ops)[last_op[it]], session_op, session_op * (r == 1)]))
            y.append(it == target)
            g.append(group)
        group += 1
    return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=bool), np.asarray(g)


def mrr(score: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    """MRR among each group's candidates (pessimistic ties), percent; every group has one positive."""
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rr = []
    for lo, hi in zip(starts, np.r_[starts[1:], g.size]):
        s, t = score[lo:hi], score[lo:hi][y[lo:hi]][0]
        rr.append(1.0 / ((s > t).sum() + (s == t).sum()))
    return 100 * float(np.mean(rr))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, nargs="+",
                   help="benchmark work folders (prepared-*/, runs/): each dataset is read from the first that has it")
    p.add_argument("--datasets", default="Demo,Demo(N)")
    p.add_argument("--oracle", default="", help="repeat_oracle.py's JSON: the model's own order, where present")
    p.add_argument("--json", default=str(ROOT / "docs" / "repeat-order.json"))
    a = p.parse_args(argv)
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    out: dict = {"command": "benchmarks/repeat_order.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "datasets": {}}
    for label in [d for d in a.datasets.split(",") if d]:
        have = [Path(w) for w in a.work if (Path(w) / PREPARED.get(label, label)).exists()]
        work = next((w for w in have if (w / "runs" / label).exists()), have[0] if have else None)
        if work is None:
            raise ConfigError(f"no prepared {label} in {', '.join(a.work)}")
        data = PreparedData(work / PREPARED.get(label, label))
        pop = np.bincount(data.split("train").items, minlength=data.spec.n_items + 1)
        sets = {split: candidates(data, split, pop) for split in ("train", "valid", "test")}
        Xt, yt, _ = sets["train"]
        mu, sd = Xt.mean(0), Xt.std(0) + 1e-9
        logistic = LogisticRegression(max_iter=2000).fit((Xt - mu) / sd, yt)
        boosted = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0).fit(Xt, yt)
        res: dict = {"repeat_samples": {k: int(v[2].max() + 1) if v[2].size else 0 for k, v in sets.items()}}
        for split in ("valid", "test"):
            X, y, g = sets[split]
            res[split] = {"recency": mrr(-X[:, 0], y, g), "count": mrr(X[:, 3] - 1e-3 * X[:, 0], y, g),
                          "logistic": mrr(logistic.decision_function((X - mu) / sd), y, g),
                          "boosted": mrr(boosted.predict_proba(X)[:, 1], y, g)}
        ref = work / "runs" / label / "s-pop" / "seed0" / "metrics.json"
        if ref.exists():
            m = read_json(ref)
            res["s-pop"] = {"valid": m["valid"]["repeat_mrr@20"], "test": m["test"]["repeat_mrr@20"]}
        if a.oracle and Path(a.oracle).exists():
            rows = read_json(Path(a.oracle))["datasets"].get(label, {}).get("rows", [])
            first = [r for r in rows if r["z"] == "1.00"]
            if first and first[0].get("best"):   # a perfect detector puts the session first on every repeat
                res["model_test"] = first[0]["best"]["repeat_mrr@20"]
        out["datasets"][label] = res
        print(label, res, flush=True)
    write_json(Path(a.json), out)
    print("saved", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
