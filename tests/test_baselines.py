"""What is particular to each baseline, checked against hand-computed examples: S-POP's order,
item-kNN's co-occurrence similarity, V-SKNN's and STAN's weights, FPMC's factorisation, the BPR
loss, NARM's two encoders, STAMP's memory priority, RIB's word2vec, the micro-behaviour variants."""
import math

import numpy as np
import polars as pl
import pytest
import torch

from mkmsr.data.batching import Batch, batch_from_sequences
from mkmsr.data.dataset import DatasetSpec, PreparedData
from mkmsr.data.prepare import PrepareConfig, prepare
from mkmsr.data.sources import ColumnMap, read_generic
from mkmsr.models import build_model
from mkmsr.models.fpmc import bpr_loss
from mkmsr.models.word2vec import skipgram_pairs, train_skipgram

DAY = 86400.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Train sessions n1 = A B C (day 0), n2 = B D (day 1), n3 = C E (day 2); one valid and one
    test session. Returns (PreparedData, {item_id: item_idx})."""
    d = tmp_path_factory.mktemp("tiny")
    rows = [("n1", "A", 0.0), ("n1", "B", 1.0), ("n1", "C", 2.0), ("n2", "B", DAY), ("n2", "D", DAY + 1),
            ("n3", "C", 2 * DAY), ("n3", "E", 2 * DAY + 1)]
    ev = pl.DataFrame([(s, i, "view", t) for s, i, t in rows], schema=["session_id", "item_id", "operation", "timestamp"],
                      orient="row")
    ev.write_csv(d / "train.csv")
    pl.DataFrame([("v1", "A", "view", 3 * DAY), ("v1", "B", "view", 3 * DAY + 1)],
                 schema=["session_id", "item_id", "operation", "timestamp"], orient="row").write_csv(d / "valid.csv")
    pl.DataFrame([("t1", "B", "view", 4 * DAY), ("t1", "C", "view", 4 * DAY + 1)],
                 schema=["session_id", "item_id", "operation", "timestamp"], orient="row").write_csv(d / "test.csv")
    raw = read_generic(d / "train.csv", ColumnMap(item="item_id", op="operation", time="timestamp", session="session_id"),
                       valid_events=d / "valid.csv", test_events=d / "test.csv")
    data = PreparedData(prepare(raw, d / "prep", PrepareConfig()))
    ids = dict(zip(data.items["item_id"].to_list(), data.items["item_idx"].to_list()))
    return data, ids


def scores_of(model, ids, session):
    b = batch_from_sequences([[ids[x] for x in session]], [[1] * len(session)])
    s = model.score(b)[0]
    return {k: float(s[v]) for k, v in ids.items()}


def fitted(name, data, **over):
    m = build_model(name, data.spec, over)
    m.fit_statistics(data)
    return m.eval()


# ---- S-POP -----------------------------------------------------------------------------------

def test_spop_recency_then_popularity(tiny):
    data, ids = tiny
    s = scores_of(fitted("s-pop", data), ids, ["A", "A", "B"])
    # in-session items first, most recent first: B (position 3) before A (position 2)
    assert s["B"] > s["A"] > max(s["C"], s["D"], s["E"])
    # then train popularity: C occurs twice, D and E once
    assert s["C"] > s["D"] and s["C"] > s["E"]


def test_spop_count_mode(tiny):
    data, ids = tiny
    s = scores_of(fitted("s-pop", data, mode="count"), ids, ["A", "A", "B"])
    assert s["A"] > s["B"] > s["C"]          # A twice in the session beats the more recent B
    s = scores_of(fitted("s-pop", data, mode="count"), ids, ["A", "B"])
    assert s["B"] > s["A"]                    # equal counts: recency breaks the tie


def test_pop_ranks_by_train_count(tiny):
    data, ids = tiny
    s = scores_of(fitted("pop", data), ids, ["E"])
    assert s["B"] == s["C"] == 2 and s["A"] == s["D"] == s["E"] == 1


# ---- item-kNN --------------------------------------------------------------------------------

def test_itemknn_cooccurrence_similarity(tiny):
    data, ids = tiny
    s = scores_of(fitted("item-knn", data, lmbd=0.0, alpha=0.5), ids, ["E", "B"])   # the last item, B
    # supp: A 1, B 2, C 2, D 1, E 1; sim(B, j) = c(B, j) / sqrt(supp B * supp j)
    assert s["A"] == pytest.approx(1 / math.sqrt(2))
    assert s["C"] == pytest.approx(1 / 2)
    assert s["D"] == pytest.approx(1 / math.sqrt(2))
    assert s["E"] == 0 and s["B"] == 0       # no co-occurrence; no self-similarity
    s = scores_of(fitted("item-knn", data, lmbd=20.0, alpha=0.75), ids, ["B"])
    assert s["C"] == pytest.approx(1 / ((2 + 20) ** 0.75 * (2 + 20) ** 0.25))


# ---- V-SKNN ----------------------------------------------------------------------------------

def test_vsknn_weights_hand_computed(tiny):
    data, ids = tiny
    m = fitted("v-sknn", data)          # weighting div, weighting_score div, k 100
    s = scores_of(m, ids, ["A", "B"])
    # w(A) = 1/2, w(B) = 2/2; sim(n1 = ABC) = (1/2 + 1)/2 = 0.75, sim(n2 = BD) = 1/2 = 0.5, n3 shares nothing;
    # the latest item of the session found in n1 and n2 is B (step 1 -> decay 1)
    assert s["A"] == pytest.approx(0.75) and s["C"] == pytest.approx(0.75)
    assert s["B"] == pytest.approx(1.25) and s["D"] == pytest.approx(0.5) and s["E"] == 0
    s = scores_of(m, ids, ["B", "A"])
    # w(B) = 1/2, w(A) = 1: sim(n1) = 0.75, sim(n2) = 0.25; n2 holds only B, one step back -> decay 1/2
    assert s["D"] == pytest.approx(0.25 * 0.5)
    assert s["B"] == pytest.approx(0.75 + 0.125) and s["C"] == pytest.approx(0.75)


def test_vsknn_k_and_recent_sampling(tiny):
    data, ids = tiny
    s = scores_of(fitted("v-sknn", data, k=1), ids, ["A", "B"])
    assert s["D"] == 0 and s["C"] == pytest.approx(0.75)          # only the most similar neighbour, n1
    s = scores_of(fitted("v-sknn", data, sample_size=1), ids, ["A", "B"])
    assert s["C"] == 0 and s["D"] == pytest.approx(0.5)           # only the most recent candidate, n2


# ---- STAN ------------------------------------------------------------------------------------

def test_stan_weights_hand_computed(tiny):
    data, ids = tiny
    m = fitted("stan", data, lambda_spw=1.0, lambda_snh=1.0, lambda_inh=1.0)
    s = scores_of(m, ids, ["A", "B"])
    w_a, w_b = math.exp(-1), 1.0                       # factor 1: exp((p - L) / lambda_spw)
    norm = math.sqrt(w_a ** 2 + w_b ** 2)
    # factor 2 relative to the latest train session (n3, day 2): n1 is 2 days older, n2 1 day
    sim1 = (w_a + w_b) / (norm * math.sqrt(3)) * math.exp(-2)
    sim2 = w_b / (norm * math.sqrt(2)) * math.exp(-1)
    # factor 3: positions relative to the latest shared item (B: position 2 in n1, 1 in n2)
    assert s["A"] == pytest.approx(sim1 * math.exp(-1), rel=1e-5)
    assert s["C"] == pytest.approx(sim1 * math.exp(-1), rel=1e-5)
    assert s["B"] == pytest.approx(sim1 + sim2, rel=1e-5)
    assert s["D"] == pytest.approx(sim2 * math.exp(-1), rel=1e-5)
    assert s["E"] == 0


def test_count_models_need_statistics(tiny):
    data, ids = tiny
    m = build_model("stan", data.spec)
    with pytest.raises(RuntimeError, match="fit_statistics"):
        m.score(batch_from_sequences([[1]], [[1]]))


# ---- FPMC and BPR ----------------------------------------------------------------------------

SPEC = DatasetSpec(n_items=9, n_entities=10, n_ops=3, n_relations=0)


def test_fpmc_factorisation():
    torch.manual_seed(0)
    m = build_model("fpmc", SPEC, {"dim": 8}).eval()
    b = batch_from_sequences([[3, 5, 2], [7]], [[1, 1, 2], [1]])
    s = m.score(b)
    # x(s, j) = <V_IL[j], V_LI[last item]>: the factorised first-order chain (no user term)
    want = m.V_LI.weight[[2, 7]] @ m.V_IL.weight[1:].T
    assert torch.allclose(s[:, 1:], want, atol=1e-6)
    m2 = build_model("fpmc", SPEC, {"dim": 8, "basket": "session"}).eval()
    s2 = m2.score(b)
    assert torch.allclose(s2[0, 1:], m2.V_LI.weight[[3, 5, 2]].mean(0) @ m2.V_IL.weight[1:].T, atol=1e-6)


def test_bpr_loss_hand_computed():
    pos, neg = torch.tensor([2.0]), torch.tensor([[1.0, 3.0]])
    want = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(1.0)))) / 2
    assert float(bpr_loss(pos, neg)) == pytest.approx(want, rel=1e-6)
    assert float(bpr_loss(pos, neg, torch.tensor([[True, False]]))) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))), rel=1e-6)


def test_gru4rec_bpr_uses_the_batch_targets_as_negatives():
    torch.manual_seed(0)
    m = build_model("gru4rec-bpr", SPEC, {"dim": 8, "n_extra": 0}).eval()
    b = batch_from_sequences([[1, 2], [3], [4, 5, 6]], [[1, 1], [1], [1, 1, 1]])
    b.targets = torch.tensor([7, 8, 7])
    full = m.logits(b)                                        # (3, 9), column j = item j + 1
    S = full[:, b.targets - 1]                                 # scores of the batch's targets
    losses = [torch.nn.functional.logsigmoid(S[i, i] - S[i, j]) for i in range(3) for j in range(3)
              if int(b.targets[j]) != int(b.targets[i])]      # the same item is not a negative
    assert float(m.sr_loss(b).detach()) == pytest.approx(-float(torch.stack(losses).mean().detach()), rel=1e-5)


# ---- NARM ------------------------------------------------------------------------------------

def test_narm_global_and_local_encoders():
    torch.manual_seed(0)
    m = build_model("narm", SPEC, {"dim": 8, "hidden": 6}).eval()
    b = batch_from_sequences([[1, 2, 3], [4]], [[1, 1, 1], [1]])
    c_g, c_l, alpha = m.encoders(b)
    H, _ = m.gru(m.embedding(torch.tensor([[1, 2, 3]])))
    H = H[0]
    assert torch.allclose(c_g[0], H[-1], atol=1e-6)                       # global: the last hidden state
    a = m.v(torch.sigmoid(m.A1(H[-1])[None] + m.A2(H))).squeeze(-1)        # local: v^T sigma(A1 h_t + A2 h_j)
    assert torch.allclose(alpha[0], a, atol=1e-6)
    assert torch.allclose(c_l[0], (a[:, None] * H).sum(0), atol=1e-6)
    assert alpha[1, 1:].abs().sum() == 0                                  # padding gets no attention
    # the representation is B [c_g; c_l]: both encoders count
    assert torch.allclose(m.encode(b), m.B(torch.cat([c_g, c_l], -1)), atol=1e-6)


# ---- STAMP -----------------------------------------------------------------------------------

def test_stamp_memory_priority():
    torch.manual_seed(0)
    m = build_model("stamp", SPEC, {"dim": 8}).eval()
    b = batch_from_sequences([[1, 2, 3], [3, 2, 1]], [[1, 1, 1], [1, 1, 1]])
    m_a, m_t, alpha = m.memories(b)
    X = m.embedding(torch.tensor([1, 2, 3]))
    m_s = X.mean(0)
    assert torch.allclose(m_t[0], X[2]) and torch.allclose(m_t[1], X[0])    # short-term memory: the last click
    a = m.w0(torch.sigmoid(m.W1(X) + m.W2(X[2]) + m.W3(m_s))).squeeze(-1)
    assert torch.allclose(alpha[0], a, atol=1e-6)
    assert torch.allclose(m_a[0], (a[:, None] * X).sum(0), atol=1e-6)
    # the same items in another order: the same general interest m_s, another session representation
    assert not torch.allclose(m.encode(b)[0], m.encode(b)[1])
    # trilinear score <h_s, h_t, x_j>
    h = torch.tanh(m.mlp_s(m_a[0])) * torch.tanh(m.mlp_t(m_t[0]))
    assert torch.allclose(m.score(b)[0, 1:], m.embedding.weight[1:] @ h, atol=1e-5)


# ---- RIB and word2vec ------------------------------------------------------------------------

def test_skipgram_pairs_stay_inside_sessions():
    pairs = skipgram_pairs(np.array([1, 2, 3, 4, 5]), np.array([0, 3, 5]), window=1)
    assert sorted(map(tuple, pairs.tolist())) == sorted([(1, 2), (2, 1), (2, 3), (3, 2), (4, 5), (5, 4)])


def test_skipgram_learns_context():
    # tokens 1 and 2 share the context 5, tokens 3 and 4 the context 6
    seq = np.array([1, 5, 2, 5] * 100 + [3, 6, 4, 6] * 100)
    off = np.arange(0, seq.size + 1, 2)
    E = train_skipgram(seq, off, 7, dim=8, window=1, epochs=20, batch_size=64, seed=0)
    cos = torch.nn.functional.cosine_similarity
    assert E[0].abs().sum() == 0
    assert cos(E[1], E[2], dim=0) > cos(E[1], E[3], dim=0)


def test_rib_operation_embeddings_come_from_word2vec(synthetic_data):
    data = PreparedData(synthetic_data)
    torch.manual_seed(0)
    m = build_model("rib", data.spec, {"dim": 8, "op_dim": 6, "w2v_epochs": 1})
    assert m.op_vectors.abs().sum() == 0
    m.fit_statistics(data)
    assert m.op_vectors[0].abs().sum() == 0 and (m.op_vectors[1:].abs().sum(1) > 0).all()
    assert not any(n == "op_vectors" for n, _ in m.named_parameters())     # fixed, not trained
    assert "op_vectors" in m.state_dict()                                   # but saved with the checkpoint


# ---- micro-behaviour variants ----------------------------------------------------------------

def test_micro_behaviour_tokens_and_encoders():
    torch.manual_seed(0)
    m = build_model("m-gru-sr", SPEC, {"dim": 8})
    b = Batch(torch.tensor([[2, 5, 0]]), torch.tensor([[1, 2, 0]]), torch.tensor([2]))
    assert m.tokens(b).tolist() == [[2 * 3 + 1, 5 * 3 + 2, 0]]             # item * n_ops + op
    # the same items with other operations are other micro-behaviours
    b2 = Batch(torch.tensor([[2, 5]]), torch.tensor([[2, 2]]), torch.tensor([2]))
    assert not torch.allclose(m.eval().score(b)[0], m.score(b2)[0])
    assert hasattr(build_model("m-ggnn-sr", SPEC, {"dim": 8}), "ggnn")
    x2 = build_model("m-ggnnx2-sr", SPEC, {"dim": 8})
    assert hasattr(x2, "op_ggnn") and not hasattr(x2, "op_gru") and not x2.config.use_knowledge
