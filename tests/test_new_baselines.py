"""The distinctive equations of SASRec, GC-SAN, RepeatNet, CORE and MGNN-SPred (issue 9 item 2),
checked on small random models; tests/test_model_contract.py runs the shared contract on them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mkmsr.data.batching import Batch, batch_from_sequences
from mkmsr.data.dataset import DatasetSpec, PreparedData, SplitArrays
from mkmsr.models import build_model
from mkmsr.models.mgnnspred import neighbor_table
from mkmsr.serving.recommend import Recommender
from mkmsr.training.train import TrainConfig, Trainer

SPEC = DatasetSpec(n_items=20, n_entities=21, n_ops=4, n_relations=0)


def model(name, **overrides):
    torch.manual_seed(0)
    return build_model(name, SPEC, {"dim": 16, **overrides}).eval()


# ---- RepeatNet -------------------------------------------------------------------------------

def test_repeatnet_mixture_is_a_distribution_with_repeat_mass_on_session_items():
    m = model("repeatnet", hidden=16)
    batch = batch_from_sequences([[3, 5, 3], [7], [1, 2, 4, 2]], [[1, 1, 1], [1], [1, 2, 1, 3]])
    with torch.no_grad():
        s = m.score(batch)                                                   # (B, n + 1)
        c = m.components(batch)
    assert torch.isinf(s[:, 0]).all() and torch.isfinite(s[:, 1:]).all()
    assert torch.allclose(s[:, 1:].exp().sum(1), torch.ones(3), atol=1e-5)    # sum_i P(i) = 1
    present = c["present"]
    assert present[0, [3, 5]].all() and present[0].sum() == 2 and not present[:, 0].any()
    # the repeat decoder puts all its mass on the session's items ...
    assert torch.allclose(c["repeat"].sum(1), torch.ones(3), atol=1e-6)
    assert (c["repeat"][~present] == 0).all()
    # ... the explore decoder none of it
    assert (c["explore"][present].exp() == 0).all()
    assert torch.allclose(c["explore"][:, 1:].exp().sum(1), torch.ones(3), atol=1e-5)
    # on session items P(i) = P(r) P(i|r), elsewhere P(e) P(i|e) (Eq. 1)
    p_r, p_e = c["log_mode"].exp().unbind(1)
    P = s.exp()
    assert torch.allclose(P[0, 3], p_r[0] * c["repeat"][0, 3], atol=1e-6)
    assert torch.allclose(P[0, 9], p_e[0] * c["explore"][0, 9].exp(), atol=1e-6)


def test_repeatnet_repeated_item_accumulates_its_attention():
    m = model("repeatnet", hidden=16)
    batch = batch_from_sequences([[3, 5, 3]], [[1, 1, 1]])
    with torch.no_grad():
        H, _ = m.gru(m.item_embedding(batch.items))
        a = m.att_repeat(H, H[:, -1], batch.mask)[0]                         # (3,)
        rep = m.components(batch)["repeat"][0]
    assert torch.allclose(rep[3], a[0] + a[2]) and torch.allclose(rep[5], a[1])


def test_repeatnet_loss_is_the_mixture_nll():
    m = model("repeatnet", hidden=16)
    batch = batch_from_sequences([[3, 5, 3], [7, 8]], [[1, 1, 1], [1, 1]])
    batch.targets = torch.tensor([3, 11])                                     # a repeat, an explore
    with torch.no_grad():
        s = m.score(batch)
        loss = m.sr_loss(batch)
    assert torch.allclose(loss, -(s[0, 3] + s[1, 11]) / 2)
    m.config.mode_loss = True
    with torch.no_grad():
        c = m.components(batch)
        joint = m.sr_loss(batch)
    assert torch.allclose(joint, loss - (c["log_mode"][0, 0] + c["log_mode"][1, 1]) / 2)


def test_repeatnet_has_no_cached_item_matrix():
    with pytest.raises(NotImplementedError, match="use score"):
        model("repeatnet").candidate_vectors()


# ---- SASRec ----------------------------------------------------------------------------------

def test_sasrec_output_at_t_ignores_later_positions():
    m = model("sasrec", n_heads=2)
    a = batch_from_sequences([[1, 2, 3, 4, 5]], [[1] * 5])
    b = batch_from_sequences([[1, 2, 3, 9, 11]], [[1] * 5])
    with torch.no_grad():
        # positions count back from the latest item: keep them equal by equal lengths
        Ha, Hb = m.hidden(a), m.hidden(b)
    assert torch.allclose(Ha[0, :3], Hb[0, :3], atol=1e-6)
    assert not torch.allclose(Ha[0, 3:], Hb[0, 3:], atol=1e-4)


def test_sasrec_latest_item_has_position_zero_and_long_sessions_are_truncated():
    m = model("sasrec", max_len=3)
    batch = batch_from_sequences([[1, 2, 3, 4, 5], [6, 7]], [[1] * 5, [1] * 2])
    assert m.positions(batch).tolist() == [[4, 3, 2, 1, 0], [1, 0, 0, 0, 0]]
    with torch.no_grad():
        long = m.score(batch_from_sequences([[1, 2, 3, 4, 5]], [[1] * 5]))
        tail = m.score(batch_from_sequences([[3, 4, 5]], [[1] * 3]))
    assert torch.allclose(long, tail, atol=1e-6)


# ---- CORE ------------------------------------------------------------------------------------

def test_core_session_vector_is_a_convex_combination_of_its_item_embeddings():
    m = model("core")
    batch = batch_from_sequences([[2, 4, 6, 8]], [[1] * 4])
    with torch.no_grad():
        X = m.item_embedding(batch.items)                                     # (1, 4, d)
        alpha = m.position_weights(batch, X)
        h = m.encode(batch)
    assert torch.allclose(alpha.sum(1), torch.ones(1)) and (alpha >= 0).all()
    assert torch.allclose(h, torch.bmm(alpha[:, None], X).squeeze(1), atol=1e-6)
    # in the span: least squares on the session's item embeddings leaves no residual
    coef = torch.linalg.lstsq(X[0].T, h[0][:, None]).solution
    assert torch.allclose(X[0].T @ coef, h[0][:, None], atol=1e-5)


def test_core_scores_are_cosine_over_temperature():
    m = model("core", temperature=0.07)
    batch = batch_from_sequences([[2, 4, 6], [5]], [[1] * 3, [1]])
    with torch.no_grad():
        h = m.encode(batch)
        want = F.cosine_similarity(h[:, None, :], m.item_embedding.weight[None, 1:], dim=-1) / 0.07
        s = m.score(batch)
    assert torch.allclose(s[:, 1:], want, atol=1e-4)
    # a one-item session's vector is that item's embedding: the item ranks first (cos = 1), which
    # is why the shared planted-transition check exempts CORE (tests/test_model_contract.py)
    assert int(s[1].argmax()) == 5 and torch.allclose(s[1, 5], torch.tensor(1 / 0.07))


def test_core_kg_item_vectors_are_own_embedding_plus_attribute_mean_on_both_sides():
    """core-kg: item vector = own embedding + mean of its attribute embeddings (kg as prepared:
    item, relation, value entity), used for the session's items and the candidates alike."""
    spec = DatasetSpec(n_items=6, n_entities=6 + 1 + 3, n_ops=2, n_relations=2)

    class KG:   # items 1, 2 share value 7 (brand); item 2 also has value 8; item 5 has value 9
        kg = np.array([[1, 0, 7], [2, 0, 7], [2, 1, 8], [5, 1, 9]])

    torch.manual_seed(0)
    m = build_model("core-kg", spec, {"dim": 8}).eval()
    m.fit_statistics(KG)
    E, A = m.item_embedding.weight.detach(), m.attr_embedding.weight.detach()
    want = E.clone()
    want[1] += A[0]
    want[2] += (A[0] + A[1]) / 2
    want[5] += A[2]
    assert torch.allclose(m.item_embeddings(), want, atol=1e-6)
    assert torch.all(m.item_embeddings()[0] == 0)                           # padding stays 0
    batch = batch_from_sequences([[1, 2], [5]], [[1, 1], [1]])
    with torch.no_grad():
        X = want[batch.items]
        alpha = m.position_weights(batch, X)
        h = torch.bmm(alpha[:, None], X).squeeze(1)
        s = m.score(batch)
    assert torch.allclose(m.encode(batch), h, atol=1e-6)
    assert torch.allclose(s[:, 1:], F.cosine_similarity(h[:, None], want[None, 1:], dim=-1) / m.config.temperature,
                          atol=1e-4)
    # the attribute part is trained through the SR loss (what lets rare items borrow from their brand)
    m.train()
    batch = batch_from_sequences([[1, 3], [2]], [[1, 1], [1]])
    batch.targets = torch.tensor([2, 1])
    m.sr_loss(batch).backward()
    assert m.attr_embedding.weight.grad[:2].abs().sum() > 0
    m.eval()
    # checkpoints keep the data-sized attribute buffers
    again = build_model("core-kg", spec, {"dim": 8}).eval()
    again.load_state_dict(m.state_dict())
    assert torch.allclose(again.item_embeddings(), m.item_embeddings())
    with pytest.raises(ValueError, match="item_repr"):
        build_model("core", SPEC, {"dim": 16, "item_repr": "attributes"})


# ---- GC-SAN ----------------------------------------------------------------------------------

def test_gcsan_combines_attention_output_and_last_gnn_state_with_omega():
    batch = batch_from_sequences([[1, 2, 1, 3], [4, 5]], [[1] * 4, [1] * 2])
    ends = {}
    for w in (0.0, 1.0, 0.6):
        m = model("gcsan", omega=w)
        with torch.no_grad():
            ends[w] = m.encode(batch)
            H = m.gnn_states(batch)
    # omega = 0: S_f is the GNN vector of the last position
    assert torch.allclose(ends[0.0], H[torch.arange(2), batch.lengths - 1], atol=1e-6)
    assert torch.allclose(ends[0.6], 0.6 * ends[1.0] + 0.4 * ends[0.0], atol=1e-5)


def test_gcsan_attention_sees_every_position():
    m = model("gcsan", omega=1.0)
    with torch.no_grad():
        a = m.encode(batch_from_sequences([[1, 2, 3]], [[1] * 3]))
        b = m.encode(batch_from_sequences([[7, 2, 3]], [[1] * 3]))
    assert not torch.allclose(a, b, atol=1e-4)


# ---- MGNN-SPred ------------------------------------------------------------------------------

def split_of(sessions):
    items = np.concatenate([np.array([i for i, _ in s], dtype=np.int32) for s in sessions])
    ops = np.concatenate([np.array([o for _, o in s], dtype=np.int32) for s in sessions])
    offsets = np.r_[0, np.cumsum([len(s) for s in sessions])].astype(np.int64)
    return SplitArrays(items, ops, offsets)


def test_mgnnspred_builds_one_relation_per_operation():
    m = model("mgnn-spred", n_neighbors=3)
    # op 1 subsequence 1 -> 2 -> 4 (3 is op 2); op 2 gets the edge 3 -> 5 across the op-1 item 6;
    # the second session's 2 -> 2 self-loop is skipped; sessions never link to each other
    m.build_graph(split_of([[(1, 1), (2, 1), (3, 2), (4, 1), (6, 1), (5, 2)], [(2, 1), (2, 1), (7, 3)]]))
    nb = m.neighbors
    assert nb[1, 0].tolist() == [2, 0, 0] and nb[2, 0].tolist() == [4, 0, 0]   # op 1 successors
    assert nb[4, 1].tolist() == [2, 0, 0] and nb[2, 1].tolist() == [1, 0, 0]   # op 1 predecessors
    assert nb[3, 2].tolist() == [5, 0, 0] and nb[5, 3].tolist() == [3, 0, 0]   # op 2
    assert nb[6, 0].tolist() == [0, 0, 0] and nb[4, 0].tolist() == [6, 0, 0]
    assert int(nb[:, 4:].abs().sum()) == 0                                     # op 3: no pairs


def test_neighbor_table_samples_distinct_neighbours():
    src = np.array([1, 1, 1, 1, 1, 2])
    dst = np.array([3, 4, 3, 5, 6, 7])
    t = neighbor_table(src, dst, 8, 2, np.random.default_rng(0))
    assert len(set(t[1].tolist())) == 2 and set(t[1].tolist()) <= {3, 4, 5, 6}
    assert t[2].tolist() == [7, 0] and t[0].tolist() == [0, 0]


def test_mgnnspred_graph_vectors_are_the_mean_aggregation():
    m = model("mgnn-spred", depth=1, n_neighbors=4)
    m.build_graph(split_of([[(1, 1), (2, 1), (3, 1)], [(4, 1), (2, 1)], [(2, 2), (5, 2)]]))
    E = m.item_embedding.weight
    with torch.no_grad():
        h = m.graph_vectors(torch.tensor([2]))[0]
    # item 2: op-1 successors {3}, op-1 predecessors {1, 4}, op-2 successors {5}
    assert torch.allclose(h, E[2] + E[3] + (E[1] + E[4]) / 2 + E[5], atol=1e-6)


def test_mgnnspred_operations_change_the_score():
    m = model("mgnn-spred")
    m.build_graph(split_of([[(1, 1), (2, 2), (3, 1), (4, 3)], [(2, 1), (3, 2), (5, 1)]]))
    torch.nn.init.normal_(m.gate.weight, 0.0, 1.0)
    with torch.no_grad():
        a = m.score(batch_from_sequences([[1, 2, 3]], [[1, 1, 2]]))
        b = m.score(batch_from_sequences([[1, 2, 3]], [[1, 2, 2]]))
    assert not torch.allclose(a, b, atol=1e-4)


def test_mgnnspred_pools_the_latest_items_of_each_behaviour():
    m = model("mgnn-spred", seq_len=2)
    batch = batch_from_sequences([[1, 2, 3, 4, 5]], [[1, 2, 1, 1, 2]])
    w = m.behaviour_weights(batch)[0]                                        # (L, R)
    assert w[:, 0].tolist() == [0.0, 0.0, 0.5, 0.5, 0.0]                     # op 1: latest two of 1, 3, 4
    assert w[:, 1].tolist() == [0.0, 0.5, 0.0, 0.0, 0.5]
    assert w[:, 2].tolist() == [0.0] * 5


def test_mgnnspred_session_of_unknown_operations_is_finite():
    m = model("mgnn-spred")
    with torch.no_grad():
        s = m.score(Batch(torch.tensor([[1, 2]]), torch.tensor([[0, 0]]), torch.tensor([2])))
    assert torch.isfinite(s[0, 1:]).all()


def test_mgnnspred_learns_the_planted_next_item_with_more_epochs(planted_data, tmp_path):
    """The shared contract's planted check, with 30 epochs instead of 12 (see NO_TRANSITIONS in
    tests/test_model_contract.py for why MGNN-SPred needs them)."""
    tr = Trainer(PreparedData(planted_data), "mgnn-spred", {"dim": 16},
                 TrainConfig(epochs=30, patience=30, batch_size=32, lr=5e-3, seed=0), tmp_path, progress=False)
    metrics = tr.fit()
    rec = Recommender.load(tmp_path)
    ok = sum(rec.recommend([(f"it{i}", "view")], k=1).items[0][0] == f"it{(i + 1) % 12}" for i in range(12))
    assert ok >= 11, f"planted next item ranked first for only {ok}/12 items"
    assert metrics["valid"]["hit@5"] > 90
