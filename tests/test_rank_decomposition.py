"""Where the ranks go: session items above a target, first-time targets ranked outside their
session, repeat targets ranked inside it (``mkmsr.training.evaluate``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mkmsr.data.dataset import PreparedData
from mkmsr.models import build_model
from mkmsr.training.evaluate import evaluate, metrics_from_counts, session_items_above, split_rank_counts


def _brute_above(scores, items, lengths, targets):
    out = []
    for b in range(scores.shape[0]):
        t = scores[b, targets[b]]
        seen = {int(i) for i in items[b, :lengths[b]]} - {int(targets[b])}
        out.append(sum(1 for i in seen if not scores[b, i] < t))       # >= or NaN
    return out


def test_session_items_above_by_hand():
    # items 1..6 (column 0 = padding); session 0 holds item 2 twice: it counts once
    scores = torch.tensor([[float("-inf"), 0.1, 0.9, 0.5, 0.5, 0.2, 0.0],
                           [float("-inf"), 0.3, float("nan"), 0.3, 0.8, 0.1, 0.9]])
    items = torch.tensor([[2, 3, 2, 5], [1, 2, 6, 0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    targets = torch.tensor([4, 1])
    # row 0: target 4 (0.5): 2 (0.9) above, 3 (0.5) tied -> counts, 5 (0.2) below -> 2
    # row 1: target 1 (0.3): 2 (NaN) counts, 6 (0.9) above -> 2; the padding never counts
    assert session_items_above(scores, items, mask, targets).tolist() == [2, 2]
    # the target itself, when it is in the session (a repeat), is not counted
    assert session_items_above(scores, items, mask, torch.tensor([2, 6])).tolist() == [0, 1]


def test_session_items_above_against_brute_force():
    g = torch.Generator().manual_seed(3)
    B, L, N = 64, 9, 15
    scores = torch.randint(0, 5, (B, N + 1), generator=g).float()      # many ties
    scores[:, 0] = float("-inf")
    items = torch.randint(1, N + 1, (B, L), generator=g)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    items = items.masked_fill(~mask, 0)
    targets = torch.randint(1, N + 1, (B,), generator=g)
    assert session_items_above(scores, items, mask, targets).tolist() == _brute_above(scores, items, lengths, targets)


def test_decomposition_metrics_by_hand():
    # three samples: a repeat ranked 2nd overall with 1 session item above; a first-time target
    # ranked 5th with 3 session items above (2nd among the others); one ranked 30th with none
    c = {"greater": np.array([1, 4, 29]), "ties": np.zeros(3, dtype=np.int64), "ranks": np.array([2, 5, 30]),
         "targets": np.array([1, 2, 3]), "repeat": np.array([True, False, False]),
         "inside_above": np.array([1, 3, 0])}
    m = metrics_from_counts(c, np.ones(4, dtype=np.int64), ks=(20,))
    assert m["repeat_inside_mrr@20"] == pytest.approx(50.0)
    assert m["first_outside_hit@20"] == pytest.approx(50.0)
    assert m["first_outside_mrr@20"] == pytest.approx(100.0 * (1 / 2) / 2)
    assert m["first_mrr@20"] == pytest.approx(100.0 * (1 / 5) / 2)
    assert m["first_session_above"] == pytest.approx(1.5)
    # counts from before the decomposition existed still give the rest
    old = {k: v for k, v in c.items() if k != "inside_above"}
    assert "first_outside_mrr@20" not in metrics_from_counts(old, np.ones(4, dtype=np.int64), ks=(20,))


def test_evaluate_reports_the_decomposition(synthetic_data):
    data = PreparedData(synthetic_data)
    m = build_model("s-pop", data.spec)
    m.fit_statistics(data)
    r = evaluate(m, data, "test")
    c = split_rank_counts(m, data, "test")
    rep = c["repeat"]
    assert c["inside_above"].shape == c["ranks"].shape
    # S-POP puts every session item above every other item: a repeat target's rank is its rank
    # among the session's items, and every session item sits above a first-time target
    assert np.array_equal(c["inside_above"][rep] + 1, c["ranks"][rep])
    assert r["repeat_inside_mrr@20"] == pytest.approx(r["repeat_mrr@20"])
    assert r["first_outside_hit@20"] >= r["first_hit@20"]
    assert r["first_session_above"] > 0
