"""The session graph of §3.3.2 and the GGNN update of Eq. 1."""
import torch

from mkmsr.models.layers import GGNN, session_graph


def test_fig1_session_s1_graph_and_weights():
    # Fig. 1, session s1: item sequence {i1, i1, i1, i2, i2} (items 7 and 9 here), plus a padded row
    items = torch.tensor([[7, 7, 7, 9, 9], [3, 4, 0, 0, 0]])
    lengths = torch.tensor([5, 2])
    g = session_graph(items, lengths)
    assert g.nodes[0].tolist() == [7, 9]
    assert g.alias[0].tolist() == [0, 0, 0, 1, 1]
    # edges: i1->i1 twice, i1->i2 once, i2->i2 once. Outgoing weight = count / times the source precedes
    assert torch.allclose(g.A_out[0], torch.tensor([[2 / 3, 1 / 3], [0.0, 1.0]]))
    # incoming weight = count / times the target succeeds: i1 is entered 2x (from i1), i2 2x (i1, i2)
    assert torch.allclose(g.A_in[0], torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert g.node_mask.tolist() == [[True, True], [True, True]]
    assert g.nodes[1].tolist() == [3, 4]
    assert torch.allclose(g.A_out[1], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))


def test_binary_edge_weights_count_each_edge_once():
    g = session_graph(torch.tensor([[7, 7, 7, 9, 9]]), torch.tensor([5]), edge_weight="binary")
    assert torch.allclose(g.A_out[0], torch.tensor([[0.5, 0.5], [0.0, 1.0]]))


def test_padding_never_becomes_a_node():
    g = session_graph(torch.tensor([[5, 6, 5, 0, 0, 0]]), torch.tensor([3]))
    assert g.nodes[0].tolist() == [5, 6]
    assert g.alias[0, :3].tolist() == [0, 1, 0]


def test_ggnn_sum_is_eq1():
    torch.manual_seed(0)
    d = 6
    net = GGNN(d, steps=1, mode="sum")
    for p in net.parameters():
        torch.nn.init.normal_(p)
    items = torch.tensor([[1, 2, 1, 3]])
    g = session_graph(items, torch.tensor([4]))
    h0 = torch.randn(1, g.nodes.shape[1], d)
    out = net(g.A_in, g.A_out, h0)[0]
    W_az, W_ar, W_ac = net.W_a.weight.chunk(3, 0)
    W_hz, W_hr = net.W_h.weight.chunk(2, 0)
    for v in range(g.nodes.shape[1]):
        a = (g.A_in[0, v] + g.A_out[0, v]) @ h0[0] + net.b
        h = h0[0, v]
        z = torch.sigmoid(W_az @ a + W_hz @ h)
        r = torch.sigmoid(W_ar @ a + W_hr @ h)
        c = torch.tanh(W_ac @ a + net.W_hc.weight @ (r * h))
        assert torch.allclose(out[v], (1 - z) * h + z * c, atol=1e-5)


def test_ggnn_concat_matches_srgnn_cell_and_steps_compose():
    torch.manual_seed(1)
    net = GGNN(4, steps=2, mode="concat")
    g = session_graph(torch.tensor([[1, 2, 3, 2]]), torch.tensor([4]))
    h0 = torch.randn(1, 3, 4)
    two = net(g.A_in, g.A_out, h0)
    assert torch.allclose(two, net.cell(g.A_in, g.A_out, net.cell(g.A_in, g.A_out, h0)))
    assert two.shape == h0.shape
