"""Equivalence of the rewritten hot paths (issue 4) with the straightforward formulas."""
import torch
import torch.nn.functional as F

from mkmsr.data.batching import Batch
from mkmsr.data.dataset import DatasetSpec
from mkmsr.models import build_model
from mkmsr.models.base import SessionModel
from mkmsr.models.layers import full_softmax_ce

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
