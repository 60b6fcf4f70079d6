"""Metrics against a slow brute-force reference and hand-worked cases."""
import math

import numpy as np
import torch

from mkmsr.training.metrics import metrics_from_ranks, target_ranks, topk


def brute_force(scores: np.ndarray, targets: np.ndarray, k: int):
    hits, rrs, ndcgs = [], [], []
    for s, t in zip(scores, targets):
        # pessimistic: every other candidate scoring >= the target is ranked ahead of it
        rank = 1 + sum(1 for j, v in enumerate(s) if j != t and np.isfinite(v) and v >= s[t])
        hits.append(rank <= k)
        rrs.append(1.0 / rank if rank <= k else 0.0)
        ndcgs.append(1.0 / math.log2(rank + 1) if rank <= k else 0.0)
    return 100 * np.mean(hits), 100 * np.mean(rrs), 100 * np.mean(ndcgs)


def test_against_brute_force_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(50, 30)).astype(np.float32)  # many ties on purpose
    scores[:, 0] = -np.inf
    targets = rng.integers(1, 30, size=50)
    ranks = target_ranks(torch.from_numpy(scores), torch.from_numpy(targets)).numpy()
    m = metrics_from_ranks(ranks, ks=(1, 5, 10))
    for k in (1, 5, 10):
        h, r, n = brute_force(scores, targets, k)
        assert math.isclose(m[f"hit@{k}"], h, abs_tol=1e-9)
        assert math.isclose(m[f"mrr@{k}"], r, abs_tol=1e-9)
        assert math.isclose(m[f"ndcg@{k}"], n, abs_tol=1e-9)


def test_hand_worked():
    scores = torch.tensor([[-math.inf, 0.9, 0.5, 0.1],
                           [-math.inf, 0.2, 0.2, 0.3],
                           [-math.inf, 0.1, 0.2, 0.3]])
    ranks = target_ranks(scores, torch.tensor([1, 2, 1])).tolist()
    assert ranks == [1, 3, 3]  # the tie in row 2 counts against the target
    m = metrics_from_ranks(np.array(ranks), ks=(1, 3))
    assert math.isclose(m["hit@1"], 100 / 3)
    assert math.isclose(m["mrr@3"], 100 * (1 + 1 / 3 + 1 / 3) / 3)
    assert math.isclose(m["ndcg@3"], 100 * (1 + 0.5 + 0.5) / 3)


def test_all_equal_scores_rank_last_not_first():
    scores = torch.zeros(1, 101)
    scores[0, 0] = -math.inf
    assert target_ranks(scores, torch.tensor([17])).item() == 100


def test_empty_input_gives_nan_and_topk_is_sorted():
    assert math.isnan(metrics_from_ranks(np.array([]))["hit@20"])
    v, i = topk(torch.tensor([[0.1, 0.5, 0.3, 0.9]]), 2)
    assert i.tolist() == [[3, 1]] and v[0, 0] >= v[0, 1]
