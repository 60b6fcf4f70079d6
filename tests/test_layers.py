"""Operation GRU (Eq. 3), soft attention (Eq. 6-8) and TransH (Eq. 11-12)."""
import torch

from mkmsr.data.batching import Batch
from mkmsr.data.dataset import DatasetSpec
from mkmsr.models import build_model
from mkmsr.models.layers import SoftAttention, TransH

SPEC = DatasetSpec(n_items=10, n_entities=16, n_ops=4, n_relations=2)


def _model(**over):
    torch.manual_seed(0)
    return build_model("mkmsr", SPEC, {"dim": 8, **over})


def test_operation_gru_starts_from_first_operation_embedding():
    m = _model()
    ops = torch.tensor([[2, 1, 3]])
    batch = Batch(torch.tensor([[1, 2, 3]]), ops, torch.tensor([3]))
    M = m.micro_behaviours(batch)
    o0 = m.op_embedding(ops)[0]
    cell = torch.nn.GRUCell(8, 8)
    cell.weight_ih.data, cell.weight_hh.data = m.op_gru.weight_ih_l0.data, m.op_gru.weight_hh_l0.data
    cell.bias_ih.data, cell.bias_hh.data = m.op_gru.bias_ih_l0.data, m.op_gru.bias_hh_l0.data
    h = o0[0]  # Eq. 3: h_{t0} = o^0_{t1}
    for t in range(3):
        h = cell(o0[t][None], h[None])[0]
        assert torch.allclose(M[0, t, 8:], h, atol=1e-6)


def test_zeros_h0_option_differs():
    a = _model().micro_behaviours(Batch(torch.tensor([[1, 2]]), torch.tensor([[2, 1]]), torch.tensor([2])))
    b = _model(op_h0="zeros").micro_behaviours(Batch(torch.tensor([[1, 2]]), torch.tensor([[2, 1]]), torch.tensor([2])))
    assert not torch.allclose(a[0, :, 8:], b[0, :, 8:])


def test_micro_behaviour_is_item_then_operation():
    m = _model()
    M = m.micro_behaviours(Batch(torch.tensor([[4, 5]]), torch.tensor([[1, 2]]), torch.tensor([2])))
    assert M.shape == (1, 2, 16)
    assert _model(use_operations=False).micro_behaviours(
        Batch(torch.tensor([[4, 5]]), torch.tensor([[1, 2]]), torch.tensor([2]))).shape == (1, 2, 8)


def test_attention_masks_padding_and_matches_eq6_7():
    torch.manual_seed(0)
    att = SoftAttention(4)
    M = torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, True, False, False]])
    last = M[0, 2][None]
    s_g, alpha = att(M, last, mask)
    assert alpha[0, 3:].abs().sum() == 0
    ref = sum((att.beta.weight[0] @ torch.sigmoid(att.W1.weight @ last[0] + att.W2.weight @ M[0, t] + att.W2.bias)) * M[0, t]
              for t in range(3))
    assert torch.allclose(s_g[0], ref, atol=1e-6)
    M2 = M.clone()
    M2[0, 3:] = 99.0  # whatever sits in padding positions does not matter
    assert torch.allclose(att(M2, last, mask)[0], s_g)


def test_padded_session_encodes_like_unpadded():
    m = _model().eval()
    short = Batch(torch.tensor([[3, 4]]), torch.tensor([[1, 2]]), torch.tensor([2]))
    padded = Batch(torch.tensor([[3, 4, 0, 0]]), torch.tensor([[1, 2, 0, 0]]), torch.tensor([2]))
    assert torch.allclose(m.encode(short), m.encode(padded), atol=1e-6)


def test_transh_normals_unit_and_projection_orthogonal():
    torch.manual_seed(0)
    t = TransH(3, 5)
    with torch.no_grad():
        t.w.weight.mul_(7.0)  # the raw table may drift; normals stay unit
    r = torch.tensor([0, 1, 2])
    w = t.normals(r)
    assert torch.allclose(w.norm(dim=1), torch.ones(3), atol=1e-6)
    e = torch.randn(3, 5)
    assert torch.allclose((TransH.project(e, w) * w).sum(1), torch.zeros(3), atol=1e-5)


def test_transh_perfect_triplet_scores_zero_and_matches_eq12():
    torch.manual_seed(0)
    t = TransH(2, 4)
    r = torch.tensor([1])
    w = t.normals(r)
    h = torch.randn(1, 4)
    # a perfect triplet: the translated head projection lands on the tail projection
    d_perp = t.d(r) - (t.d(r) * w).sum(1, keepdim=True) * w
    tail = TransH.project(h, w) + d_perp + 3.0 * w  # any component along w is projected away
    t.d.weight.data[1] = d_perp[0]
    assert t.score(h, r, tail).item() < 1e-10
    other = torch.randn(1, 4)
    ref = ((h - (w * h).sum() * w) + t.d(r) - (other - (w * other).sum() * w)).pow(2).sum()
    assert torch.allclose(t.score(h, r, other), ref)


def test_transh_is_per_triplet_permutation_equivariant():
    torch.manual_seed(0)
    t = TransH(3, 4)
    h, tail = torch.randn(6, 4), torch.randn(6, 4)
    r = torch.tensor([0, 1, 2, 0, 1, 2])
    s = t.score(h, r, tail)
    p = torch.randperm(6)
    assert torch.allclose(t.score(h[p], r[p], tail[p]), s[p])


def test_kg_loss_sums_triplet_scores():
    m = _model()
    trip = torch.tensor([[1, 0, 11], [2, 1, 13], [3, 0, 12]])
    assert torch.allclose(m.kg_loss(trip), m.triplet_scores(trip).sum())
    assert torch.allclose(m.kg_loss(trip, sparse=True), m.kg_loss(trip))
    w = torch.tensor([1.0, 2.0, 0.0])
    assert torch.allclose(m.kg_loss(trip, w), (m.triplet_scores(trip) * w).sum())


def test_attribute_composed_items_and_cosine_scoring():
    from mkmsr.models.mkmsr import MKMSR, MKMSRConfig

    class Data:  # the two things fit_statistics reads
        import numpy as _np
        kg = _np.array([[1, 0, 11], [1, 1, 13], [2, 0, 12]])
    torch.manual_seed(0)
    m = MKMSR(MKMSRConfig(dim=8, item_repr="id+attributes", scoring="cosine", score_scale=5.0), SPEC)
    m.fit_statistics(Data)
    E, A = m.item_embedding.weight, m.attr_embedding.weight
    V = m.item_embeddings()
    assert torch.allclose(V[1], E[1] + (A[0] + A[2]) / 2)  # entity 11 -> attribute row 0, 13 -> row 2
    assert torch.allclose(V[2], E[2] + A[1])
    assert torch.allclose(V[3], E[3])  # no knowledge: its own embedding
    b = Batch(torch.tensor([[1, 2]]), torch.tensor([[1, 2]]), torch.tensor([2]))
    lg = m.logits(b)
    s = m.encode(b, torch.nn.functional.normalize(V, dim=-1))
    cos = torch.nn.functional.cosine_similarity(s, V[1:], dim=-1)
    assert torch.allclose(lg[0], 5.0 * cos, atol=1e-5)
    assert lg.abs().max() <= 5.0 + 1e-5


def test_repeat_boost_adds_to_items_of_the_session_once_and_not_in_training():
    plain = _model()
    boosted = _model(repeat_boost=3.0)
    boosted.load_state_dict(plain.state_dict())
    b = Batch(torch.tensor([[3, 4, 3], [5, 0, 0]]), torch.tensor([[1, 2, 2], [3, 0, 0]]), torch.tensor([3, 1]),
              torch.tensor([4, 6]))
    diff = boosted.logits(b) - plain.logits(b)
    expect = torch.zeros_like(diff)
    expect[0, 2], expect[0, 3], expect[1, 4] = 3.0, 3.0, 3.0  # items 3 (twice: once), 4 and 5; column j = item j + 1
    assert torch.allclose(diff, expect, atol=1e-6)
    assert torch.allclose(boosted.sr_loss(b), plain.sr_loss(b))
