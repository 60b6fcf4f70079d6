"""How much an explicit repeat decision is worth: a held-out check on finished MKM-SR-RN runs.

    .venv/bin/python benchmarks/repeat_hurdle.py --work W [--datasets Demo,Taobao] [--seeds 0,1,2]

``benchmarks/rank_split.py`` shows that no model's scores place the session's items above the new
items more often when the next item repeats one of them (repeat AUC ~0.5), while a logistic
regression on session features (length, distinct items, repeated steps, operations) tells repeat
from first-time targets with AUC 0.61-0.69. This script asks what that signal would buy: for each
run (its checkpoint at the validation-selected epoch, with its calibration), it re-splits the
model's distribution into a hurdle

    p'(i) = q p(i | i in session)  for the session's items,   (1 - q) p(i | i not in session) otherwise,
    q     = sigmoid(T z + b),  z = the regression's logit (fitted on the train split's prefixes),

chooses (T, b) on validation MRR@20, and reports validation and test for the model as trained and
with the hurdle (test only at the validation-chosen point). A diagnosis, not a shipped model.
Saves ``--json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rank_split import PREPARED, session_features  # noqa: E402

from mkmsr.checkpoint import load_checkpoint  # noqa: E402
from mkmsr.data.batching import make_batch  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.fsutil import write_json  # noqa: E402

TEMPERATURES = (0.5, 1.0, 2.0)
SHIFTS = (-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)


def repeat_regression(data: PreparedData):
    """A function (n, f) session features -> (n,) logit of "the next item repeats a session
    item", fitted on the train split's prefixes (L2 1e-3, LBFGS)."""
    X, Y = session_features(data, "train")
    mu, sd = X.mean(0), X.std(0) + 1e-6
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits((X - mu) / sd @ w + b, Y.float()) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda Z: ((Z - mu) / sd @ w + b).detach()


def hit_mrr_sums(lp: torch.Tensor, targets: torch.Tensor, k: int = 20) -> tuple[float, float]:
    """Sums over the batch of Hit@k and MRR@k, full ranking, pessimistic ties (the benchmark's rule)."""
    t = lp.gather(1, (targets - 1)[:, None])
    rank = ((lp > t).sum(1) + (lp == t).sum(1)).float()          # (lp == t) counts the target itself
    hit = rank <= k
    return float(hit.sum()), float((hit.float() / rank).sum())


@torch.no_grad()
def evaluate_hurdle(model, data: PreparedData, split: str, logit_of) -> dict:
    """Hit@20 / MRR@20 of ``model`` on ``split`` as it is ("model") and under the hurdle at every
    (T, b) of the grid, in percent."""
    arr = data.split(split)
    sess, prefix = arr.samples()
    z_all = logit_of(session_features(data, split)[0])
    sums: dict = {}
    for lo in range(0, sess.size, 512):
        b = make_batch(arr, sess[lo:lo + 512], prefix[lo:lo + 512])
        lp = model.logits(b)
        inside = torch.zeros(len(b), lp.shape[1] + 1, dtype=torch.bool).scatter_(1, b.items, b.mask)[:, 1:]
        neg = torch.tensor(float("-inf"), dtype=lp.dtype)
        l_in = torch.logsumexp(torch.where(inside, lp, neg), 1, keepdim=True)
        l_out = torch.logsumexp(torch.where(inside, neg, lp), 1, keepdim=True)
        z = z_all[lo:lo + 512][:, None]
        points = {"model": lp}
        for T in TEMPERATURES:
            for s in SHIFTS:
                q = T * z + s
                points[(T, s)] = torch.where(inside, lp - l_in + F.logsigmoid(q), lp - l_out + F.logsigmoid(-q))
        for key, x in points.items():
            h, m = hit_mrr_sums(x, b.targets)
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += h
            acc[1] += m
    return {key: (100 * h / sess.size, 100 * m / sess.size) for key, (h, m) in sums.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="a benchmark work folder (runs/, prepared-*/)")
    p.add_argument("--datasets", default="Demo,Taobao")
    p.add_argument("--model", default="mkmsr-rn")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "docs" / "repeat-hurdle.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    out: dict = {"command": "benchmarks/repeat_hurdle.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "datasets": {}}
    for label in [d for d in a.datasets.split(",") if d]:
        data = PreparedData(work / PREPARED[label])
        logit_of = repeat_regression(data)
        runs = []
        for seed in [int(s) for s in a.seeds.split(",")]:
            rd = work / "runs" / label / a.model / f"seed{seed}"
            if not (rd / "best").exists():
                continue
            model = load_checkpoint(rd / "best")[0].eval()
            model.fit_statistics(data)
            valid = evaluate_hurdle(model, data, "valid", logit_of)
            test = evaluate_hurdle(model, data, "test", logit_of)
            best = max((k for k in valid if k != "model"), key=lambda k: valid[k][1])
            row = {"seed": seed, "chosen": {"temperature": best[0], "shift": best[1]},
                   "valid_mrr@20": {"model": valid["model"][1], "hurdle": valid[best][1]},
                   "test": {"model": {"hit@20": test["model"][0], "mrr@20": test["model"][1]},
                            "hurdle": {"hit@20": test[best][0], "mrr@20": test[best][1]}}}
            runs.append(row)
            print(f"{label} seed {seed}: valid MRR@20 {row['valid_mrr@20']['model']:.2f} -> "
                  f"{row['valid_mrr@20']['hurdle']:.2f} (T {best[0]}, b {best[1]}); test Hit@20 / MRR@20 "
                  f"{test['model'][0]:.2f} / {test['model'][1]:.2f} -> {test[best][0]:.2f} / {test[best][1]:.2f}",
                  flush=True)
        out["datasets"][label] = runs
    write_json(Path(a.json), out)
    print("saved", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
