"""Equivalence of the rewritten hot paths (issue 4) with the straightforward formulas."""
import torch
import torch.nn.functional as F

from mkmsr.data.batching import Batch
from mkmsr.data.dataset import DatasetSpec
from mkmsr.models import build_model
from mkmsr.models.base import SessionModel
from mkmsr.models.layers import cosine_item_vectors, full_softmax_ce

SPEC = DatasetSpec(n_items=50, n_entities=60, n_ops=4, n_relations=2)


def test_fused_softmax_cross_entropy_matches_cross_entropy_and_its_gradients():
    g = torch.Generator().manual_seed(0)
    s = (3 * torch.randn(7, 5, generator=g)).requires_grad_()
    E = torch.randn(300, 5, generator=g).requires_grad_()
    t = torch.randint(1, 300, (7,), generator=g)
    t[3] = t[5]  # a target twice in the batch
    loss = full_softmax_ce(s, E, t)
    gs, gE = torch.autograd.grad(2.5 * loss, (s, E))
    ref = F.cross_entropy(s @ E[1:].T, t - 1)
    rs, rE = torch.autograd.grad(2.5 * ref, (s, E))
    assert torch.allclose(loss, ref, atol=1e-6)
    assert torch.allclose(gs, rs, atol=1e-6) and torch.allclose(gE, rE, atol=1e-6)
    assert not gE[0].any()  # the padding row is no candidate


def batch_with_repeated_operation_sequences() -> Batch:
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 0], [7, 8, 9, 10], [1, 2, 3, 0], [11, 1, 0, 0]])
    ops = torch.tensor([[1, 1, 2, 0], [1, 1, 2, 0], [1, 1, 2, 3], [1, 1, 2, 0], [3, 1, 0, 0]])
    return Batch(items, ops, torch.tensor([3, 3, 4, 3, 2]), torch.tensor([4, 7, 11, 4, 2]))


def test_operation_gru_once_per_distinct_sequence_equals_per_row():
    torch.manual_seed(0)
    m = build_model("mkmsr", SPEC, {"dim": 8})
    b = batch_with_repeated_operation_sequences()
    M = m.micro_behaviours(b)
    o0 = m.op_embedding(b.ops)
    O, _ = m.op_gru(o0, o0[:, 0][None].contiguous())  # every row on its own, no sharing
    assert torch.allclose(M[:, :, 8:], O, atol=1e-6)


def test_model_loss_and_gradients_equal_the_plain_cross_entropy():
    torch.manual_seed(1)
    m = build_model("mkmsr", SPEC, {"dim": 8})
    b = batch_with_repeated_operation_sequences()
    fast = m.sr_loss(b)
    g_fast = torch.autograd.grad(fast, list(m.parameters()), allow_unused=True)
    plain = SessionModel.sr_loss(m, b)  # F.cross_entropy over m.logits(b)
    g_plain = torch.autograd.grad(plain, list(m.parameters()), allow_unused=True)
    assert torch.allclose(fast, plain, atol=1e-6)
    for a, r in zip(g_fast, g_plain):
        assert (a is None) == (r is None)
        if a is not None:
            assert torch.allclose(a, r, atol=1e-6)


def test_fused_cosine_item_vectors_match_normalize_of_the_attribute_sum_and_its_gradients():
    g = torch.Generator().manual_seed(2)
    n, n_attr, d = 40, 12, 6
    rows = torch.arange(1, n + 1).repeat_interleave(2)
    cols = torch.randint(0, n_attr, (rows.numel(),), generator=g)
    A = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.full((rows.numel(),), 0.5),
                                (n + 1, n_attr)).coalesce()
    E = torch.randn(n + 1, d, generator=g).requires_grad_()
    W = torch.randn(n_attr, d, generator=g).requires_grad_()
    keep = (torch.rand(n + 1, generator=g) > 0.3).float()
    G = torch.randn(n + 1, d, generator=g)
    for k in (None, keep):
        V = cosine_item_vectors(E, W, A.to_sparse_csr(), A.t().coalesce().to_sparse_csr(), k)
        dE, dW = torch.autograd.grad((V * G).sum(), (E, W))
        Ek = E if k is None else E * k[:, None]
        R = F.normalize(Ek + torch.sparse.mm(A, W), dim=-1)
        rE, rW = torch.autograd.grad((R * G).sum(), (E, W))
        assert torch.allclose(V, R, atol=1e-6)
        assert torch.allclose(dE, rE, atol=1e-5) and torch.allclose(dW, rW, atol=1e-5)
        if k is not None:
            assert not dE[k == 0].any()      # a dropped / cold item's own row gets no gradient


def test_mkmsr_plus_and_rn_item_vectors_take_the_fused_path_with_the_same_values():
    torch.manual_seed(3)
    for name in ("mkmsr+", "mkmsr-rn"):
        m = build_model(name, SPEC, {"dim": 8} if name == "mkmsr+" else {"dim": 8, "explore_expert": "", "explore_expert2": ""})
        with torch.no_grad():                 # a few attribute rows so the mean is not empty
            m.attr_item = torch.tensor([1, 2, 2, 5, 9])
            m.attr_value = torch.tensor([0, 1, 3, 3, 7])
            m.attr_weight = torch.tensor([1.0, 0.5, 0.5, 1.0, 1.0])
        m.train()
        V = m._scoring_vectors()
        keep = m._keep if name == "mkmsr-rn" else None
        E = m.item_embedding.weight if keep is None else m.item_embedding.weight * keep[:, None]
        ref = F.normalize(E + torch.sparse.mm(m._attribute_matrix(), m.attr_embedding.weight), dim=-1)
        assert torch.allclose(V, ref, atol=1e-6), name
