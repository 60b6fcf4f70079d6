"""What an explicit knowledge prior on new items is worth: the data, then a held-out check on
finished runs.

    .venv/bin/python benchmarks/knowledge_prior.py --work W [--datasets Demo,Demo(N),Taobao]
        [--models mkmsr-rn-no-prior,core-kg] [--seeds 0,1,2,3,4] [--json docs/knowledge-prior.json]

1. **The data.** For each prepared dataset of the work folder (``benchmarks/lead.py``'s), the share
   of first-time test targets (not in their session) that share a value of each knowledge relation
   (brand, shop, category, launch month...) with an item of their session, and the median number of
   catalogue items that share one with the session (how narrow the hint is).
2. **Held-out check.** For each finished run of ``--models`` (its checkpoint at the
   validation-selected epoch, with its own calibration), the prior of MKM-SR-RN's
   ``knowledge_prior`` is added on top of the model's distribution,

       log p'(i) = log p(i) + w k(s, i) - c   for the items outside the session (their mass kept),

   k from :func:`mkmsr.models.mkmsr_rn.knowledge_prior_scores`, (w, gamma) chosen on validation
   MRR@20 over MKM-SR-RN's calibration grid, and test reported for the model as is and with the
   prior at that point. On ``mkmsr-rn-no-prior`` this is the prior as MKM-SR-RN ships it, other
   options held; on ``core-kg`` (or any row) it asks whether the prior alone, bolted onto another
   model, would do as much. Test chooses nothing. Saves ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rank_split import PREPARED  # noqa: E402

from mkmsr.checkpoint import load_checkpoint  # noqa: E402
from mkmsr.data.batching import make_batch  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.fsutil import write_json  # noqa: E402
from mkmsr.models.mkmsr_rn import knowledge_prior_scores, logsumexp  # noqa: E402

WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
IDFS = (0.0, 1.0, 2.0, 3.0)


def triplets(data: PreparedData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(item, relation, value) index tensors of the knowledge graph and the number of values."""
    kg = torch.from_numpy(np.array(data.kg, dtype=np.int64))
    n = data.spec.n_items
    return kg[:, 0], kg[:, 1], kg[:, 2] - (n + 1), max(data.spec.n_entities - n - 1, 1)


def relation_shares(data: PreparedData, split: str = "test") -> dict:
    """Per relation: the share of first-time targets of ``split`` sharing a value with their
    session, and the median number of items that share a value with the session."""
    arr = data.split(split)
    sess, prefix = arr.samples()
    b = make_batch(arr, sess, prefix)
    n = data.spec.n_items
    item, rel, val, n_val = triplets(data)
    inside = torch.zeros(len(b), n + 1, dtype=torch.bool).scatter_(1, b.items, b.mask)
    first = ~inside.gather(1, b.targets[:, None]).squeeze(1)
    S = inside.float()
    S[:, 0] = 0.0
    rels = data.relations
    names = dict(zip(rels["relation_idx"].to_list(), rels["relation"].to_list()))
    out = {"first_time_targets": int(first.sum())}
    for r in sorted(set(rel.tolist())):
        keep = rel == r
        A = torch.sparse_coo_tensor(torch.stack([item[keep], val[keep]]), torch.ones(int(keep.sum())),
                                    (n + 1, n_val), check_invariants=False).coalesce()
        has = torch.sparse.mm(A.t(), S.T).T > 0                                 # (B, n_val) session has a
        tgt = torch.sparse.mm(A.t(), torch.nn.functional.one_hot(b.targets, n + 1).float().T).T > 0
        shared = (has & tgt).any(1)
        cands = (torch.sparse.mm(A, has.float().T).T > 0).sum(1).float()       # items sharing one
        name = names.get(r, str(r))
        out[name] = {"share_of_first_time": round(float(shared[first].float().mean()), 3),
                     "median_items_sharing": float(cands[first].median())}
    return out


def hit_mrr(lp: torch.Tensor, targets: torch.Tensor, k: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row hit@k and reciprocal rank@k of the target (pessimistic ties)."""
    ts = lp.gather(1, (targets - 1)[:, None])
    rank = ((lp > ts).sum(1) + (lp == ts).sum(1)).float()
    hit = (rank <= k).float()
    return hit, hit / rank


def with_prior(lp: torch.Tensor, k: torch.Tensor, inside: torch.Tensor, w: float) -> torch.Tensor:
    """``lp`` with + w k on the items outside the session, their total mass kept (as
    ``MKMSRRN._with_knowledge_prior``)."""
    if w <= 0:
        return lp
    neg = torch.full_like(lp, float("-inf"))
    x = torch.where(inside, neg, lp + w * k)
    l_old, l_new = logsumexp(torch.where(inside, neg, lp)), logsumexp(x)
    ok = torch.isfinite(l_old) & torch.isfinite(l_new)
    return torch.where(inside | ~ok, lp, x - l_new + l_old)


@torch.no_grad()
def evaluate_prior(model, data: PreparedData, split: str, batch_size: int = 512) -> dict:
    """{(w, gamma): (Hit@20, MRR@20)} on ``split`` for every grid point (w = 0: the model as is)."""
    arr = data.split(split)
    sess, prefix = arr.samples()
    item, _, val, n_val = triplets(data)
    n = data.spec.n_items
    sums: dict = {}
    for lo in range(0, sess.size, batch_size):
        b = make_batch(arr, sess[lo:lo + batch_size], prefix[lo:lo + batch_size])
        lp = model.logits(b)
        inside = torch.zeros(len(b), n + 1, dtype=torch.bool).scatter_(1, b.items, b.mask)[:, 1:]
        for g in IDFS:
            k = knowledge_prior_scores(b, item, val, n, n_val, idf=g)
            for w in WEIGHTS:
                if w == 0 and g:
                    continue
                h, m = hit_mrr(with_prior(lp, k, inside, w), b.targets)
                acc = sums.setdefault((w, g), [0.0, 0.0])
                acc[0] += float(h.sum())
                acc[1] += float(m.sum())
    return {key: (100 * h / sess.size, 100 * m / sess.size) for key, (h, m) in sums.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--datasets", default="Demo,Demo(N),Taobao")
    p.add_argument("--models", default="mkmsr-rn-no-prior,core-kg")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=str(ROOT / "docs" / "knowledge-prior.json"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.work)
    seeds = [int(s) for s in a.seeds.split(",") if s]
    out: dict = {"command": "benchmarks/knowledge_prior.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "grid": {"prior_weight": list(WEIGHTS), "prior_idf": list(IDFS)}, "datasets": {}}
    for label in [d for d in a.datasets.split(",") if d]:
        prep = work / PREPARED[label]
        if not (prep / "manifest.json").exists():
            print(f"{label}: no prepared data at {prep}, skipped")
            continue
        data = PreparedData(prep)
        if not len(data.kg):
            print(f"{label}: no knowledge graph, skipped")
            continue
        shares = relation_shares(data)
        print(f"{label}: first-time test targets sharing a value with their session: " + ", ".join(
            f"{r} {v['share_of_first_time']:.1%} (median {v['median_items_sharing']:.0f} items)"
            for r, v in shares.items() if isinstance(v, dict)), flush=True)
        rows: dict = {}
        for model_name in [m for m in a.models.split(",") if m]:
            runs = []
            for seed in seeds:
                rd = work / "runs" / label / model_name / f"seed{seed}"
                if not (rd / "best").exists():
                    continue
                model = load_checkpoint(rd / "best")[0].eval()
                model.fit_statistics(data)
                valid = evaluate_prior(model, data, "valid")
                test = evaluate_prior(model, data, "test")
                best = max(valid, key=lambda key: (valid[key][1], -key[0]))     # ties: the smaller weight
                runs.append({"seed": seed, "chosen": {"prior_weight": best[0], "prior_idf": best[1]},
                             "valid": {"model": valid[(0.0, 0.0)], "prior": valid[best]},
                             "test": {"model": test[(0.0, 0.0)], "prior": test[best]}})
                r = runs[-1]
                print(f"  {model_name} seed {seed}: chosen w {best[0]:g} gamma {best[1]:g}; test Hit@20 / MRR@20 "
                      f"{r['test']['model'][0]:.2f} / {r['test']['model'][1]:.2f} -> "
                      f"{r['test']['prior'][0]:.2f} / {r['test']['prior'][1]:.2f}", flush=True)
            if runs:
                mean = {part: [float(np.mean([r["test"][part][i] for r in runs])) for i in (0, 1)]
                        for part in ("model", "prior")}
                gain = [float(np.mean([r["test"]["prior"][i] - r["test"]["model"][i] for r in runs])) for i in (0, 1)]
                sd = [float(np.std([r["test"]["prior"][i] - r["test"]["model"][i] for r in runs], ddof=1))
                      if len(runs) > 1 else 0.0 for i in (0, 1)]
                rows[model_name] = {"runs": runs, "test_mean": mean, "test_gain_mean": gain, "test_gain_std": sd}
                print(f"  {model_name}: {len(runs)} runs, test {mean['model'][0]:.2f} / {mean['model'][1]:.2f} -> "
                      f"{mean['prior'][0]:.2f} / {mean['prior'][1]:.2f} (gain {gain[0]:+.2f} ± {sd[0]:.2f} / "
                      f"{gain[1]:+.2f} ± {sd[1]:.2f} over seeds)", flush=True)
        out["datasets"][label] = {"relations": shares, "models": rows}
    write_json(Path(a.json), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
