"""Does the time between actions tell a repeat from a first-time next item? (JD raw logs)

    .venv/bin/python benchmarks/repeat_time.py [--source ../shared/data/jdata-demo]

The prepared datasets keep the order of a session's micro-behaviours, not their times, so no model
here sees how long a user lingered. Before carrying timestamps through the pipeline this script
measures what they would buy the repeat decision (is the next item one of the session's?), straight
from the raw JD files (sessions ordered by ``index``, then file order; every prefix -> next-item
sample, the SR-GNN convention). Two nested input sets, fitted on train.csv's samples, AUC on
test.csv (Demo) and test_new_item.csv (Demo(N)):

* ``order``: what the prepared data carries — prefix length (and its log), distinct items (count and
  share), the last item's count and its run at the end, the last operation;
* ``order + time``: and the times before the prediction (never the target's own): the last gap, the
  session's duration so far, its median and smallest gap, the time since the last new item, the
  share of gaps under 10 s, the hour of day.

Logistic regression and scikit-learn's HistGradientBoostingClassifier (the 'study' extra). Saves
``--json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mkmsr.fsutil import write_json  # noqa: E402

#: the first N columns of :func:`samples`'s matrix are the ``order`` set
N_ORDER = 10


def samples(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features of every prefix of every session of a raw JD file, and whether its next item repeats."""
    df = pl.read_csv(path).with_row_index("row").sort(["sessionId", "index", "row"])
    X, y = [], []
    for _, g in df.group_by(["sessionId"], maintain_order=True):
        items, ops, t = g["sku_id"].to_list(), g["type"].to_list(), g["index"].to_numpy().astype(np.float64)
        for p in range(1, len(items)):
            prefix, last = items[:p], items[p - 1]
            run = 1
            while run < p and prefix[-1 - run] == last:
                run += 1
            distinct = len(set(prefix))
            gaps = np.diff(t[:p]) if p > 1 else np.zeros(1)
            seen, last_new = set(), t[0]
            for j, it in enumerate(prefix):
                if it not in seen:
                    seen.add(it)
                    last_new = t[j]
            order = [p, np.log(p), distinct / p, distinct, prefix.count(last), run] + [ops[p - 1] == k for k in (1, 2, 3, 4)]
            time = [np.log1p(max(gaps[-1], 0.0)) if p > 1 else -1.0, p == 1, np.log1p(t[p - 1] - t[0]),
                    np.log1p(np.median(gaps)), np.log1p(gaps.min()) if p > 1 else -1.0, np.log1p(t[p - 1] - last_new),
                    float((gaps < 10).mean()) if p > 1 else 0.0, (t[p - 1] % 86400) / 3600.0]
            X.append(order + time)
            y.append(items[p] in seen)
    return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=bool)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "jdata-demo"))
    p.add_argument("--json", default=str(ROOT / "docs" / "repeat-time.json"))
    a = p.parse_args(argv)
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    src = Path(a.source)
    Xtr, ytr = samples(src / "train.csv")
    out: dict = {"command": "benchmarks/repeat_time.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "train": {"samples": int(ytr.size), "repeat_share": float(ytr.mean())}, "datasets": {}}
    fits = {}
    for name, cols in (("order", slice(0, N_ORDER)), ("order + time", slice(None))):
        mu, sd = Xtr[:, cols].mean(0), Xtr[:, cols].std(0) + 1e-9
        fits[name] = (cols, mu, sd, LogisticRegression(max_iter=3000).fit((Xtr[:, cols] - mu) / sd, ytr),
                      HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0).fit(Xtr[:, cols], ytr))
    for label, f in (("Demo", "test.csv"), ("Demo(N)", "test_new_item.csv")):
        X, y = samples(src / f)
        res = {"samples": int(y.size), "repeat_share": float(y.mean()), "auc": {}}
        for name, (cols, mu, sd, lr, hgb) in fits.items():
            res["auc"][name] = {"logistic": float(roc_auc_score(y, lr.decision_function((X[:, cols] - mu) / sd))),
                                "boosted": float(roc_auc_score(y, hgb.predict_proba(X[:, cols])[:, 1]))}
        out["datasets"][label] = res
        print(label, res, flush=True)
    write_json(Path(a.json), out)
    print("saved", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
