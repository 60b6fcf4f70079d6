"""How well can "the next item repeats one of the session's items" be told from the session at all?
The ceiling of MKM-SR-RN's repeat hurdle, measured with richer inputs than it uses (a study, not a
protocol of the benchmark; no model is trained).

    .venv/bin/python benchmarks/repeat_detect.py --work W [--datasets Demo,Demo(N),Taobao] [--json F]

The JD data misses the lead issue's repeat target (repeat-target MRR@20 >= S-POP's) because the
calibrated hurdle must decide per session whether the session's items go above the best new items,
and its logistic regression tells repeat from first-time targets with an AUC of only 0.65 on the
Demo's test ("Where the ranks go" in docs/results.md). This script asks whether better inputs would
move that ceiling. Every classifier is fitted on the train split's prefixes and read on validation
and test (AUC; 0.5 a coin, 1 an exact repeat decision), on three nested feature sets:

* ``hurdle``: ``mkmsr.models.mkmsr_rn.repeat_features``, what the shipped hurdle uses (log length,
  log distinct items, share of repeated steps, last item repeated, share of each operation, last
  operation);
* ``+sequence``: how the session ends — the last item's count in the session (log1p), the run of
  the last item at the end, and the steps since the last item new to the session (log1p);
* ``+item history``: what the log says about the last item — the share of train prefixes ending
  in it (and in it with the same operation) whose next item repeats (smoothed towards the mean with
  weight 10) and how many such prefixes there are (log1p). Cross-fitted on the train split (5 folds
  by session: a train prefix's value comes from the other folds' sessions; a leave-one-out value
  leaks the label and is worse than none, which this script's first try showed).

Classifiers: the hurdle's own (standardised logistic regression, L2 1e-3, L-BFGS) on every set, and
a gradient-boosted one (scikit-learn's HistGradientBoostingClassifier, when installed: not a
dependency of mkmsr) on the largest. Prints a table and saves ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mkmsr.data.batching import Batch, make_batch  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.fsutil import write_json  # noqa: E402
from mkmsr.models.mkmsr_rn import repeat_features  # noqa: E402
from rank_split import auc  # noqa: E402

PREPARED = {"Demo": "prepared-drop", "Demo(N)": "prepared-keep", "Taobao": "prepared-taobao",
            **{f"Taobao-{k}": f"prepared-taobao-{k}" for k in range(1, 5)}}
SMOOTH = 10.0
FOLDS = 5


def sequence_features(b: Batch) -> torch.Tensor:
    """(B, 3): log1p count of the last item in the prefix, the run of the last item at its end, and
    log1p steps since the last item new to the session (0 when the last item is new)."""
    m = b.mask
    ar = torch.arange(len(b))
    L = b.items.shape[1]
    pos = torch.arange(L)[None, :].expand_as(b.items)
    last = b.items[ar, b.lengths - 1]
    same = (b.items == last[:, None]) & m
    last_other = torch.where(m & ~same, pos, torch.full_like(pos, -1)).amax(1)
    run = (b.lengths - 1 - last_other).float()
    x = b.items.masked_fill(~m, -1)
    seen_before = ((x[:, :, None] == x[:, None, :]) & (pos[:, :, None] > pos[:, None, :])).any(2)
    last_new = torch.where(m & ~seen_before, pos, torch.full_like(pos, -1)).amax(1)
    return torch.stack([same.sum(1).float().log1p(), run, (b.lengths - 1 - last_new).float().log1p()], 1)


def prefix_table(data: PreparedData, split: str, batch_size: int = 4096) -> dict[str, np.ndarray]:
    """Per prefix of ``split``: hurdle and sequence features, the label (target repeats a session
    item), the last item and last operation, and the session index."""
    arr = data.split(split)
    sess, prefix = arr.samples()
    H, S, Y, last = [], [], [], []
    for lo in range(0, sess.size, batch_size):
        b = make_batch(arr, sess[lo:lo + batch_size], prefix[lo:lo + batch_size])
        ar = torch.arange(len(b))
        H.append(repeat_features(b, data.spec.n_ops))
        S.append(sequence_features(b))
        Y.append(((b.items == b.targets[:, None]) & b.mask).any(1))
        last.append(torch.stack([b.items[ar, b.lengths - 1], b.ops[ar, b.lengths - 1]], 1))
    last_ = torch.cat(last).numpy()
    return {"hurdle": torch.cat(H).numpy(), "sequence": torch.cat(S).numpy(), "y": torch.cat(Y).numpy(),
            "item": last_[:, 0], "op": last_[:, 1], "session": sess}


def encoded(keys_fit: np.ndarray, y_fit: np.ndarray, keys: np.ndarray, n: int, mean: float) -> tuple[np.ndarray, ...]:
    """Smoothed repeat share and log1p count of each of ``keys`` among the fitted prefixes."""
    c = np.bincount(keys_fit, minlength=n).astype(np.float64)
    s = np.bincount(keys_fit, weights=y_fit.astype(np.float64), minlength=n)
    return (s[keys] + SMOOTH * mean) / (c[keys] + SMOOTH), np.log1p(c[keys])


def history_features(train: dict, table: dict, n_items: int, n_ops: int, cross_fit: bool) -> np.ndarray:
    """(n, 3) the last item's and (last item, operation)'s smoothed repeat share among train
    prefixes ending in it, and their log1p count; cross-fitted by train session when ``cross_fit``."""
    mean = float(train["y"].mean())
    k1, k2 = train["item"], train["item"] * n_ops + train["op"]
    q1, q2 = table["item"], table["item"] * n_ops + table["op"]
    if not cross_fit:
        p1, c1 = encoded(k1, train["y"], q1, n_items, mean)
        p2, _ = encoded(k2, train["y"], q2, n_items * n_ops, mean)
        return np.column_stack([p1, p2, c1])
    out = np.empty((q1.size, 3))
    fold = train["session"] % FOLDS
    for f in range(FOLDS):
        fit, ev = fold != f, fold == f
        p1, c1 = encoded(k1[fit], train["y"][fit], q1[ev], n_items, mean)
        p2, _ = encoded(k2[fit], train["y"][fit], q2[ev], n_items * n_ops, mean)
        out[ev] = np.column_stack([p1, p2, c1])
    return out


def logistic(X: np.ndarray, y: np.ndarray):
    """The hurdle's classifier (``MKMSRRN._fit_hurdle``): standardised, L2 1e-3, L-BFGS. Returns a
    scoring function."""
    Xt = torch.from_numpy(X).float()
    mu, sd = Xt.mean(0), Xt.std(0) + 1e-6
    w = torch.zeros(X.shape[1], requires_grad=True)
    b0 = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b0], max_iter=200)
    yt = torch.from_numpy(y).float()

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits((Xt - mu) / sd @ w + b0, yt) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda Z: ((torch.from_numpy(Z).float() - mu) / sd @ w + b0).detach()


def boosted(X: np.ndarray, y: np.ndarray):
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        return None
    clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=0).fit(X, y)
    return lambda Z: torch.from_numpy(clf.predict_proba(Z)[:, 1])


def study(data: PreparedData) -> dict:
    tabs = {s: prefix_table(data, s) for s in ("train", "valid", "test")}
    n_items, n_ops = data.spec.n_items + 1, data.spec.n_ops

    def sets(split: str) -> dict[str, np.ndarray]:
        t = tabs[split]
        hist = history_features(tabs["train"], t, n_items, n_ops, cross_fit=split == "train")
        seq = np.column_stack([t["hurdle"], t["sequence"]])
        return {"hurdle": t["hurdle"], "+sequence": seq, "+item history": np.column_stack([seq, hist])}

    X = {s: sets(s) for s in tabs}
    y = {s: tabs[s]["y"] for s in tabs}
    out: dict = {"repeat_share": {s: round(float(y[s].mean()), 3) for s in tabs},
                 "samples": {s: int(y[s].size) for s in tabs}, "auc": {}}
    for name in X["train"]:
        clfs = [("logistic", logistic(X["train"][name], y["train"]))]
        if name == "+item history":
            gb = boosted(X["train"][name], y["train"])
            if gb is not None:
                clfs.append(("boosted", gb))
        for kind, score in clfs:
            out["auc"][f"{name} ({kind})"] = {s: round(auc(score(X[s][name]), torch.from_numpy(y[s])), 3)
                                             for s in ("valid", "test")}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="a benchmark work folder with prepared-*/ (benchmarks/lead.py)")
    p.add_argument("--datasets", default="Demo,Demo(N),Taobao")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "docs" / "repeat-detect.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    result = {"command": "benchmarks/repeat_detect.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "datasets": {}}
    for label in a.datasets.split(","):
        src = Path(a.work) / PREPARED[label]
        if not (src / "manifest.json").exists():
            print(f"{label}: {src} is not prepared (run benchmarks/lead.py first); skipped")
            continue
        t = time.time()
        r = study(PreparedData(src))
        result["datasets"][label] = r
        print(f"{label}: repeat share test {r['repeat_share']['test']:.3f} ({r['samples']['test']} test prefixes; "
              f"{time.time() - t:.0f} s)")
        print(f"  {'features (classifier)':32s} {'valid AUC':>9s} {'test AUC':>9s}")
        for k, v in r["auc"].items():
            print(f"  {k:32s} {v['valid']:9.3f} {v['test']:9.3f}")
    write_json(Path(a.json), result)
    print(f"saved {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
