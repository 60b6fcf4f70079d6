"""Training-time options of the scoring step, for catalogues of 10^5-10^6 items (issue 10).

A dot-product model scores a session s (d,) against every item vector V[j] (d,) and learns with
the softmax cross-entropy over the whole catalogue. At 139k items that step is three GEMMs with a
139k dimension and passes over a (B, N) score matrix; these options make it cheaper. Both are
opt-in: the default — float32, full softmax — is the paper's loss, and **evaluation always ranks
the full catalogue in float32** (``SessionModel.score``), whatever a model was trained with.

* ``precision="bf16"`` (:func:`full_softmax_ce` with ``precision="bf16"``): the three scoring
  GEMMs (logits, dL/ds, dL/dV) take bfloat16 operands and accumulate in float32 inside the GEMM;
  the log-softmax and its reductions run in float32 on a float32 copy of the logits; the one-hot
  terms of the gradients use the float32 vectors; the weights stay float32 (the master copy the
  optimiser updates; their bfloat16 copy is made once per step and shared by forward and
  backward). What is rounded to bfloat16 (8 bits of mantissa): the GEMM operands, the logits and
  the two gradient GEMMs' outputs. The loss then differs from float32 by at most about twice the
  largest logit error; ``tests/test_scale_training.py`` bounds it. It pays only where the hardware
  multiplies bfloat16 natively: CUDA GPUs with bf16 support, and CPUs with AMX or AVX-512 BF16;
  elsewhere :func:`check_precision` refuses it (on a CPU without them the bfloat16 GEMM is
  emulated: a 128 x 100 x 20,000 product took 5x longer in bfloat16 than in float32 on an AVX2-only
  AMD EPYC, nice'd on a busy machine).
* ``loss="sampled"`` (:class:`SampledSoftmax`): the softmax runs over a shared candidate set per
  batch — the batch's own targets (in-batch negatives) plus ``negatives`` items drawn with
  replacement, uniformly or in proportion to their frequency as training targets — with each
  candidate's logit corrected by the log of its expected count in that set (logQ correction), so
  that the sampled loss estimates the full softmax without the sampler's bias towards frequent
  items. A candidate equal to a row's own target, other than the row's positive, is removed from
  that row (an "accidental hit").

Models take part through the narrow contract of :mod:`mkmsr.models.base`: a model whose
``softmax_loss`` is true answers ``softmax_inputs(batch) -> (s (B, d), V (n_items + 1, d))`` and
its ``sr_loss`` is the full-softmax cross-entropy of ``s @ V[1:].T`` (tested for every such model).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .layers import full_softmax_ce as _full_softmax_ce_float32

PRECISIONS = ("float32", "bf16")
LOSSES = ("full", "sampled")
SAMPLERS = ("uniform", "popularity")


# --------------------------------------------------------------------------------------------
# hardware
# --------------------------------------------------------------------------------------------

def bf16_support(device: torch.device | str) -> tuple[bool, str]:
    """(whether ``device`` multiplies bfloat16 natively, what was found), for the message."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no CUDA device"
        return ok, f"{name}: bfloat16 {'supported' if ok else 'not supported'}"
    if device.type != "cpu":
        return False, f"device type {device.type!r}"
    cpu = getattr(torch, "cpu", None)
    # private probes of torch's own dispatch (present in torch 2.x); absent means "unknown": refuse
    amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    avx512_bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    cap = torch.backends.cpu.get_cpu_capability()
    found = f"CPU capability {cap}, AMX tiles {'yes' if amx else 'no'}, AVX-512 BF16 {'yes' if avx512_bf16 else 'no'}"
    return amx or avx512_bf16, found


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise ConfigError unless ``precision`` is known and, for bf16, ``device`` runs it natively."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        return
    ok, found = bf16_support(device)
    if not ok:
        raise ConfigError(f"precision bf16 needs native bfloat16 matrix multiplication on {device} ({found}); "
                          "without it the bfloat16 GEMMs are emulated and slower than float32. Use "
                          "precision float32 (the default) here, or a CPU with AMX / AVX-512 BF16 or a CUDA GPU")


# --------------------------------------------------------------------------------------------
# full softmax
# --------------------------------------------------------------------------------------------

class _FullSoftmaxCEBF16(torch.autograd.Function):
    """``layers._FullSoftmaxCE`` with bfloat16 GEMMs and float32 log-softmax (see the module
    docstring). Forward: logits = bf16(s) bf16(E)^T, the padding column masked, log-softmax in
    float32 (kept for backward). Backward: P = exp(log P) rounded to bfloat16 once and used by
    both gradient GEMMs; with a = grad / B, dL/ds = a (P E - E[t]) and dL/dE = a (P^T s -
    onehot(t)^T s), the one-hot terms in float32."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, E: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        s16, E16 = s.to(torch.bfloat16), E.to(torch.bfloat16)
        logits = s16 @ E16.T                                               # (B, N + 1) bf16, fp32 accumulation
        logits[:, 0] = float("-inf")                                       # padding is no candidate
        logp = torch.log_softmax(logits, dim=1, dtype=torch.float32)      # (B, N + 1) float32
        del logits
        ctx.save_for_backward(s, E, s16, E16, targets, logp)
        return -logp.gather(1, targets[:, None]).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s, E, s16, E16, targets, logp = ctx.saved_tensors
        P = logp.exp_().to(torch.bfloat16)  # exp in place: the log-probabilities are not needed again
        a = grad / P.shape[0]
        grad_s = grad_E = None
        if ctx.needs_input_grad[0]:
            grad_s = (P @ E16).float().sub_(E[targets]).mul_(a)            # (B, d)
        if ctx.needs_input_grad[1]:
            grad_E = (P.T @ s16).float().mul_(a)                           # (N + 1, d); row 0 stays 0
            grad_E.index_add_(0, targets, s, alpha=-float(a))
        return grad_s, grad_E, None


def full_softmax_ce(s: torch.Tensor, E: torch.Tensor, targets: torch.Tensor,
                    precision: str = "float32") -> torch.Tensor:
    """Mean over the batch of -log softmax(s E[1:]^T)[b, targets[b] - 1].

    s (B, d) float32 session vectors, E (N + 1, d) float32 item vectors with row 0 = padding
    (never a candidate), targets (B,) int64 item_idx in 1..N. ``precision="bf16"``: bfloat16
    GEMMs, float32 log-softmax and gradients (see the module docstring); the result and the
    gradients are float32 either way.
    """
    if precision == "float32":
        return _full_softmax_ce_float32(s, E, targets)
    if precision == "bf16":
        return _FullSoftmaxCEBF16.apply(s, E, targets)
    raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


# --------------------------------------------------------------------------------------------
# sampled softmax
# --------------------------------------------------------------------------------------------

def sampled_softmax_ce(s: torch.Tensor, E: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                       log_q: torch.Tensor, precision: str = "float32", sparse: bool = False) -> torch.Tensor:
    """Mean over the batch of the sampled softmax cross-entropy with logQ correction.

    s (B, d) session vectors; E (N + 1, d) item vectors (row 0 padding); targets (B,) int64
    item_idx; negatives (M,) int64 item_idx drawn for this batch; log_q (B + M,) float32, the log
    of each candidate's sampling weight (its expected count in the candidate set, up to a constant
    factor: constants cancel in the softmax). Candidates are ``cat(targets, negatives)``, shared by
    every row; row b's positive is column b. Corrected logit of row b, candidate c: l_bc = s_b . E[c]
    - log_q[c]; columns c != b holding item targets[b] are masked (accidental hits).

    The gradient is that of the standard sampled softmax, -log softmax(l_b)[b] (Jean et al. 2015;
    TensorFlow's ``sampled_softmax_loss``), checked against a brute-force reference in
    tests/test_scale_training.py. The value returned is that loss minus the batch mean of the
    positives' log_q, a constant: log sum_c exp(l_bc) - s_b . E[t_b], whose first term estimates
    log sum_j exp(s_b . E[j]); so the value estimates the full softmax cross-entropy and the
    logged SR loss of a sampled run is on the same scale as a full one. ``sparse``: E's gradient
    is row-sparse (the candidates' rows; for ``optimizer="lazy-adam"``).
    """
    B = s.shape[0]
    cand = torch.cat([targets, negatives])                                 # (C,) = (B + M,)
    Ec = F.embedding(cand, E, sparse=sparse)                               # (C, d)
    if precision == "bf16":
        logits = (s.to(torch.bfloat16) @ Ec.to(torch.bfloat16).T).float()
    else:
        logits = s @ Ec.T                                                  # (B, C)
    rows = torch.arange(B, device=s.device)
    positive = logits[rows, rows]                                          # (B,) uncorrected
    logits = logits - log_q[None, :]
    hit = cand[None, :] == targets[:, None]                                # (B, C)
    hit[rows, rows] = False                                                # the positive itself stays
    logits = logits.masked_fill(hit, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - positive).mean()


class SampledSoftmax:
    """The sampled-softmax loss of a training run: the sampler and the logQ correction.

    ``target_counts`` (n_items + 1,): how often each item_idx is the target of a training sample
    (index 0 = padding, 0). In-batch candidates are a batch's targets, so an item is expected
    B * p(j) times among them, p(j) = target_counts[j] / total (batches are drawn from the whole
    training split). ``negatives`` M more are drawn with replacement from q: ``uniform`` over
    1..n_items, or ``popularity`` (q = p: items never a training target are then never drawn;
    they get gradient through the uniform sampler, the encoder and the full-softmax evaluation
    only). The logQ correction of candidate j is log(B p(j) + M q(j)), the log of its expected
    count in the candidate set. Negatives come from the epoch's random generator (the one that
    orders the batches), so runs are reproducible and a resumed run draws the same negatives.
    """

    def __init__(self, negatives: int, sampler: str, target_counts: np.ndarray, device: torch.device | str,
                 precision: str = "float32", sparse: bool = False):
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if negatives < 0:
            raise ConfigError(f"negatives must be >= 0, got {negatives}")
        counts = np.asarray(target_counts, dtype=np.float64).copy()
        counts[0] = 0.0
        if counts.sum() <= 0:
            raise ConfigError("sampled softmax: the training split has no targets")
        self.negatives, self.sampler, self.precision, self.sparse = int(negatives), sampler, precision, sparse
        self.n_items = counts.size - 1
        p = counts / counts.sum()
        if sampler == "uniform":
            q = np.full(counts.size, 1.0 / self.n_items)
            q[0] = 0.0
        else:
            q = p
        self._cdf = np.cumsum(q[1:])
        self._cdf /= self._cdf[-1]
        self.p = torch.from_numpy(p).to(device=device, dtype=torch.float32)     # (n_items + 1,)
        self.q = torch.from_numpy(q).to(device=device, dtype=torch.float32)     # (n_items + 1,)
        self.device = torch.device(device)

    def draw(self, rng: np.random.Generator) -> torch.Tensor:
        """(M,) int64 item_idx on the device, drawn with replacement from q."""
        if self.sampler == "uniform":
            idx = rng.integers(1, self.n_items + 1, self.negatives)
        else:
            idx = 1 + np.searchsorted(self._cdf, rng.random(self.negatives), side="right")
            idx = np.minimum(idx, self.n_items)  # a draw of exactly 1.0 - eps rounding
        return torch.from_numpy(idx.astype(np.int64)).to(self.device, non_blocking=True)

    def log_q(self, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """(B + M,) log expected count of each candidate: log(B p(j) + M q(j))."""
        cand = torch.cat([targets, negatives])
        expected = targets.shape[0] * self.p[cand] + negatives.shape[0] * self.q[cand]
        return torch.log(expected.clamp(min=torch.finfo(torch.float32).tiny))

    def __call__(self, s: torch.Tensor, E: torch.Tensor, targets: torch.Tensor,
                 rng: np.random.Generator) -> torch.Tensor:
        neg = self.draw(rng)
        return sampled_softmax_ce(s, E, targets, neg, self.log_q(targets, neg), self.precision, self.sparse)


def training_loss(loss: str, precision: str, negatives: int, sampler: str, target_counts: np.ndarray | None,
                  device: torch.device | str, sparse: bool = False):
    """The SR loss a run trains with, as ``f(s, V, targets, rng) -> scalar``, or None for the
    model's own ``sr_loss`` (float32 full softmax: the paper's loss, and the only option for models
    whose loss is not a softmax over dot products)."""
    if loss not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    check_precision(precision, device)
    if loss == "sampled":
        if target_counts is None:
            raise ConfigError("sampled softmax needs the training split's target counts")
        return SampledSoftmax(negatives, sampler, target_counts, device, precision, sparse)
    if precision == "float32":
        return None
    return lambda s, V, targets, rng: full_softmax_ce(s, V, targets, precision)



def batch_sr_loss(model, batch, softmax, rng: np.random.Generator) -> torch.Tensor:
    """The SR loss of one training batch: the model's own ``sr_loss`` when ``softmax`` is None,
    else ``softmax`` (from :func:`training_loss`) over the model's ``softmax_inputs``."""
    if softmax is None:
        return model.sr_loss(batch)
    s, V = model.softmax_inputs(batch)
    return softmax(s, V, batch.targets, rng)
