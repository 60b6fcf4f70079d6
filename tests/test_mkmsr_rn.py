"""mkmsr-rn (issue 9's lead model): the mixture equation, the two code paths that compute it, the
own-session exclusion of the neighbourhood on training prefixes, attribute-only cold items, and
the validation calibration. tests/test_model_contract.py runs the shared contract on it."""
import dataclasses
import json

import numpy as np
import torch
import torch.nn.functional as F

from mkmsr.checkpoint import save_checkpoint
from mkmsr.data.batching import batch_from_sequences, make_batch
from mkmsr.data.dataset import PreparedData
from mkmsr.models import build_model
from mkmsr.models.stan import STAN, STANConfig
from mkmsr.serving.recommend import Recommender
from mkmsr.training.train import TrainConfig, Trainer


def fitted(data_path, **overrides):
    """The model with its neighbourhood on unless ``neighbours=False`` (most tests here check
    that part too; the registered default has it off, see test_the_default_has_no_neighbourhood)."""
    data = PreparedData(data_path)
    torch.manual_seed(0)
    m = build_model("mkmsr-rn", data.spec, {"dim": 16, "neighbours": True, **overrides})
    m.fit_statistics(data)
    return m.eval(), data


def some_batch(data, n=6):
    arr = data.split("valid")
    sess, prefix = arr.samples()
    return make_batch(arr, sess[:n], prefix[:n])


def test_scores_are_the_log_of_the_three_way_mixture(synthetic_data):
    m, data = fitted(synthetic_data, cold_items="component", id_dropout=0.1)
    assert m.components == ["explore", "repeat", "cold"]
    b = some_batch(data)
    with torch.no_grad():
        lp = m.score(b)[:, 1:]
        P = m._parts(b, m.scoring_vectors(), own_excluded=False)
    pi = P["log_pi"].exp()
    assert torch.allclose(pi.sum(1), torch.ones(len(b)), atol=1e-6)
    cold = torch.from_numpy(data.item_train_count[1:] == 0)
    # the explore component ranges over the warm items, the cold one over the cold items
    assert torch.isinf(P["explore"][:, cold]).all() and torch.isfinite(P["explore"][:, ~cold]).all()
    assert torch.equal(P["cold_idx"], torch.nonzero(cold, as_tuple=True)[0])
    assert torch.isfinite(P["cold"]).all()
    sm = lambda x: torch.softmax(x, dim=1)
    p_cold = torch.zeros(len(b), cold.numel()).index_copy(1, P["cold_idx"], sm(P["cold"]))
    # p(i) = pi_e softmax(e)(i) + pi_r p_rep(i) + pi_c softmax(c)(i), a distribution over the catalogue
    want = pi[:, :1] * sm(P["explore"]) + pi[:, 1:2] * P["p_rep"][:, 1:] + pi[:, 2:] * p_cold
    assert torch.allclose(lp.exp(), want, atol=1e-6)
    assert torch.allclose(lp.exp().sum(1), torch.ones(len(b)), atol=1e-5)
    # the repeat distribution lives on the session's own items and sums to one
    p_rep = P["p_rep"]
    assert torch.allclose(p_rep.sum(1), torch.ones(len(b)), atol=1e-6)
    inside = torch.zeros_like(p_rep, dtype=torch.bool).scatter_(1, b.items, b.mask)
    assert (p_rep[~inside] == 0).all()


def test_loss_equals_the_nll_of_the_scores(synthetic_data):
    for over in ({}, {"cold_items": "component", "id_dropout": 0.1}, {"repeat": False}, {"cold_items": "id"},
                 {"neighbours": False}, {"cold_items": "component", "repeat": False}, {"explore_new_only": True},
                 {"explore_core": "add"}, {"explore_core": "only"}):
        m, data = fitted(synthetic_data, **over)
        b = some_batch(data, 12)
        with torch.no_grad():
            loss = m.sr_loss(b)
            lp = m.score(b)
        assert torch.allclose(loss, -lp.gather(1, b.targets[:, None]).mean(), atol=1e-5), over


def test_the_fused_training_loss_equals_the_generic_one_with_its_gradients(synthetic_data):
    """A training step takes the explore term through _ExploreLSE (no (B, n) logits kept for
    autograd): same loss and gradients as the generic path, with and without the repeat
    component and the neighbourhood, and with a row spread over far more than LSE_FLOOR."""
    for over in ({}, {"repeat": False}, {"neighbours": False}, {"cold_items": "id"}, {"nb_init": (4000.0, 40.0, 400.0)}):
        m, data = fitted(synthetic_data, **over)
        assert m._fusable()
        m.train()
        arr = data.split("train")
        sess, prefix = arr.samples()
        b = make_batch(arr, sess[:24], prefix[:24])
        b.train_sessions = torch.from_numpy(sess[:24].astype(np.int64))
        out = []
        for fused in (True, False):
            m._fusable = lambda f=fused: f
            m.zero_grad()
            loss = m.sr_loss(b)
            loss.backward()
            out.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
        (l1, g1), (l2, g2) = out
        assert torch.isfinite(l1) and torch.allclose(l1, l2, rtol=1e-5), over
        assert g1.keys() == g2.keys() and "item_embedding.weight" in g1, over
        for n in g1:
            assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-6 * float(g2[n].abs().max()) + 1e-9), (over, n)
        del m._fusable
    m, _ = fitted(synthetic_data, explore_core="add")
    assert not m._fusable()


def test_explore_new_only_leaves_the_session_items_to_the_repeat_component(synthetic_data):
    """RepeatNet's split: explore over the items outside the session, p(i) = pi_r p_rep(i) for a
    session item and pi_e softmax_new(e)(i) for the others."""
    m, data = fitted(synthetic_data, explore_new_only=True, cold_items="attributes")
    b = some_batch(data, 9)
    with torch.no_grad():
        lp = m.score(b)[:, 1:]
        P = m._parts(b, m.scoring_vectors(), own_excluded=False)
    inside = torch.zeros(len(b), data.spec.n_items + 1, dtype=torch.bool).scatter_(1, b.items, b.mask)[:, 1:]
    assert torch.isinf(P["explore"][inside]).all() and torch.isfinite(P["explore"][~inside]).all()
    pi = P["log_pi"].exp()
    want = pi[:, :1] * torch.softmax(P["explore"], dim=1) + pi[:, 1:2] * P["p_rep"][:, 1:]
    assert torch.allclose(lp.exp(), want, atol=1e-6)
    assert torch.allclose(lp.exp()[inside].sum(), (pi[:, 1] ).sum(), atol=1e-5)


def test_a_training_step_is_finite_and_dropped_ids_are_that_steps_cold_items(synthetic_data):
    m, data = fitted(synthetic_data, cold_items="component", id_dropout=0.5)
    m.train()
    arr = data.split("train")
    sess, prefix = arr.samples()
    b = make_batch(arr, sess[:32], prefix[:32])
    b.train_sessions = torch.from_numpy(sess[:32].astype(np.int64))
    torch.manual_seed(1)
    loss = m.sr_loss(b)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    cold = m._cold()
    assert cold.float().mean() > 0.3                       # about half the items this step
    m.eval()
    with torch.no_grad():
        assert torch.equal(m._cold(), torch.from_numpy(data.item_train_count[1:] == 0))


def test_repeat_attention_depends_on_operations_and_recency(synthetic_data):
    m, data = fitted(synthetic_data, neighbours=False)
    same_items = [[3, 5, 3, 7], [3, 5, 3, 7]]
    b = batch_from_sequences(same_items, [[1, 1, 1, 1], [1, 2, 3, 2]])
    with torch.no_grad():
        p_rep = m._parts(b, m.scoring_vectors(), own_excluded=False)["p_rep"]
    assert not torch.allclose(p_rep[0], p_rep[1])         # other operations, other repeat distribution


def test_training_prefixes_do_not_find_their_own_session_in_the_neighbourhood(synthetic_data):
    data = PreparedData(synthetic_data)
    stan = STAN(STANConfig(k=50, sample_size=0, lambda_snh=1e6), data.spec)
    stan.fit_statistics(data)
    arr = data.split("train")
    sess, prefix = arr.samples()
    b = make_batch(arr, sess[:40], prefix[:40])
    from mkmsr.models.counting import session_positions
    pos = session_positions(b, data.spec.n_items)
    own = torch.from_numpy(sess[:40].astype(np.int64))
    nb_all, w_all = stan.neighbours(pos, b.lengths)
    nb_ex, w_ex = stan.neighbours(pos, b.lengths, own)
    assert ((nb_all == own[:, None]) & (w_all > 0)).any()  # without exclusion the own session is found
    assert not ((nb_ex == own[:, None]) & (w_ex > 0)).any()
    # and the model's training loss takes that path when the batch says where it comes from
    m, _ = fitted(synthetic_data)
    b.train_sessions = own
    with torch.no_grad():
        e_ex = m._parts(b, m.scoring_vectors(), own_excluded=True)["explore"]
        e_in = m._parts(b, m.scoring_vectors(), own_excluded=False)["explore"]
    assert not torch.allclose(e_ex, e_in)


def test_cached_neighbourhoods_equal_the_live_ones(synthetic_data):
    """The neighbourhood scores found once in fit_statistics (per split; train prefixes without their own
    session) give the same scores and loss as computing them in the step; rows cut by max_len and
    batches from elsewhere (serving) are computed live."""
    m, data = fitted(synthetic_data)
    live, _ = fitted(synthetic_data, nb_cache=False)
    live.load_state_dict(m.state_dict())
    assert set(m._nb_cache) == {(data.split(s).origin, s == "train") for s in ("train", "valid", "test")}
    assert not live._nb_cache
    for split in ("train", "valid", "test"):
        arr = data.split(split)
        sess, prefix = arr.samples()
        idx = np.random.default_rng(0).permutation(sess.size)[:37]
        b = make_batch(arr, sess[idx], prefix[idx])
        assert torch.equal(b.sample_idx, torch.from_numpy(idx))
        if split == "train":
            b.train_sessions = torch.from_numpy(sess[idx].astype(np.int64))
            assert all(torch.equal(x, y) for x, y in zip(m._neighbourhood(b, True), live._live_neighbourhood(b, True)))
            with torch.no_grad():
                assert torch.allclose(m.sr_loss(b), live.sr_loss(b), atol=1e-6)
        else:
            assert all(torch.equal(x, y) for x, y in zip(m._neighbourhood(b, False),
                                                         live._live_neighbourhood(b, False)))
            with torch.no_grad():
                assert torch.allclose(m.score(b), live.score(b), atol=1e-5)
    # a prefix cut by max_len is not its sample: no cache row may stand in for it
    arr = data.split("valid")
    sess, prefix = arr.samples()
    long = np.nonzero(prefix > 2)[0][:5]
    b = make_batch(arr, sess[long], prefix[long], max_len=2)
    assert (b.sample_idx == -1).all()
    calls = []
    m._live_neighbourhood = lambda *a: calls.append(a) or live._live_neighbourhood(*a)
    m._neighbourhood(b, False)
    # sessions built for serving carry no origin
    s = batch_from_sequences([[1, 2, 3]], [[0, 0, 0]])
    assert s.origin == ""
    m._neighbourhood(s, False)
    assert len(calls) == 2   # both computed live


def test_cold_items_are_scored_by_their_attributes_alone(synthetic_data):
    m, data = fitted(synthetic_data, id_dropout=0.1)
    cold = np.flatnonzero(data.item_train_count == 0)
    cold = cold[cold > 0]
    assert cold.size, "the synthetic data should have items that never occur in train"
    with torch.no_grad():
        m.item_embedding.weight[cold] += 5.0               # an untrained id part must not matter
        V = m.item_embeddings()
        attr = torch.sparse.mm(m._attribute_matrix(), m.attr_embedding.weight)
    assert torch.allclose(V[cold], attr[cold])
    warm = np.flatnonzero(data.item_train_count > 0)[:5]
    assert torch.allclose(V[warm], m.item_embedding.weight[warm] + attr[warm])
    # id dropout acts in training only
    m.train()
    assert not torch.allclose(m.item_embeddings().detach(), V)   # (a training step: autograd on)
    m.eval()
    assert torch.equal(m.item_embeddings().detach(), V)


def test_training_calibrates_the_mixture_on_validation(synthetic_data, tmp_path):
    data = PreparedData(synthetic_data)
    tr = Trainer(data, "mkmsr-rn", {"dim": 16, "cold_items": "component", "neighbours": True}, TrainConfig(epochs=1, seed=0),
                 tmp_path / "run")
    m = tr.fit()
    tuned = m["tuned_on_validation"]
    assert tuned["nb_multiplier"] in (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    assert tuned["gate_shift"] in (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
    assert tuned["cold_shift"] in (-20.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
    curve = tuned["valid_mrr@20_by_calibration"]
    assert max(curve.values()) == m["valid"]["mrr@20"]      # the chosen point is the validation best
    # multi-start: the configured values, then random grid points, the second expert's weight held
    # at 0; then one more ascent, that weight free, from the best of their ends (nested), which wins
    paths = tuned["calibration_paths"]
    assert tuned["calibration_search"]["starts"] == 4 and tuned["calibration_search"]["nested"] == ["expert2_weight"]
    assert len(paths) == 5 and all(p["start"]["expert2_weight"] == p["end"]["expert2_weight"] == 0.0
                                   for p in paths[:4])
    assert paths[0]["start"]["gate_shift"] == 0.0 and paths[0]["start"]["nb_multiplier"] == 1.0
    assert len({json.dumps(p["start"], sort_keys=True) for p in paths[:4]}) > 1
    best = max(p["valid_mrr@20"] for p in paths[:4])
    assert paths[4]["start"] == next(p for p in paths if p["valid_mrr@20"] == best)["end"]
    assert paths[4]["valid_mrr@20"] == m["valid"]["mrr@20"] >= best
    assert all(tuned[k] == v for k, v in paths[4]["end"].items())
    for p in paths:   # every end is a point the search evaluated, with that value
        assert curve[json.dumps(p["end"], sort_keys=True)] == p["valid_mrr@20"]
    assert m["test_best_over_epochs"].get("not_applicable")
    saved = json.loads((tmp_path / "run" / "best" / "model.json").read_text())["config"]
    assert saved["nb_multiplier"] == tuned["nb_multiplier"] and saved["gate_shift"] == tuned["gate_shift"]


def test_the_calibration_memo_changes_no_score(synthetic_data):
    """Inside ``calibration_memo`` the option-independent parts of a forward pass are computed once
    per batch and reused: scores at every calibration option equal those computed afresh."""
    m, data = fitted(synthetic_data, cold_items="match", explore_expert="core", match_alpha=-1.0)
    b = some_batch(data, 9)
    settings = [dict(expert_weight=0.0, gate_shift=0.0, repeat_explore=0.0),
                dict(expert_weight=2.0, gate_shift=3.0, repeat_recency=1.0, repeat_explore=1.0, explore_neural=0.25,
                     nb_multiplier=4.0, match_idf=1.0, match_tau=4.0),
                dict(expert_weight=0.5, gate_shift=-1.0, match_idf=0.0, match_alpha=-20.0),
                # along the last stages' axes only: the stages before them are reused (``_staged``)
                dict(expert_weight=0.5, gate_shift=-1.0, match_idf=0.0, match_alpha=-20.0, prior_weight=4.0),
                dict(expert_weight=0.5, gate_shift=-1.0, match_idf=0.0, match_alpha=-20.0, prior_weight=4.0,
                     prior_idf=2.0),
                dict(expert_weight=0.5, gate_shift=-1.0, match_idf=0.0, match_alpha=-20.0, prior_weight=4.0,
                     prior_idf=2.0, hurdle_shift=2.0),
                dict(expert_weight=0.5, gate_shift=-1.0, match_idf=0.0, match_alpha=-20.0, prior_weight=4.0,
                     prior_idf=2.0, hurdle_shift=2.0, hurdle_temperature=0.5)]

    base = {k: getattr(m.config, k) for opts in settings for k in opts}

    def scores():
        out = []
        for opts in settings:
            for k, v in {**base, **opts}.items():
                setattr(m.config, k, v)
            with torch.inference_mode():
                out.append(m.score(b))
        return out

    fresh = scores()
    with m.calibration_memo():
        memo1, memo2 = scores(), scores()
        assert m._memo                                       # it did keep parts
        assert {"stage mixture", "stage prior", "stage prior mass", "stage hurdle masses"} <= {k[1] for k in m._memo}
    assert m._memo is None
    for f, a, c in zip(fresh, memo1, memo2):
        assert torch.equal(f, a) and torch.equal(f, c)
    for i in range(len(fresh) - 1):                          # every option does change the scores
        assert not torch.equal(fresh[i], fresh[i + 1])


def test_knowledge_match_component(synthetic_data):
    """cold_items="match": the attribute-match scores of the cold items equal a brute-force count
    over the knowledge graph; the mixed scores are a distribution; off (alpha -20) or in training
    they are the plain mixture's."""
    m, data = fitted(synthetic_data, cold_items="match", match_alpha=-1.0, match_idf=1.0)
    plain, _ = fitted(synthetic_data, cold_items="attributes")
    plain.load_state_dict(m.state_dict())
    b = some_batch(data, 9)
    raw, cols = m.knowledge_match(b)
    cold = data.item_train_count[1:] == 0
    assert cold.any() and np.array_equal(cols.numpy(), np.nonzero(cold)[0])
    kg = data.kg
    n_items = data.spec.n_items
    attrs = {}
    for h, _, t in kg:
        attrs.setdefault(int(h), set()).add(int(t) - n_items - 1)
    support = np.bincount(kg[:, 2] - n_items - 1, minlength=m.attr_embedding.num_embeddings)
    idf = np.log((n_items + 1) / np.maximum(support, 1)).clip(min=0)
    want = np.zeros(raw.shape)
    for r in range(len(b)):
        L = int(b.lengths[r])
        for j, c in enumerate(cols.tolist()):
            for t in range(L):
                shared = attrs.get(int(b.items[r, t]), set()) & attrs.get(c + 1, set())
                want[r, j] += np.exp(-(L - 1 - t) / 2.0) * sum(idf[a] for a in shared)
    assert np.allclose(raw.numpy(), want, atol=1e-5)
    with torch.no_grad():
        lp = m.score(b)[:, 1:]
        assert torch.allclose(lp.exp().sum(1), torch.ones(len(b)), atol=1e-5)
        base = plain.score(b)[:, 1:]
        assert not torch.allclose(lp, base)
        m.config.match_alpha, m.config.match_beta = 40.0, 2.0   # g saturates to 1 in float32: still finite
        sat = m.score(b)[:, 1:]
        assert torch.isfinite(sat[raw.amax(1) <= 0]).all()
        assert torch.isfinite(sat.amax(1)).all() and not torch.isnan(sat).any()
        m.config.match_alpha = -20.0
        assert torch.equal(m.score(b)[:, 1:], base)
    assert "match_alpha" in m.calibration_grid()


def test_knowledge_match_takes_its_share_of_the_explore_mass_only(synthetic_data):
    """match_share="explore" (default): p'(i) = pi_r p_rep(i) + pi_e [(1 - g) softmax(e)(i) + g q(i)],
    q the softmax of match_tau * match over the matching cold items: P(repeat) is untouched, so
    session items keep the repeat mass they had without the component. "all": (1 - g) p + g q."""
    m, data = fitted(synthetic_data, match_alpha=0.0, match_beta=0.5, match_tau=2.0)
    b = some_batch(data, 9)
    with torch.no_grad():
        lp = m.score(b)[:, 1:]
        P = m._parts(b, m.scoring_vectors(), own_excluded=False)
        raw, cols = m.knowledge_match(b)
        m.config.match_share = "all"
        lp_all = m.score(b)[:, 1:]
        m.config.match_share = "explore"
    assert m.components == ["explore", "repeat"]
    pi = P["log_pi"].exp()
    g = torch.sigmoid(0.0 + 0.5 * raw.amax(1, keepdim=True)) * (raw > 0).any(1, keepdim=True)
    x = torch.where(raw > 0, 2.0 * raw, torch.full_like(raw, float("-inf")))
    q = torch.zeros_like(lp).index_copy(1, cols, torch.nan_to_num(torch.softmax(x, dim=1)))
    p_e = torch.softmax(P["explore"], dim=1)
    want = pi[:, 1:2] * P["p_rep"][:, 1:] + pi[:, :1] * ((1 - g) * p_e + g * q)
    assert bool(g.gt(0.01).any())
    assert torch.allclose(lp.exp(), want, atol=1e-6)
    plain = pi[:, :1] * p_e + pi[:, 1:2] * P["p_rep"][:, 1:]
    assert torch.allclose(lp_all.exp(), (1 - g) * plain + g * q, atol=1e-6)


def test_serving_ranks_cold_items_by_knowledge_match_as_evaluate_does(synthetic_data, tmp_path):
    """The default cold_items="match" with the component on: Recommender (what ``mkmsr serve``
    answers with) ranks exactly as model.score, cold items from the knowledge match included."""
    m, data = fitted(synthetic_data, match_alpha=0.0, match_beta=1.0, match_tau=2.0)
    assert m.config.cold_items == "match"
    save_checkpoint(tmp_path / "ckpt", m, "mkmsr-rn", data)
    rec = Recommender.load(tmp_path / "ckpt", scan="float32")
    b = some_batch(data, 6)
    with torch.no_grad():
        want = m.score(b)[:, 1:]
    ids = {v: k for k, v in rec.item_index.items()}
    ops = {v: k for k, v in rec.op_index.items()}
    cold = torch.from_numpy(data.item_train_count[1:] == 0)
    n_cold_top = 0
    for r in range(len(b)):
        L = int(b.lengths[r])
        events = [(ids[int(b.items[r, t])], ops[int(b.ops[r, t])]) for t in range(L)]
        got = [rec.item_index[i] - 1 for i, _ in rec.recommend(events, k=20).items]
        top = torch.topk(want[r], 20).indices
        kth = want[r, top[-1]]
        assert bool((want[r, got] >= kth - 1e-4).all()), (r, got, top)
        n_cold_top += int(cold[got].sum())
    assert n_cold_top > 0      # the component did put cold items in the served top 20


def test_serving_keeps_the_calibrated_repeat_options(synthetic_data, tmp_path):
    """repeat_explore / repeat_recency / the repeat hurdle / the knowledge prior set (as calibration leaves them)
    travel in the checkpoint,
    and Recommender ranks the session's items and the rest exactly as model.score."""
    m, data = fitted(synthetic_data, repeat_explore=2.0, repeat_recency=0.5, gate_shift=1.0, hurdle_shift=2.0,
                     hurdle_temperature=0.5, prior_weight=4.0, prior_idf=1.0)
    save_checkpoint(tmp_path / "ckpt", m, "mkmsr-rn", data)
    rec = Recommender.load(tmp_path / "ckpt", scan="float32")
    assert rec.model.config.repeat_explore == 2.0 and rec.model.config.repeat_recency == 0.5
    assert rec.model.config.hurdle_shift == 2.0 and torch.equal(rec.model.hurdle_w, m.hurdle_w)
    assert rec.model.config.prior_weight == 4.0 and rec.model.config.prior_idf == 1.0
    b = some_batch(data, 6)
    with torch.no_grad():
        want = m.score(b)[:, 1:]
    ids = {v: k for k, v in rec.item_index.items()}
    ops = {v: k for k, v in rec.op_index.items()}
    for r in range(len(b)):
        events = [(ids[int(b.items[r, t])], ops[int(b.ops[r, t])]) for t in range(int(b.lengths[r]))]
        got = [rec.item_index[i] - 1 for i, _ in rec.recommend(events, k=10).items]
        kth = torch.topk(want[r], 10).values[-1]
        assert bool((want[r, got] >= kth - 1e-4).all()), (r, got)


def test_repeat_recency_tilts_the_repeat_attention_at_inference_only(synthetic_data):
    """repeat_recency kappa: alpha_t ∝ exp(a_t - kappa (L - 1 - t)) at inference; training ignores
    it (an inference-only option); a large kappa orders the session's items by last occurrence."""
    m, data = fitted(synthetic_data)
    b = some_batch(data, 9)
    with torch.no_grad():
        base = m._parts(b, m.scoring_vectors(), own_excluded=False)["p_rep"]
        m.config.repeat_recency = 50.0
        tilted = m._parts(b, m.scoring_vectors(), own_excluded=False)["p_rep"]
        m.train()
        trained = m._parts(b, m.scoring_vectors(), own_excluded=False)["p_rep"]
        m.eval()
    assert torch.allclose(trained, base, atol=1e-6) and not torch.allclose(tilted, base)
    assert torch.allclose(tilted.sum(1), torch.ones(len(b)), atol=1e-5)
    for r in range(len(b)):
        L = int(b.lengths[r])
        seq = b.items[r, :L].tolist()
        last_pos = {i: t for t, i in enumerate(seq)}
        order = sorted(last_pos, key=lambda i: -last_pos[i])
        vals = tilted[r, order]
        assert bool((vals[:-1] >= vals[1:]).all()), (seq, vals)
    assert "repeat_recency" in m.calibration_grid()
    assert "repeat_recency" not in type(m).training_identity(dataclasses.asdict(m.config))


def test_repeat_explore_adds_the_explore_evidence_to_the_repeat_attention_at_inference_only(synthetic_data):
    """repeat_explore omega: alpha_t ∝ exp(a_t + omega e(x_t)) at inference, e the explore logits
    (so for two items seen once, log p_rep(i) - log p_rep(j) moves by omega (e(i) - e(j))); a
    large omega puts the repeat mass on the session item the explore ranking favours; training
    ignores the option."""
    m, data = fitted(synthetic_data)
    b = some_batch(data, 12)
    with torch.no_grad():
        P0 = m._parts(b, m.scoring_vectors(), own_excluded=False)
        m.config.repeat_explore = 0.5
        half = m._parts(b, m.scoring_vectors(), own_excluded=False)["p_rep"]
        m.config.repeat_explore = 200.0
        sharp = m._parts(b, m.scoring_vectors(), own_excluded=False)["p_rep"]
        m.train()
        trained = m._parts(b, m.scoring_vectors(), own_excluded=False)["p_rep"]
        m.eval()
    base, e = P0["p_rep"], P0["explore"]
    assert torch.allclose(trained, base, atol=1e-6) and torch.allclose(half.sum(1), torch.ones(len(b)), atol=1e-5)
    checked = 0
    for r in range(len(b)):
        seq = b.items[r, :int(b.lengths[r])].tolist()
        once = [i for i in set(seq) if seq.count(i) == 1]
        for i, j in zip(once, once[1:]):
            want = (torch.log(base[r, i]) - torch.log(base[r, j])) + 0.5 * (e[r, i - 1] - e[r, j - 1])
            assert torch.allclose(torch.log(half[r, i]) - torch.log(half[r, j]), want, atol=1e-4)
            checked += 1
        best = max(set(seq), key=lambda i: float(e[r, i - 1]))
        assert float(sharp[r, best]) > 0.99
    assert checked > 0
    assert "repeat_explore" in m.calibration_grid()
    assert "repeat_explore" not in type(m).training_identity(dataclasses.asdict(m.config))


def test_explore_neural_scales_the_neural_term_at_inference_only(synthetic_data):
    """explore_neural = 0: the explore logits are the neighbourhood features alone; training
    ignores the option (inference only, calibrated on validation)."""
    m, data = fitted(synthetic_data)
    b = some_batch(data, 9)
    with torch.no_grad():
        full = m._parts(b, m.scoring_vectors(), own_excluded=False)["explore"]
        m.config.explore_neural = 0.0
        nb_only = m._parts(b, m.scoring_vectors(), own_excluded=False)["explore"]
        m.train()
        trained = m._parts(b, m.scoring_vectors(), own_excluded=False)["explore"]
        m.eval()
    r, c, v = m._neighbourhood(b, own_excluded=False)
    w = m.nb_weight.detach() * 8.0 * m.config.nb_multiplier
    want = torch.zeros_like(nb_only).index_put((r, c), w[0] * v + w[1] * (torch.log1p(v / 0.01) / np.log1p(100.0)) + w[2],
                                              accumulate=True)
    assert torch.allclose(nb_only, want, atol=1e-5) and torch.allclose(trained, full, atol=1e-5)
    assert "explore_neural" in m.calibration_grid()


def test_the_explore_expert_adds_its_weighted_scores_on_warm_items_at_inference_only(synthetic_data):
    """e(i) += expert_weight * expert(i) on warm items (the expert never trained a cold item's row),
    at inference only; weight 0 (the default until calibration) leaves the scores as without one."""
    m, data = fitted(synthetic_data, repeat=False, cold_items="attributes")
    plain, _ = fitted(synthetic_data, repeat=False, cold_items="attributes", explore_expert="", explore_expert2="")
    assert plain.expert is None and m.expert is not None
    assert not any(p.requires_grad for p in m.expert.parameters())
    b = some_batch(data)
    with torch.no_grad():
        base = m.score(b)[:, 1:]
        assert torch.equal(base, plain.score(b)[:, 1:])   # the mixture's initialisation is unchanged
        x = m.expert.logits(b)
        m.config.expert_weight = 2.0
        lp = m.score(b)[:, 1:]
    warm = torch.from_numpy(data.item_train_count[1:] > 0)
    assert (~warm).any()
    d = lp - base - 2.0 * x * warm          # what is left is each row's log-normaliser
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-4)
    m.train()
    b.train_sessions = None
    assert torch.equal(m._parts(b, m.scoring_vectors(), False)["explore"],
                       plain.train()._parts(b, plain.scoring_vectors(), False)["explore"])


def test_a_second_expert_adds_its_weighted_scores_beside_the_first(synthetic_data):
    """mkmsr-rn-2x-sasrec: e(i) += expert_weight * expert(i) + expert2_weight * expert2(i) on warm items,
    at inference only; both frozen; the second needs a first."""
    import pytest
    data = PreparedData(synthetic_data)
    torch.manual_seed(0)
    m = build_model("mkmsr-rn-2x-sasrec", data.spec, {"dim": 16, "repeat": False, "cold_items": "attributes"})
    m.fit_statistics(data)
    m.eval()
    assert [(a, n) for a, n, _ in m.experts()] == [("expert", "core-kg"), ("expert2", "sasrec")]
    assert not any(p.requires_grad for p in m.expert2.parameters())
    assert {"expert_weight", "expert2_weight"} <= set(m.calibration_grid())
    b = some_batch(data)
    with torch.no_grad():
        base = m.score(b)[:, 1:]
        x1, x2 = m.expert.logits(b), m.expert2.logits(b)
        m.config.expert_weight, m.config.expert2_weight = 1.5, 3.0
        lp = m.score(b)[:, 1:]
    warm = torch.from_numpy(data.item_train_count[1:] > 0)
    d = lp - base - (1.5 * x1 + 3.0 * x2) * warm      # what is left is each row's log-normaliser
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-4)
    with pytest.raises(ValueError, match="needs an explore_expert"):
        build_model("mkmsr-rn", data.spec, {"dim": 8, "explore_expert": "", "explore_expert2": "sasrec"})


def test_the_expert_trains_first_as_its_own_run_and_the_mixture_trains_as_without_one(synthetic_data, tmp_path):
    """Trainer: the expert is the expert model's own run (same training options and seed, its own
    validation early stopping) in RUN/expert, frozen inside the checkpoint; the mixture's training
    (weights, selected epoch) equals mkmsr-rn-no-expert's; expert_weight is chosen on validation;
    a checkpoint saved before the expert existed loads as a model without one."""
    import json

    from mkmsr.checkpoint import load_checkpoint
    data = PreparedData(synthetic_data)
    cfg = lambda: TrainConfig(epochs=2, patience=2, batch_size=64, seed=3, threads=1)  # noqa: E731
    with_expert = Trainer(data, "mkmsr-rn-1x", {"dim": 16}, cfg(), tmp_path / "rn", progress=False)
    got = with_expert.fit()
    plain = Trainer(data, "mkmsr-rn-no-expert", {"dim": 16}, cfg(), tmp_path / "plain", progress=False)
    ref = plain.fit()
    core = Trainer(data, "core-kg", None, cfg(), tmp_path / "core", progress=False)   # the default expert
    alone = core.fit()
    assert got["explore_expert"]["test"] == alone["test"] and got["explore_expert"]["model"] == "core-kg"
    assert (tmp_path / "rn" / "expert" / "best" / "model.pt").exists()
    exp_sd = with_expert.model.expert.state_dict()
    assert all(torch.equal(v, core.model.state_dict()[k]) for k, v in exp_sd.items())
    mine = {k: v for k, v in with_expert.model.state_dict().items() if not k.startswith("expert.")}
    theirs = plain.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in mine.items())
    assert got["best_epoch"] == ref["best_epoch"]
    assert "expert_weight" in got["tuned_on_validation"]["calibration_grid"]
    assert "expert_weight" not in ref["tuned_on_validation"]["calibration_grid"]
    # the checkpoint holds the expert and serves what the trained model scores
    loaded, _ = load_checkpoint(tmp_path / "rn" / "best")
    b = some_batch(data)
    with_expert.model.eval().config.expert_weight = loaded.config.expert_weight = 1.5
    with torch.no_grad():
        assert torch.allclose(loaded.score(b), with_expert.model.score(b), atol=1e-5)
    # a checkpoint from before the options: no expert, no second expert (the default since stop 28)
    mj = tmp_path / "plain" / "best" / "model.json"
    meta = json.loads(mj.read_text())
    for k in ("explore_expert", "expert_weight", "explore_expert2", "expert2_weight", "calibration_nested"):
        del meta["config"][k]
    mj.write_text(json.dumps(meta))
    old, _ = load_checkpoint(tmp_path / "plain" / "best")
    assert old.expert is None and old.expert2 is None
    # resuming the finished run reuses its expert (no training) and gives the same figures
    again = Trainer(data, "mkmsr-rn-1x", {"dim": 16}, cfg(), tmp_path / "rn", progress=False).fit(resume=True)
    assert again["test"] == got["test"] and again["explore_expert"]["epochs_run"] == got["explore_expert"]["epochs_run"]


def test_the_default_has_no_neighbourhood(synthetic_data):
    """Since stop 23 ``mkmsr-rn`` leaves STAN out of its explore logits (validation preferred it);
    ``mkmsr-rn-nb`` is the model with them, ``mkmsr-rn-no-nb`` the old name of the default; a
    saved configuration from before the option keeps the neighbourhood it was trained with."""
    from mkmsr.models import MODELS, make_config
    from mkmsr.models.mkmsr_rn import MKMSRRN
    data = PreparedData(synthetic_data)
    m = build_model("mkmsr-rn", data.spec, {"dim": 8})
    assert not m.config.neighbours and not hasattr(m, "stan") and not hasattr(m, "nb_weight")
    assert "nb_multiplier" not in m.calibration_grid() and "expert_weight" in m.calibration_grid()
    assert build_model("mkmsr-rn-nb", data.spec, {"dim": 8}).config.neighbours
    assert make_config("mkmsr-rn-no-nb") == make_config("mkmsr-rn-1x")
    assert MODELS["mkmsr-rn-nb"][0] is MKMSRRN
    assert MKMSRRN.upgrade_config({"dim": 8})["neighbours"] is True


def test_repeat_features_by_hand():
    """log length, log distinct items, repeated share, last item seen before, op shares, last op."""
    from mkmsr.models.mkmsr_rn import repeat_features
    b = batch_from_sequences([[3, 5, 3], [7, 2]], [[1, 2, 2], [0, 1]])
    x = repeat_features(b, 3)
    assert x.shape == (2, 4 + 2 * 3)
    want0 = [np.log(3), np.log(2), 1 / 3, 1.0, 0.0, 1 / 3, 2 / 3, 0.0, 0.0, 1.0]
    want1 = [np.log(2), np.log(2), 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 1.0, 0.0]
    assert torch.allclose(x, torch.tensor([want0, want1], dtype=torch.float32), atol=1e-6)


def test_the_repeat_hurdle_splits_the_mass_between_session_and_new_items(synthetic_data):
    """q = sigmoid(T z + b) of the mass on the session's items, the rest on the others, each part
    in the model's own order; off (b <= -20) changes nothing; the regression is fitted on the train
    split and travels in the checkpoint."""
    m, data = fitted(synthetic_data, neighbours=False, explore_expert="", explore_expert2="")
    assert float(m.hurdle_w.abs().sum()) > 0                               # fitted in fit_statistics
    b = some_batch(data, 8)
    with torch.no_grad():
        off = m.logits(b)
        m.config.hurdle_shift, m.config.hurdle_temperature = 1.0, 2.0
        on = m.logits(b)
        z = m.repeat_logit(b)
    inside = torch.zeros(len(b), data.spec.n_items + 1, dtype=torch.bool).scatter_(1, b.items, b.mask)[:, 1:]
    mass_in = torch.logsumexp(on.masked_fill(~inside, float("-inf")), 1)
    assert torch.allclose(mass_in, F.logsigmoid(2.0 * z + 1.0), atol=1e-5)
    assert torch.allclose(torch.logsumexp(on, 1), torch.zeros(len(b)), atol=1e-5)
    for r in range(len(b)):      # the order within each part is the model's
        for part in (inside[r], ~inside[r]):
            assert torch.equal(torch.argsort(off[r][part], stable=True), torch.argsort(on[r][part], stable=True))
    m.config.hurdle_shift = -20.0
    with torch.no_grad():
        assert torch.equal(m.logits(b), off)
    # a checkpoint from before the hurdle (no regression buffers) still loads, unfitted
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("hurdle_")}
    fresh = build_model("mkmsr-rn", data.spec, {"dim": 16, "explore_expert": "", "explore_expert2": ""})
    fresh.load_state_dict(sd)
    assert float(fresh.hurdle_w.abs().sum()) == 0.0


def test_the_hurdle_is_calibrated_unless_switched_off(synthetic_data):
    m, data = fitted(synthetic_data, neighbours=False, explore_expert="", explore_expert2="")
    grid = m.calibration_grid()
    assert grid["hurdle_shift"][0] == -20.0 and "hurdle_temperature" in grid
    off = build_model("mkmsr-rn-no-hurdle", data.spec, {"dim": 8, "explore_expert": "", "explore_expert2": ""})
    assert "hurdle_shift" not in off.calibration_grid()
    # a saved configuration from before the hurdle keeps meaning the model without it
    assert type(m).upgrade_config({"dim": 8})["repeat_hurdle"] is False


def test_the_knowledge_prior_scores_by_hand(synthetic_data):
    """k(s, i) = sum over i's attribute values a of v(a) * (recency-weighted share of the session's
    positions whose item has a), v = idf^gamma rescaled to mean 1 over the triplets."""
    m, data = fitted(synthetic_data, neighbours=False, explore_expert="", explore_expert2="", prior_idf=1.0, prior_recency=2.0)
    b = some_batch(data, 4)
    got = m.knowledge_prior_scores(b)
    n = data.spec.n_items
    assert got.shape == (4, n)
    items, values = m.attr_item.tolist(), m.attr_value.tolist()
    support: dict[int, int] = {}
    for a in values:
        support[a] = support.get(a, 0) + 1
    idf = {a: max(np.log((n + 1) / c), 0.0) for a, c in support.items()}
    mean_v = np.mean([idf[a] for a in values])
    has: dict[int, set] = {}
    for i, a in zip(items, values):
        has.setdefault(i, set()).add(a)
    for r in range(len(b)):
        L = int(b.lengths[r])
        w = [np.exp(-(L - 1 - t) / 2.0) for t in range(L)]
        seq = [int(b.items[r, t]) for t in range(L)]
        for i in (1, 5, 17, seq[0], n):
            want = sum(idf[a] / mean_v * sum(wt for wt, x in zip(w, seq) if a in has.get(x, ())) / sum(w)
                       for a in has.get(i, ()))
            assert abs(float(got[r, i - 1]) - want) < 1e-4, (r, i)
    assert float(got[:, seq[0] - 1].max()) > 0


def test_the_knowledge_prior_moves_only_the_new_items(synthetic_data):
    """With prior_weight w the items outside the session are re-ranked by log p + w k and keep
    their total mass; the session's items are untouched; w = 0 (or knowledge_prior off) changes
    nothing."""
    m, data = fitted(synthetic_data, neighbours=False, explore_expert="", explore_expert2="")
    b = some_batch(data, 8)
    with torch.no_grad():
        off = m.logits(b)
        k = m.knowledge_prior_scores(b)
        m.config.prior_weight, m.config.prior_idf = 4.0, 1.0
        on = m.logits(b)
        k1 = m.knowledge_prior_scores(b)
        m.config.knowledge_prior = False
        assert torch.equal(m.logits(b), off)
    assert not torch.equal(k, k1)                     # gamma changes the value weights
    inside = torch.zeros(len(b), data.spec.n_items + 1, dtype=torch.bool).scatter_(1, b.items, b.mask)[:, 1:]
    assert torch.equal(on[inside], off[inside])
    neg = float("-inf")
    assert torch.allclose(torch.logsumexp(on.masked_fill(inside, neg), 1), torch.logsumexp(off.masked_fill(inside, neg), 1),
                          atol=1e-5)
    want = off + 4.0 * k1
    for r in range(len(b)):
        out = ~inside[r]
        assert torch.allclose(on[r][out] - on[r][out].max(), want[r][out] - want[r][out].max(), atol=1e-4)
    assert not torch.equal(on, off)


def test_the_knowledge_prior_is_calibrated_unless_switched_off(synthetic_data):
    m, data = fitted(synthetic_data, neighbours=False, explore_expert="", explore_expert2="")
    grid = m.calibration_grid()
    assert grid["prior_weight"][0] == 0.0 and grid["prior_idf"][0] == 0.0
    off = build_model("mkmsr-rn-no-prior", data.spec, {"dim": 8, "explore_expert": "", "explore_expert2": ""})
    assert "prior_weight" not in off.calibration_grid() and "hurdle_shift" in off.calibration_grid()
    # a saved configuration from before the prior keeps meaning the model without it
    assert type(m).upgrade_config({"dim": 8})["knowledge_prior"] is False


def test_the_no_knowledge_routes_ablation_drops_match_and_prior_and_reuses_training(synthetic_data):
    """``mkmsr-rn-no-match-prior`` switches off both inference-time routes from the knowledge graph to
    a new item (the cold-item match and the calibrated prior) and nothing else, so the benchmark
    finishes it from ``mkmsr-rn-1x``'s training."""
    import dataclasses
    import json

    from mkmsr.models import MODELS, make_config
    spec = PreparedData(synthetic_data).spec
    off = build_model("mkmsr-rn-no-match-prior", spec, {"dim": 8, "explore_expert": "", "explore_expert2": ""})
    assert off.config.cold_items == "attributes" and off.config.knowledge_prior is False
    assert "prior_weight" not in off.calibration_grid()
    full, ablated = (json.loads(json.dumps(dataclasses.asdict(make_config(n, {})), default=list))
                     for n in ("mkmsr-rn-1x", "mkmsr-rn-no-match-prior"))
    assert {k for k in full if full[k] != ablated[k]} == {"cold_items", "knowledge_prior"}
    cls = MODELS["mkmsr-rn-1x"][0]
    assert cls.training_identity(full) == cls.training_identity(ablated)
