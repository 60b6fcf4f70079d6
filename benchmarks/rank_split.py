"""Where the ranks go: for the finished runs of a benchmark work folder (``benchmarks/table2.py`` /
``lead.py``), the test rank of every target split into the part the model's *explore* ranking
decides and the part its *repeat* decision decides (not a protocol of the benchmark: a reading of
its selected models).

    .venv/bin/python benchmarks/rank_split.py --work W [--datasets Demo,Taobao] [--seeds 0,1,2,3,4]

For each run (its checkpoint at the validation-selected epoch, re-ranked on test exactly as the
benchmark did; the script checks the ranks against the run's saved ``test_ranks.npz``):

* ``first`` / ``first outside``: first-time targets (not in their session) ranked among all items,
  and among the items *not* in the session (the model's explore ranking alone);
* ``above``: the mean number of the session's own items ranked above a first-time target (what
  the repeat decision costs first-time targets; rank = rank outside + above);
* ``repeat`` / ``repeat inside``: repeat targets ranked among all items, and among their
  session's items (the repeat ordering alone).

And how well each model's scores tell repeat from first-time targets (``repeat AUC``): the AUC,
over the test prefixes, of the margin between the best-scored session item and the best-scored
item outside the session (1: the model puts the session's items above exactly when the next item
repeats; 0.5: its placement of them carries no information about it); for a model with a learned
repeat gate (MKM-SR-RN) also the AUC of the gate's P(repeat) itself (``gate AUC``).

And per dataset, how predictable "the next item repeats a session item" is at all: a logistic
regression on session features (length, distinct items, share of repeated steps, whether the last
item was a repeat, the last operation, the share of each operation) fitted on the train split's
prefixes, its AUC on validation and test (0.5: a coin; 1: the repeat decision could be exact).

Prints a table and saves ``--json`` (mean ± std over seeds per model).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mkmsr.checkpoint import load_checkpoint  # noqa: E402
from mkmsr.data.batching import make_batch  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.fsutil import write_json  # noqa: E402
from mkmsr.models.mkmsr_rn import repeat_features  # noqa: E402
from mkmsr.training.benchmark import mean_std  # noqa: E402
from mkmsr.training.evaluate import metrics_from_counts, split_rank_counts  # noqa: E402

PREPARED = {"Demo": "prepared-drop", "Demo(N)": "prepared-keep", "Taobao": "prepared-taobao"}
MODELS = "s-pop,stan-remind,sasrec,gcsan,repeatnet,core,mgnn-spred,mkmsr+,mkmsr-rn"
COLUMNS = (("hit@20", "Hit@20"), ("mrr@20", "MRR@20"), ("first_mrr@20", "first MRR"),
           ("first_outside_hit@20", "first outside Hit"), ("first_outside_mrr@20", "first outside MRR"),
           ("first_session_above", "above"), ("repeat_mrr@20", "repeat MRR"),
           ("repeat_inside_mrr@20", "repeat inside MRR"), ("repeat_margin_auc", "repeat AUC"),
           ("repeat_gate_auc", "gate AUC"))


def session_features(data: PreparedData, split: str, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, f) features of every prefix of ``split`` and (n,) bool: its target repeats a session item."""
    arr = data.split(split)
    sess, prefix = arr.samples()
    X, Y = [], []
    for lo in range(0, sess.size, batch_size):
        b = make_batch(arr, sess[lo:lo + batch_size], prefix[lo:lo + batch_size])
        X.append(repeat_features(b, data.spec.n_ops))
        Y.append(((b.items == b.targets[:, None]) & b.mask).any(1))
    return torch.cat(X), torch.cat(Y)


def auc(score: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve (ties of ``score`` count half)."""
    s, y = score.double().numpy(), y.numpy()
    order = np.argsort(s, kind="stable")
    ranks = np.empty(s.size)
    sv = s[order]
    # average ranks over ties
    _, start, counts = np.unique(sv, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)) if n_pos and n_neg else float("nan")


def repeat_predictability(data: PreparedData) -> dict:
    """AUC on validation and test of a logistic regression on :func:`session_features` fitted on
    the train split's prefixes (L2 1e-3, LBFGS), and the repeat share of each split."""
    Xtr, Ytr = session_features(data, "train")
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    w = torch.zeros(Xtr.shape[1], requires_grad=True)
    b0 = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b0], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits((Xtr - mu) / sd @ w + b0, Ytr.float()) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    out = {}
    for split, (X, Y) in (("train", (Xtr, Ytr)), ("valid", session_features(data, "valid")),
                          ("test", session_features(data, "test"))):
        with torch.no_grad():
            out[split] = {"auc": round(auc((X - mu) / sd @ w, Y), 3), "repeat_share": round(float(Y.float().mean()), 3)}
    return out


@torch.no_grad()
def repeat_decision(model, data: PreparedData, split: str, max_len: int | None, batch_size: int = 512) -> dict:
    """AUC (repeat vs first-time targets of ``split``) of the margin max score over the session's
    items − max score outside them, and, for a model with a ``repeat`` gate component, of the gate's
    log P(repeat) (else None)."""
    arr = data.split(split)
    sess, prefix = arr.samples()
    margin, gate, Y = [], [], []
    comps = getattr(model, "components", [])
    for lo in range(0, sess.size, batch_size):
        b = make_batch(arr, sess[lo:lo + batch_size], prefix[lo:lo + batch_size], max_len)
        x = model.logits(b)                                                     # (B, n)
        inside = torch.zeros(len(b), x.shape[1] + 1, dtype=torch.bool).scatter_(1, b.items, b.mask)[:, 1:]
        neg = torch.tensor(float("-inf"), dtype=x.dtype)
        margin.append(torch.where(inside, x, neg).amax(1) - torch.where(inside, neg, x).amax(1))
        Y.append(((b.items == b.targets[:, None]) & b.mask).any(1))
        if "repeat" in comps:
            V = model.scoring_vectors()
            gate.append(model._parts(b, V, own_excluded=False)["log_pi"][:, comps.index("repeat")])
    Y = torch.cat(Y)
    m = torch.cat(margin).nan_to_num(nan=0.0, posinf=1e30, neginf=-1e30)
    return {"repeat_margin_auc": auc(m, Y), "repeat_gate_auc": auc(torch.cat(gate), Y) if gate else None}


def run_metrics(rd: Path, data: PreparedData, threads: int) -> dict:
    model = load_checkpoint(rd / "best")[0].eval()
    model.fit_statistics(data)
    cfg = json.loads((rd / "config.json").read_text()) if (rd / "config.json").exists() else {}
    max_len = (cfg.get("train_config") or {}).get("max_len")
    c = split_rank_counts(model, data, "test", 512, max_len)
    saved = rd / "test_ranks.npz"
    if saved.exists():
        z = np.load(saved)
        if not (np.array_equal(z["greater"], c["greater"]) and np.array_equal(z["ties"], c["ties"])):
            raise SystemExit(f"{rd}: re-ranked test differs from the run's saved test_ranks.npz "
                             f"({int((z['greater'] != c['greater']).sum())} samples): not the benchmark's model")
    return {**metrics_from_counts(c, data.item_train_count), **repeat_decision(model, data, "test", max_len)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="a benchmark work folder (runs/, prepared-*/)")
    p.add_argument("--datasets", default="Demo,Demo(N),Taobao")
    p.add_argument("--models", default=MODELS)
    p.add_argument("--seeds", default="0,1,2,3,4", help="count-based models have seed 0 only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "docs" / "rank-split.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    seeds = [int(s) for s in a.seeds.split(",")]
    res: dict = {"command": "benchmarks/rank_split.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "datasets": {}}
    for label in [d for d in a.datasets.split(",") if d]:
        src = work / PREPARED[label]
        if not (src / "manifest.json").exists():
            print(f"{label}: no prepared data in {src}, skipped")
            continue
        data = PreparedData(src)
        pred = repeat_predictability(data)
        print(f"\n{label}: repeat share train {pred['train']['repeat_share']:.3f} / valid "
              f"{pred['valid']['repeat_share']:.3f} / test {pred['test']['repeat_share']:.3f}; repeat predictable "
              f"from session features: AUC train {pred['train']['auc']:.3f}, valid {pred['valid']['auc']:.3f}, "
              f"test {pred['test']['auc']:.3f}", flush=True)
        print(f"{'model':14s} runs " + " ".join(f"{h:>18s}" for _, h in COLUMNS), flush=True)
        rows = {}
        for name in [m for m in a.models.split(",") if m]:
            per = []
            for seed in seeds:
                rd = work / "runs" / label / name / f"seed{seed}"
                if (rd / "best").exists():
                    per.append(run_metrics(rd, data, a.threads))
            if not per:
                print(f"{name:14s} no finished run, skipped", flush=True)
                continue
            rows[name] = {"runs": len(per), **{k: mean_std([m[k] for m in per]) for k, _ in COLUMNS}}
            print(f"{name:14s} {len(per):4d} " + " ".join(f"{rows[name][k][0]:9.2f} ± {rows[name][k][1]:5.2f}"
                                                         for k, _ in COLUMNS), flush=True)
        res["datasets"][label] = {"repeat_predictability": pred, "models": rows,
                                  "test_samples": int(data.split("test").samples()[0].size)}
    write_json(Path(a.json), res)
    print("saved", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
