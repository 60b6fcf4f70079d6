"""Issue 10, training at catalogue scale: bfloat16 scoring GEMMs and the sampled softmax with logQ
correction, against float32 and brute-force references; their training options end to end."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mkmsr.data.dataset import PreparedData
from mkmsr.errors import ConfigError
from mkmsr.models import build_model, scoring
from mkmsr.models.scoring import SampledSoftmax, batch_sr_loss, full_softmax_ce, sampled_softmax_ce, training_loss
from mkmsr.training.train import LazyAdam, TrainConfig, Trainer

U = 2.0 ** -8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: the GPU "
                          "variant of this test runs where one is present")


def vectors(B=16, d=32, N=2000, seed=0, scale=1.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(B, d, generator=g)).to(device).requires_grad_()
    E = (0.5 * torch.randn(N + 1, d, generator=g)).to(device).requires_grad_()
    t = torch.randint(1, N + 1, (B,), generator=g).to(device)
    t[3] = t[5]  # a target twice in the batch
    return s, E, t


# --------------------------------------------------------------------------------------------
# bf16 full softmax against float32
# --------------------------------------------------------------------------------------------

def bf16_against_float32(s, E, t):
    ref = F.cross_entropy(s @ E[1:].T, t - 1)
    rs, rE = torch.autograd.grad(3.0 * ref, (s, E))
    got = full_softmax_ce(s, E, t, "bf16")
    gs, gE = torch.autograd.grad(3.0 * got, (s, E))
    with torch.no_grad():
        z = s @ E.T
        # error of one logit: each operand rounded (2u relative on each product), the GEMM output
        # rounded (u relative); a float32 accumulation adds nothing at this size
        dz = (2 * U * (s.abs() @ E.abs().T) + U * z.abs())[:, 1:]
        delta = float(dz.max())
        P = torch.softmax(z[:, 1:], dim=1)
        # |d log-softmax| <= 2 max |dz|; P moves by a factor within exp(+-2 delta), then P, E and s
        # are rounded (u each) and the GEMM outputs rounded (u)
        rel = math.expm1(2 * delta) + 3 * U
        bound_s = 3.0 * (rel * (P @ E[1:].abs()) + U * E[t].abs()) / len(t)
        bound_E = 3.0 * rel * (P.T @ s.abs()) / len(t)
    assert abs(float(got.detach()) - float(ref.detach())) <= 2 * delta
    f32 = 2.0 ** -20  # the float32 reference's own rounding
    assert ((gs - rs).abs() <= 1.5 * bound_s + f32 * rs.abs() + 1e-7).all()
    assert ((gE[1:] - rE[1:]).abs() <= 1.5 * bound_E + f32 * rE[1:].abs() + 1e-7).all()
    assert not gE[0].any()  # the padding row is no candidate
    assert got.dtype == gs.dtype == gE.dtype == torch.float32
    # and in practice far inside the bounds
    assert abs(float(got.detach()) - float(ref.detach())) < 1e-3 * max(1.0, float(ref.detach()))
    assert (gs - rs).norm() / rs.norm() < 2e-2 and (gE - rE).norm() / rE.norm() < 2e-2
    return got, ref


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_bf16_full_softmax_loss_and_gradients_within_the_rounding_bounds_of_float32(scale):
    bf16_against_float32(*vectors(scale=scale))


def test_bf16_model_loss_is_close_to_float32_for_mkmsr(planted_data):
    data = PreparedData(planted_data)
    torch.manual_seed(0)
    model = build_model("mkmsr", data.spec, {"dim": 16})
    from mkmsr.data.batching import make_batch
    arr = data.split("train")
    sess, prefix = arr.samples()
    b = make_batch(arr, sess[:64], prefix[:64])
    full = model.sr_loss(b)
    g_full = torch.autograd.grad(full, [model.item_embedding.weight])[0]
    bf = batch_sr_loss(model, b, lambda s, V, t, rng: full_softmax_ce(s, V, t, "bf16"), None)
    g_bf = torch.autograd.grad(bf, [model.item_embedding.weight])[0]
    assert abs(float(bf.detach()) - float(full.detach())) < 1e-2
    assert (g_bf - g_full).norm() / g_full.norm() < 2e-2


# --------------------------------------------------------------------------------------------
# sampled softmax against a brute-force reference
# --------------------------------------------------------------------------------------------

def brute_force_sampled(s, E, t, neg, log_q):
    """Row by row, candidate by candidate, in float64: -log softmax over the corrected logits of
    the in-batch targets and the negatives, accidental hits left out."""
    cand = [int(c) for c in t] + [int(c) for c in neg]
    total = 0.0
    for b in range(len(t)):
        terms, pos = [], None
        for c, item in enumerate(cand):
            if item == int(t[b]) and c != b:
                continue  # accidental hit
            logit = (s[b].double() * E[item].double()).sum() - float(log_q[c])
            terms.append(logit)
            if c == b:
                pos = logit
        total = total - (pos - torch.logsumexp(torch.stack(terms), dim=0))
    return total / len(t)


def test_sampled_softmax_value_and_gradient_equal_a_brute_force_reference_on_a_tiny_catalogue():
    g = torch.Generator().manual_seed(3)
    N, d = 7, 4
    s = torch.randn(5, d, generator=g).requires_grad_()
    E = torch.randn(N + 1, d, generator=g).requires_grad_()
    t = torch.tensor([2, 5, 2, 7, 1])                  # item 2 twice: in-batch accidental hits
    neg = torch.tensor([5, 3, 3, 6, 2, 1, 4])          # hits of targets 5, 2, 1; item 3 twice
    counts = np.array([0, 2, 4, 3, 1, 2, 1, 1])         # every item drawable
    ss = SampledSoftmax(len(neg), "popularity", counts, "cpu")
    log_q = ss.log_q(t, neg)
    # logQ by hand: log(B p(j) + M q(j)) with p = q = target frequency
    p = counts / counts.sum()
    cand = np.concatenate([t.numpy(), neg.numpy()])
    assert np.allclose(log_q.numpy(), np.log(5 * p[cand] + 7 * p[cand]), atol=1e-6)

    got = sampled_softmax_ce(s, E, t, neg, log_q)
    gs, gE = torch.autograd.grad(got, (s, E))
    ref = brute_force_sampled(s, E, t, neg, log_q)
    rs, rE = torch.autograd.grad(ref, (s, E))
    # the returned value is the standard loss minus the mean log Q of the positives (a constant)
    assert torch.allclose(got.double(), ref - log_q[:5].double().mean(), atol=1e-5)
    assert torch.allclose(gs, rs, atol=1e-5) and torch.allclose(gE, rE, atol=1e-5)
    assert not gE[0].any()


def test_sampled_softmax_with_many_negatives_converges_to_the_full_softmax_only_with_the_logq_correction():
    """With M >> N draws every item appears about M q(j) times, so the corrected sum over the
    candidates approaches the full softmax's: value and gradient approach the full loss's. Without
    the correction a popularity sampler biases the gradient towards the frequent items."""
    s, E, t = vectors(B=8, d=8, N=40, seed=1)
    counts = np.r_[0, np.arange(40, 0, -1)]           # skewed: item 1 is 40 times as frequent as item 40
    rng = np.random.default_rng(0)
    full = F.cross_entropy(s @ E[1:].T, t - 1)
    fs, fE = torch.autograd.grad(full, (s, E))
    ss = SampledSoftmax(1_000_000, "popularity", counts, "cpu")
    neg = ss.draw(rng)
    lq = ss.log_q(t, neg)
    got = sampled_softmax_ce(s, E, t, neg, lq)
    gs, gE = torch.autograd.grad(got, (s, E))
    assert abs(float(got.detach()) - float(full.detach())) < 0.02
    assert (gs - fs).norm() / fs.norm() < 0.03 and (gE - fE).norm() / fE.norm() < 0.03  # 0.011, 0.010 seen
    plain = sampled_softmax_ce(s, E, t, neg, torch.zeros_like(lq))
    ps, _ = torch.autograd.grad(plain, (s, E))
    assert (ps - fs).norm() / fs.norm() > 0.08  # 0.125 seen


def test_sampler_draws_from_its_distribution_and_never_the_padding():
    counts = np.array([0, 10, 0, 30, 60])
    rng = np.random.default_rng(0)
    pop = SampledSoftmax(20_000, "popularity", counts, "cpu").draw(rng).numpy()
    freq = np.bincount(pop, minlength=5) / pop.size
    assert freq[0] == 0 and freq[2] == 0
    assert np.allclose(freq[[1, 3, 4]], [0.1, 0.3, 0.6], atol=0.02)
    uni = SampledSoftmax(20_000, "uniform", counts, "cpu").draw(rng).numpy()
    assert uni.min() == 1 and uni.max() == 4
    assert np.allclose(np.bincount(uni, minlength=5)[1:] / uni.size, 0.25, atol=0.02)
    a = SampledSoftmax(50, "uniform", counts, "cpu").draw(np.random.default_rng(7))
    b = SampledSoftmax(50, "uniform", counts, "cpu").draw(np.random.default_rng(7))
    assert torch.equal(a, b)


def test_in_batch_only_needs_no_drawn_negatives():
    s, E, t = vectors(B=6, d=4, N=30)
    counts = np.bincount(t.numpy(), minlength=31)
    loss = SampledSoftmax(0, "uniform", counts, "cpu")(s, E, t, np.random.default_rng(0))
    assert torch.isfinite(loss)


# --------------------------------------------------------------------------------------------
# the options: validation, hardware, models, training end to end
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,match", [("precision", "fp16", "precision"), ("loss", "nce", "loss"),
                                               ("sampler", "zipf", "sampler"), ("negatives", -1, "negatives")])
def test_bad_options_are_config_errors(field, value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{field: value}).validate()


def test_bf16_without_native_support_is_refused_with_what_was_found(planted_data, monkeypatch):
    monkeypatch.setattr(scoring, "bf16_support", lambda device: (False, "CPU capability AVX2, AMX tiles no"))
    with pytest.raises(ConfigError, match=r"bf16 needs native bfloat16.*AVX2.*float32"):
        Trainer(PreparedData(planted_data), "mkmsr", {"dim": 8}, TrainConfig(precision="bf16", device="cpu"),
                progress=False)


def test_bf16_support_probe_answers_on_this_machine():
    ok, found = scoring.bf16_support("cpu")
    assert isinstance(ok, bool) and "CPU capability" in found


@pytest.mark.parametrize("name", ["mkmsr-rn", "gru4rec-bpr", "repeatnet", "fpmc", "pop"])
def test_models_whose_loss_is_not_a_dot_product_softmax_refuse_the_options_by_name(name, planted_data, monkeypatch):
    monkeypatch.setattr(scoring, "bf16_support", lambda device: (True, "patched"))
    for cfg in (TrainConfig(loss="sampled", negatives=4, epochs=1), TrainConfig(precision="bf16", epochs=1)):
        with pytest.raises(ConfigError, match=rf"model '{name}' cannot train with"):
            Trainer(PreparedData(planted_data), name, {}, cfg, progress=False).fit()


def test_default_options_leave_the_models_own_loss_in_charge():
    assert training_loss("full", "float32", 2048, "uniform", None, "cpu") is None


@pytest.mark.parametrize("opts", [{"loss": "sampled", "negatives": 4, "sampler": "uniform"},
                                  {"loss": "sampled", "negatives": 4, "sampler": "popularity"},
                                  {"loss": "sampled", "negatives": 0},
                                  {"precision": "bf16"},
                                  {"precision": "bf16", "loss": "sampled", "negatives": 4}])
def test_training_with_the_options_learns_the_planted_next_item(opts, planted_data, tmp_path, monkeypatch):
    # bf16 is emulated on a CPU without AMX / AVX-512 BF16: slow, but right; let the tiny run through
    monkeypatch.setattr(scoring, "bf16_support", lambda device: (True, "patched for the test"))
    cfg = TrainConfig(epochs=8, patience=8, batch_size=32, lr=5e-3, seed=0, **opts)
    tr = Trainer(PreparedData(planted_data), "sr-gnn", {"dim": 16}, cfg, tmp_path / "run", progress=False)
    metrics = tr.fit()
    losses = [h["sr_loss"] for h in tr.history]
    assert losses[-1] < losses[0]
    # evaluation ranks the whole catalogue in float32, whatever the training loss
    assert metrics["valid"]["hit@5"] > 90, metrics["valid"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train_config"]
    assert all(saved[k] == v for k, v in opts.items())


def test_a_time_budget_cuts_the_epoch_and_still_evaluates(planted_data):
    cfg = TrainConfig(epochs=5, patience=5, batch_size=32, seed=0, time_budget_s=1e-6, eval_test_each_epoch=False)
    tr = Trainer(PreparedData(planted_data), "sr-gnn", {"dim": 8}, cfg, progress=False)
    metrics = tr.fit()
    n = tr.data.manifest["splits"]["train"]["samples"]
    assert len(tr.history) == 1 and tr.history[0]["train_samples"] == 32 < n  # one step, then the budget is spent
    assert metrics["best_epoch"] == 1 and "mrr@20" in metrics["valid"]
    with pytest.raises(ConfigError, match="time_budget_s"):
        TrainConfig(time_budget_s=-1).validate()


def test_sampled_training_is_deterministic_for_a_seed(planted_data):
    def run():
        cfg = TrainConfig(epochs=2, patience=2, batch_size=32, seed=3, loss="sampled", negatives=5,
                          eval_test_each_epoch=False)
        tr = Trainer(PreparedData(planted_data), "mkmsr", {"dim": 8}, cfg, progress=False)
        tr.fit()
        return [h["sr_loss"] for h in tr.history]
    assert run() == run()


def test_cli_train_flags_reach_the_train_config(planted_data, tmp_path):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "mkmsr", "-q", "train", "--data", str(planted_data), "--model", "sr-gnn",
                        "--out", str(tmp_path / "r"), "--epochs", "1", "--no-progress", "--loss", "sampled",
                        "--negatives", "6", "--sampler", "popularity", "--model-opt", "dim=8"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr + p.stdout
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["train_config"]
    assert (saved["loss"], saved["negatives"], saved["sampler"], saved["precision"]) == ("sampled", 6, "popularity",
                                                                                          "float32")
    p = subprocess.run([sys.executable, "-m", "mkmsr", "-q", "train", "--data", str(planted_data), "--model",
                        "mkmsr-rn", "--out", str(tmp_path / "r2"), "--epochs", "1", "--loss", "sampled"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "mkmsr-rn" in p.stderr and "Traceback" not in p.stderr


# --------------------------------------------------------------------------------------------
# lazy Adam: row-sparse item gradients for large catalogues
# --------------------------------------------------------------------------------------------

def reference_lazy_adam(w, grads_rows, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    """Brute force, row by row: each step, each touched row takes Adam's update with its own
    moments (untouched rows keep theirs); the step count is the parameter's."""
    w = w.clone().double()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t, (rows, g) in enumerate(grads_rows, start=1):
        dense = torch.zeros_like(w).index_add_(0, rows, g.double())
        for r in sorted(set(rows.tolist())):
            gr = dense[r] + wd * w[r]
            m[r] = b1 * m[r] + (1 - b1) * gr
            v[r] = b2 * v[r] + (1 - b2) * gr * gr
            w[r] -= lr * (m[r] / (1 - b1 ** t)) / ((v[r] / (1 - b2 ** t)).sqrt() + eps)
    return w.float()


@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_lazy_adam_steps_exactly_the_touched_rows_and_dense_parameters_as_adam(wd):
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(50, 4))
    dense = torch.nn.Parameter(torch.randn(3, 4))
    twin = torch.nn.Parameter(dense.detach().clone())
    lazy = LazyAdam([table, dense], lr=1e-2, weight_decay=wd)
    plain = torch.optim.Adam([twin], lr=1e-2, weight_decay=wd)
    start, steps = table.detach().clone(), []
    for step in range(4):
        rows = torch.randint(0, 50, (12,))                       # duplicates included
        x = torch.randn(12, 4)
        lazy.zero_grad()
        plain.zero_grad()
        loss = (F.embedding(rows, table, sparse=True) * x).sum() + (dense ** 2).sum() * (step + 1)
        loss.backward()
        (twin ** 2).sum().mul(step + 1).backward()
        assert table.grad.is_sparse
        steps.append((rows, x))
        lazy.step()
        plain.step()
    assert torch.allclose(table.detach(), reference_lazy_adam(start, steps, wd=wd), atol=1e-6)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[torch.cat([r for r, _ in steps])] = False
    assert untouched.any() and torch.equal(table.detach()[untouched], start[untouched])
    assert torch.allclose(dense.detach(), twin.detach(), atol=1e-6)
    # the state has Adam's layout: it saves and loads
    again = LazyAdam([table, dense], lr=1e-2, weight_decay=wd)
    again.load_state_dict(lazy.state_dict())
    assert float(again.state[table]["step"]) == 4


def test_lazy_adam_training_gives_sparse_item_gradients_and_learns(planted_data):
    cfg = TrainConfig(epochs=8, patience=8, batch_size=32, lr=5e-3, seed=0, loss="sampled", negatives=8,
                      optimizer="lazy-adam", eval_test_each_epoch=False)
    tr = Trainer(PreparedData(planted_data), "mkmsr", {"dim": 16}, cfg, progress=False)
    seen = []
    orig = LazyAdam._lazy_step
    n_rows = tr.data.spec.n_items + 1
    def spy(self, group, p, g):
        if p.shape == (n_rows, 16):                             # the item table
            seen.append(g.indices().shape[1] / n_rows)
        return orig(self, group, p, g)
    LazyAdam._lazy_step = spy
    try:
        metrics = tr.fit()
    finally:
        LazyAdam._lazy_step = orig
    assert seen and min(seen) < 1.0             # the item table steps row-sparse (SR and KG steps alike)
    losses = [h["sr_loss"] for h in tr.history]
    assert losses[-1] < losses[0] and metrics["valid"]["hit@5"] > 90, metrics["valid"]


def test_lazy_adam_is_refused_where_it_cannot_act(planted_data):
    with pytest.raises(ConfigError, match="lazy-adam is for loss=sampled"):
        TrainConfig(optimizer="lazy-adam").validate()
    with pytest.raises(ConfigError, match="optimizer must be"):
        TrainConfig(optimizer="sgd").validate()
    for name, opts in (("mkmsr+", {}), ("mkmsr", {"scoring": "cosine"}), ("narm", {})):
        cfg = TrainConfig(loss="sampled", negatives=4, optimizer="lazy-adam", epochs=1)
        with pytest.raises(ConfigError, match="lazy-adam needs item vectors that are the item table"):
            Trainer(PreparedData(planted_data), name, opts, cfg, progress=False).fit()


# --------------------------------------------------------------------------------------------
# CUDA (skipped with a message on a CPU-only machine)
# --------------------------------------------------------------------------------------------

@CUDA
def test_bf16_full_softmax_on_cuda_within_the_bounds():
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this CUDA device has no bfloat16")
    bf16_against_float32(*vectors(device="cuda"))


@CUDA
def test_sampled_softmax_on_cuda_equals_cpu():
    s, E, t = vectors(B=8, d=8, N=50)
    counts = np.bincount(t.numpy(), minlength=51) + 1
    cpu = SampledSoftmax(64, "popularity", counts, "cpu")
    neg = cpu.draw(np.random.default_rng(0))
    ref = sampled_softmax_ce(s, E, t, neg, cpu.log_q(t, neg))
    gpu = SampledSoftmax(64, "popularity", counts, "cuda")
    sc, Ec = s.detach().cuda().requires_grad_(), E.detach().cuda().requires_grad_()
    got = sampled_softmax_ce(sc, Ec, t.cuda(), neg.cuda(), gpu.log_q(t.cuda(), neg.cuda()))
    assert torch.allclose(got.cpu(), ref, atol=1e-5)


@CUDA
@pytest.mark.parametrize("opts", [{"loss": "sampled", "negatives": 16}, {"precision": "bf16"}])
def test_training_with_the_options_on_cuda(opts, planted_data):
    if opts.get("precision") == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this CUDA device has no bfloat16")
    cfg = TrainConfig(epochs=3, patience=3, batch_size=32, lr=5e-3, device="cuda", eval_test_each_epoch=False, **opts)
    tr = Trainer(PreparedData(planted_data), "mkmsr", {"dim": 16}, cfg, progress=False)
    metrics = tr.fit()
    assert next(tr.model.parameters()).device.type == "cuda"
    assert metrics["valid"]["hit@20"] > 0
