"""Regression tests of issue 8 (correctness and fairness before the next comparisons):
lambda_1 acts in the default configuration, NaN-safe ranking, one test filter, random-tie
expectations, the reminder option of the session-kNN models, the paper's adjacency option."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from mkmsr.data.batching import Batch
from mkmsr.data.dataset import PreparedData
from mkmsr.data.prepare import PrepareConfig, prepare
from mkmsr.data.sources import ColumnMap, read_generic
from mkmsr.errors import TrainingDiverged
from mkmsr.models import build_model
from mkmsr.models.counting import remind
from mkmsr.models.layers import session_graph
from mkmsr.training.evaluate import evaluate, repeat_mask
from mkmsr.training.metrics import NonFiniteScoreError, expected_metrics, metrics_from_ranks, rank_counts, target_ranks
from mkmsr.training.train import TrainConfig, Trainer


# ---- 1. lambda_1 acts -------------------------------------------------------------------------

def _item_table_after(data, kg_weight, **kw):
    tr = Trainer(PreparedData(data), "mkmsr", {"dim": 16},
                 TrainConfig(epochs=1, batch_size=64, seed=5, kg_weight=kg_weight, **kw), None, progress=False)
    tr.fit()
    return tr.model.item_embedding.weight.detach().clone()


def test_lambda1_changes_the_knowledge_update_in_the_default_configuration(synthetic_data):
    """The same seed and data with lambda_1 = 1e-5 vs 1e-1 must give clearly different item
    tables by default (a failing test on the old default, a knowledge step with its own Adam)."""
    assert TrainConfig().kg_optimizer == "shared"
    lo, hi = _item_table_after(synthetic_data, 1e-5), _item_table_after(synthetic_data, 1e-1)
    again = _item_table_after(synthetic_data, 1e-5)
    assert torch.equal(lo, again)                       # deterministic: the difference is lambda_1's
    assert (hi - lo).norm() / lo.norm() > 0.02


def test_own_adam_for_knowledge_steps_is_scale_invariant(synthetic_data):
    """The documented reason for the default: with its own Adam, lambda_1 barely matters."""
    lo = _item_table_after(synthetic_data, 1e-5, kg_optimizer="sparse")
    hi = _item_table_after(synthetic_data, 1e-1, kg_optimizer="sparse")
    shared_lo = _item_table_after(synthetic_data, 1e-5)
    shared_hi = _item_table_after(synthetic_data, 1e-1)
    assert (hi - lo).norm() < 0.25 * (shared_hi - shared_lo).norm()


# ---- 2. NaN-safe ranking ------------------------------------------------------------------------

def test_nan_target_score_raises():
    s = torch.tensor([[-math.inf, 1.0, float("nan"), 0.5]])
    with pytest.raises(NonFiniteScoreError, match="non-finite target score"):
        target_ranks(s, torch.tensor([2]))
    with pytest.raises(NonFiniteScoreError):
        target_ranks(torch.tensor([[-math.inf, math.inf, 0.0]]), torch.tensor([1]))


def test_nan_and_posinf_competitors_rank_above_the_target():
    s = torch.tensor([[-math.inf, 1.0, float("nan"), 0.5, math.inf, -math.inf, 2.0]])
    # above: nan, +inf, 2.0 -> rank 4; the -inf columns are not candidates
    assert target_ranks(s, torch.tensor([1])).item() == 4
    g, e = rank_counts(s, torch.tensor([3]))
    assert (g.item(), e.item()) == (4, 0)


class _NaNModel(torch.nn.Module):
    trainable = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def score(self, batch):
        return torch.full_like(self.inner.score(batch), float("nan"))


def test_evaluation_refuses_a_diverged_model(synthetic_data):
    data = PreparedData(synthetic_data)
    m = build_model("mkmsr", data.spec, {"dim": 8})
    with pytest.raises(NonFiniteScoreError):
        evaluate(_NaNModel(m), data, "valid")


def test_training_stops_with_a_clear_message_when_it_diverges(synthetic_data):
    with pytest.raises(TrainingDiverged, match="diverged"):
        Trainer(PreparedData(synthetic_data), "mkmsr", {"dim": 8},
                TrainConfig(epochs=2, batch_size=64, lr=1e30), None, progress=False).fit()


# ---- 3. one test filter -------------------------------------------------------------------------

def test_test_is_filtered_against_the_fit_split_like_validation(tmp_path):
    """An item seen only in validation is dropped from test as from validation (cold-start drop)."""
    rows = []
    t = 0.0
    for s in range(40):                                    # train period: items a, b
        for it in ("a", "b", "a"):
            rows.append((f"tr{s}", it, "v", t)); t += 1
    for s in range(6):                                     # validation (latest 10%): item v appears
        for it in ("a", "v", "b"):
            rows.append((f"va{s}", it, "v", t)); t += 1
    for s in range(6):                                     # test: holds v
        for it in ("a", "v", "b"):
            rows.append((f"te{s}", it, "v", t)); t += 1
    ev = pl.DataFrame(rows, schema=["session_id", "item_id", "operation", "timestamp"], orient="row")
    ev.write_csv(tmp_path / "ev.csv")
    cols = ColumnMap(item="item_id", op="operation", time="timestamp", session="session_id")
    test_ev = ev.filter(pl.col("session_id").str.starts_with("te"))
    test_ev.write_csv(tmp_path / "test.csv")
    ev.filter(~pl.col("session_id").str.starts_with("te")).write_csv(tmp_path / "train.csv")
    raw = read_generic(tmp_path / "train.csv", cols, test_events=tmp_path / "test.csv")
    fit = PreparedData(prepare(raw, tmp_path / "fit", PrepareConfig(valid_fraction=0.13)))
    period = PreparedData(prepare(raw, tmp_path / "period", PrepareConfig(valid_fraction=0.13, test_filter="period")))
    v = fit.item_index(["v"])[0] if hasattr(fit, "item_index") else None
    # fit filter: no test target is an item the fit split never saw, as in validation
    for d in (fit,):
        for split in ("valid", "test"):
            arr = d.split(split)
            assert (d.item_train_count[arr.items] > 0).all(), split
    # the older rule keeps v in test: a target no model trained on
    arr = period.split("test")
    assert (period.item_train_count[arr.items] == 0).any()
    assert fit.manifest["splits"]["test"]["cold_target_samples"] == 0
    del v


# ---- 4. ties and reminders ------------------------------------------------------------------------

def test_expected_metrics_under_random_ties_match_a_brute_force_average():
    rng = np.random.default_rng(0)
    greater = rng.integers(0, 30, size=200)
    ties = rng.integers(0, 15, size=200)
    got = expected_metrics(greater, ties, ks=(5, 20))
    # brute force: average the metrics of every equally likely rank
    acc = {k: 0.0 for k in got}
    for g, e in zip(greater, ties):
        ranks = np.arange(g + 1, g + e + 2)
        m = metrics_from_ranks(ranks, ks=(5, 20))
        for k in acc:
            acc[k] += m[k] / len(greater)
    for k in got:
        assert got[k] == pytest.approx(acc[k], abs=1e-9), k
    # without ties expected == pessimistic
    assert expected_metrics(greater, np.zeros_like(ties)) == pytest.approx(metrics_from_ranks(greater + 1))


def test_evaluate_reports_random_tie_and_subset_metrics(synthetic_data):
    data = PreparedData(synthetic_data)
    m = build_model("s-pop", data.spec)
    m.fit_statistics(data)
    r = evaluate(m, data, "test")
    for key in ("rt_hit@20", "rt_mrr@20", "repeat_hit@20", "first_hit@20", "cold_first_hit@20"):
        assert key in r
    assert r["rt_hit@20"] >= r["hit@20"]                    # random ties never rank worse on average
    assert r["tied_samples"] > 0                            # S-POP ties every item outside the session
    assert r["repeat_samples"] + (r["samples"] - r["repeat_samples"]) == r["samples"]
    # S-POP can only hit repeats
    assert r["first_hit@20"] <= r["rt_hit@20"] + 1e-9


def test_repeat_mask_by_hand():
    items = np.array([5, 6, 5, 7, 8, 8])
    offsets = np.array([0, 4, 6])
    # session 0: prefixes 1..3 -> targets 6 (no), 5 (yes), 7 (no); session 1: prefix 1 -> 8 (yes)
    got = repeat_mask(items, offsets, np.array([0, 0, 0, 1]), np.array([1, 2, 3, 1]))
    assert got.tolist() == [False, True, False, True]


def test_remind_boosts_session_items_and_keeps_order_without_boost():
    sc = torch.tensor([[0.0, 4.0, 2.0, 0.0, 1.0]])
    pos = torch.tensor([[0, 0, 0, 2, 1]])                  # items 3 and 4 are in the session
    out = remind(sc, pos, 1.0)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, 0.5, 1.0, 1.25]]))
    assert torch.equal(torch.argsort(remind(sc, pos, 0.0), descending=True, stable=True),
                       torch.argsort(sc, descending=True, stable=True))


@pytest.mark.parametrize("name", ["stan-remind", "v-sknn-remind"])
def test_session_knn_reminder_is_tuned_on_validation(synthetic_data, name, tmp_path):
    tr = Trainer(PreparedData(synthetic_data), name, {}, TrainConfig(), tmp_path / name, progress=False)
    m = tr.fit()
    tuned = m["tuned_on_validation"]
    assert tuned["repeat_boost"] in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
    curve = tuned["valid_mrr@20_by_boost"]
    assert max(curve.values()) == pytest.approx(m["valid"]["mrr@20"])
    assert m["test_best_over_epochs"].get("not_applicable")
    # the saved checkpoint carries the chosen boost
    from mkmsr.checkpoint import load_checkpoint
    model, _ = load_checkpoint(tmp_path / name)
    assert model.config.repeat_boost == tuned["repeat_boost"]


# ---- 7. the paper's adjacency -------------------------------------------------------------------

def test_paper_adjacency_uses_one_weight_per_edge():
    # session a -> b -> a -> c: out(a) = 2 edges (a->b, a->c), in(a) = 1 (b->a)
    items = torch.tensor([[1, 2, 1, 3]])
    lengths = torch.tensor([4])
    g = session_graph(items, lengths, adjacency="paper")
    assert torch.allclose(g.A_in, g.A_out.transpose(1, 2))
    s = session_graph(items, lengths)                       # SR-GNN: A_in rows sum to 1 per entered node
    assert torch.allclose(s.A_in.sum(dim=2)[0, :3], torch.tensor([1.0, 1.0, 1.0]))
    assert not torch.allclose(s.A_in, g.A_in)
    with pytest.raises(ValueError, match="adjacency"):
        session_graph(items, lengths, adjacency="nope")


# ---- 8. paired verdicts over seeds x samples -------------------------------------------------------

def test_paired_bootstrap_spread_grows_with_seed_variance():
    from mkmsr.training.benchmark import paired_bootstrap, per_sample_metric
    rng = np.random.default_rng(1)
    base = rng.random(400) * 10
    a_same = np.stack([base + 1.0 for _ in range(5)])            # A = B + 1 for every seed
    b = base[None, :]
    r = paired_bootstrap(a_same, b, n_boot=500)
    assert r["mean"] == pytest.approx(1.0) and r["se"] < 1e-9     # no spread: constant difference
    noisy = np.stack([base + 1.0 + rng.normal(0, 3.0) for _ in range(5)])   # seed-level offsets
    r2 = paired_bootstrap(noisy, b, n_boot=500)
    assert r2["se"] > 0.5 and r2["lo"] < r2["mean"] < r2["hi"]
    with pytest.raises(ValueError, match="same samples"):
        paired_bootstrap(a_same, base[None, :10])
    assert per_sample_metric(np.array([0, 19, 20]), np.array([0, 0, 0]), "hit@20").tolist() == [100.0, 100.0, 0.0]
    assert per_sample_metric(np.array([1]), np.array([2]), "mrr@20").tolist() == [25.0]


def test_partner_is_chosen_by_validation_not_test():
    from mkmsr.training.benchmark import best_by_validation
    rows = {"a": {"valid": {"mrr@20": (10.0, 0.0)}, "selected": {"mrr@20": (50.0, 0.0)}},
            "b": {"valid": {"mrr@20": (12.0, 0.0)}, "selected": {"mrr@20": (5.0, 0.0)}}}
    assert best_by_validation(rows, ["a", "b"], "mrr@20") == "b"
