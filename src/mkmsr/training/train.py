"""The training loop: alternating / joint / pretraining multi-task learning, early stopping on
validation, per-epoch JSONL log, atomic checkpoints and exact resume.

The loop knows no model by name: it calls ``sr_loss`` and, for models with a knowledge task,
``kg_loss`` (see :mod:`mkmsr.models.base`).

Strategies for the knowledge task (paper §3.5, §4.4):

* ``alternate`` (Eq. 15, default): after every ``alternate_every`` SR steps one KG step on
  ``kg_batch_size`` triplets, each with its own optimiser step on the shared embeddings. By
  default the KG batch is sized so one epoch sees every triplet once. The loss of a KG step
  is lambda_1 * sum of TransH distances of its triplets.

  The optimiser of the KG step (``kg_optimizer``) decides whether lambda_1 acts at all. Adam's
  update does not depend on the scale of the loss it is given, so a KG step with an Adam of its
  own (``sparse``, ``separate``) moves the embeddings by about the same amount for lambda_1 =
  1e-5 or 1e-1: lambda_1 is inert there. The default ``shared`` steps the SR optimiser: the
  KG gradient lambda_1 * dL_K is divided by Adam's running second moments, which the SR
  gradients dominate on every item row, so lambda_1 weighs the knowledge task against L_S as
  Eq. 15 writes it. As in any framework that minimises two losses with one Adam (one optimiser
  object, two ``minimize`` calls in TensorFlow), a KG step also applies the momentum of every
  parameter it touches, and the L2 penalty (lambda_2, coupled in Adam) applies to both steps;
  with ``sparse``, lambda_2 applies to the SR steps only.
* ``joint`` (Eq. 16): one step on L_S + lambda_1 * L_K where L_K runs over the triplets of
  the items of each session of the batch (an item in k sessions of the batch counts k times),
  divided by the batch size like L_S.
* ``pretrain``: ``pretrain_epochs`` passes of TransH alone, then L_S alone.

lambda_2 (the L2 penalty of Eq. 14) is Adam's ``weight_decay``, as in SR-GNN's code.

Large catalogues (issue 10; :mod:`mkmsr.models.scoring`): ``precision="bf16"`` runs the scoring
GEMMs in bfloat16 (float32 weights and log-softmax), ``loss="sampled"`` replaces the full softmax
by a sampled softmax with logQ correction over in-batch and ``negatives`` drawn items. Both need a
model whose SR loss is a softmax over dot products (``SessionModel.softmax_loss``); the defaults
(float32, full) are the paper's loss and leave every model's own ``sr_loss`` in charge. Validation
and test always rank the full catalogue in float32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from .. import __version__
from ..data.batching import Batch, batch_order, make_batch
from ..checkpoint import save_checkpoint
from ..data.dataset import PreparedData
from ..errors import ConfigError, TrainingDiverged
from .evaluate import evaluate, metrics_from_counts, split_rank_counts
from .metrics import NonFiniteScoreError
from ..fsutil import atomic_dir, atomic_write_text, read_json, write_json
from ..models import MODELS, build_model, make_config
from ..models.base import SessionModel
from ..models.scoring import LOSSES, PRECISIONS, SAMPLERS, batch_sr_loss, check_precision, training_loss

if TYPE_CHECKING:
    from .distributed import DistContext

log = logging.getLogger(__name__)

#: parameter-name prefixes a knowledge step may update (entity tables and TransH relations)
KG_PARAMS = ("item_embedding.", "attr_embedding.", "entity.", "transh.")

OPTIMISTIC_LABEL = ("optimistic, paper-style: the best test value of each metric over all epochs, each "
                    "possibly from a different epoch (what the MKM-SR authors' code reports); it uses the "
                    "test set for selection and is not an honest estimate")


@dataclass
class TrainConfig:
    epochs: int = 30                 # maximum number of epochs
    batch_size: int = 128            # paper §4.1.4
    lr: float = 1e-3                 # Adam learning rate (paper)
    weight_decay: float = 1e-5       # lambda_2 (paper)
    kg_weight: float = 1e-4          # lambda_1 (paper)
    strategy: str = "alternate"      # alternate (Eq. 15) | joint (Eq. 16) | pretrain
    alternate_every: int = 1         # SR steps between two KG steps
    kg_batch_size: int = 0           # triplets per KG step; 0 = the model's kg_passes (default 1) per epoch
    kg_optimizer: str = "shared"     # shared: the SR Adam (lambda_1 acts; default) | sparse: own row-wise
                                     # Adam (lambda_1 inert: Adam is scale-invariant) | separate (own dense Adam)
    pretrain_epochs: int = 10        # passes over the triplets for strategy=pretrain
    patience: int = 5                # epochs without validation improvement before stopping (3x that
                                     # while nothing has beaten the first epoch: warm-up)
    select_metric: str = "mrr@20"    # validation metric that selects the epoch
    eval_batch_size: int = 512
    max_len: int | None = None       # keep only the latest max_len micro-behaviours (None = all)
    bucket: int = 50                 # sort each run of `bucket` batches by length (0 = plain shuffle)
    lr_decay_step: int = 0           # multiply lr by lr_decay every n epochs (0 = constant)
    lr_decay: float = 0.1
    eval_test_each_epoch: bool = True  # needed for the optimistic (paper-style) figure
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    threads: int = 0                 # torch intra-op threads (0 = torch's default)
    precision: str = "float32"       # float32 | bf16: bfloat16 scoring GEMMs, float32 weights and log-softmax
    loss: str = "full"               # full: softmax over the whole catalogue (paper) | sampled: in-batch +
                                     # `negatives` drawn items, logQ-corrected (mkmsr.models.scoring)
    negatives: int = 2048            # loss=sampled: items drawn per batch besides the batch's own targets
    sampler: str = "uniform"         # loss=sampled: uniform | popularity (frequency as a training target)
    optimizer: str = "adam"          # adam: dense Adam over every parameter (paper) | lazy-adam: with
                                     # loss=sampled, the item table takes row-sparse gradients and a lazy Adam
                                     # step (moments and lambda_2 of the rows a step touches only; LazyAdam)
    time_budget_s: float = 0.0       # stop once the training loop (evaluation excluded) has run this long,
                                     # mid-epoch if need be; that last, partial epoch is evaluated and may be
                                     # selected like any other (0 = no budget; time-to-accuracy comparisons)

    def validate(self) -> None:
        if self.strategy not in ("alternate", "joint", "pretrain"):
            raise ConfigError(f"strategy must be alternate, joint or pretrain, got {self.strategy!r}")
        if self.kg_optimizer not in ("sparse", "shared", "separate"):
            raise ConfigError(f"kg_optimizer must be sparse, shared or separate, got {self.kg_optimizer!r}")
        for name in ("epochs", "batch_size", "alternate_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.patience < 1:
            raise ConfigError("patience must be >= 1")
        if self.max_len is not None and self.max_len < 1:
            raise ConfigError("max_len must be >= 1 or None")
        if self.select_metric.split("@")[0] not in ("hit", "mrr", "ndcg"):
            raise ConfigError(f"select_metric must look like mrr@20, got {self.select_metric!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.negatives < 0:
            raise ConfigError(f"negatives must be >= 0 (0 = in-batch negatives only), got {self.negatives}")
        if self.optimizer not in ("adam", "lazy-adam"):
            raise ConfigError(f"optimizer must be adam or lazy-adam, got {self.optimizer!r}")
        if self.optimizer == "lazy-adam" and self.loss != "sampled":
            raise ConfigError("optimizer lazy-adam is for loss=sampled: the full softmax touches every item row "
                              "in every step, so its item gradient is dense anyway")
        if self.time_budget_s < 0:
            raise ConfigError(f"time_budget_s must be >= 0 (0 = no budget), got {self.time_budget_s}")


def adam(params, lr: float, weight_decay: float, cls: type = torch.optim.Adam) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch build has one (10x faster on CPU here)."""
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, lr=lr, weight_decay=weight_decay)


class LazyAdam(torch.optim.Adam):
    """Adam in which a parameter whose gradient is sparse (an embedding table looked up with
    ``sparse=True``) takes a lazy step: only the rows the gradient holds update their moments and
    weights, with the L2 term (``weight_decay``, coupled as in Adam) on those rows only; dense
    gradients take Adam's own (fused) step. The semantics of TensorFlow's ``LazyAdamOptimizer`` and
    of PyTorch's ``SparseAdam`` plus L2: for a catalogue of 139k items and more, a dense step (and
    the dense gradient it needs) over the whole item table costs most of a sampled-softmax step,
    while a batch touches a few thousand rows. A row's moments then decay only in the steps that
    touch it, so the update differs from dense Adam's (``optimizer="adam"``, the default); the
    step count (bias correction) is the parameter's, as in ``SparseAdam``."""

    @torch.no_grad()
    def step(self, closure=None):
        sparse = [(group, p) for group in self.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.is_sparse]
        grads = [p.grad for _, p in sparse]
        for _, p in sparse:
            p.grad = None                       # Adam's own step skips them
        loss = super().step(closure)
        for (group, p), g in zip(sparse, grads):
            p.grad = g
            self._lazy_step(group, p, g.coalesce())
        return loss

    def _lazy_step(self, group: dict, p: torch.Tensor, g: torch.Tensor) -> None:
        st = self.state[p]
        if not st:   # the state layout of Adam's, so state_dict / load_state_dict / resume work alike
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["step"] += 1
        rows, gv = g.indices()[0], g.values()
        if not rows.numel():
            return
        b1, b2 = group["betas"]
        lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]
        if wd:
            gv = gv + wd * p[rows]
        m = st["exp_avg"][rows].mul_(b1).add_(gv, alpha=1 - b1)
        v = st["exp_avg_sq"][rows].mul_(b2).addcmul_(gv, gv, value=1 - b2)
        st["exp_avg"][rows] = m
        st["exp_avg_sq"][rows] = v
        t = float(st["step"])
        denom = (v / (1 - b2 ** t)).sqrt_().add_(eps)
        p.index_add_(0, rows, m.div_(denom), alpha=-lr / (1 - b1 ** t))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _from_dict(cls, d: dict) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


class KnowledgeSampler:
    """Triplet batches for the KG steps, plus per-item triplet lookup for joint training."""

    def __init__(self, data: PreparedData):
        self.kg = np.ascontiguousarray(data.kg, dtype=np.int64)
        self.n = int(self.kg.shape[0])
        n_items = data.spec.n_items
        self.item_offsets = np.searchsorted(self.kg[:, 0], np.arange(n_items + 2))
        # Attribute entities are laid out relation by relation: value range of each relation.
        rel = self.kg[:, 1]
        n_rel = data.spec.n_relations
        self.tail_lo = np.zeros(max(n_rel, 1), dtype=np.int64)
        self.tail_hi = np.zeros(max(n_rel, 1), dtype=np.int64)
        for r in range(n_rel):  # a handful of relations: not a per-sample loop
            t = self.kg[rel == r, 2]
            self.tail_lo[r], self.tail_hi[r] = (t.min(), t.max() + 1) if t.size else (0, 1)
        self._perm = np.arange(self.n)
        self._pos = self.n

    def corrupt_tails(self, trip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random tail of the same relation for each triplet (TransH 'unif' corruption)."""
        lo, hi = self.tail_lo[trip[:, 1]], self.tail_hi[trip[:, 1]]
        return lo + np.floor(rng.random(trip.shape[0]) * (hi - lo)).astype(np.int64)

    def start_epoch(self, rng: np.random.Generator) -> None:
        """A fresh permutation drawn from the epoch's generator, so a resumed run is identical."""
        self._perm = rng.permutation(self.n)
        self._pos = 0

    def next_batch(self, size: int, rng: np.random.Generator) -> np.ndarray:
        if self._pos + size > self.n:
            self._perm = rng.permutation(self.n)
            self._pos = 0
        idx = self._perm[self._pos:self._pos + size]
        self._pos += size
        return self.kg[idx]

    def batch_triplets(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Triplets of the items of each session of ``batch`` (Eq. 16) and their multiplicity."""
        items = batch.items.numpy()
        mask = batch.mask.numpy()
        n1 = self.item_offsets.size - 1
        pairs = np.unique(np.nonzero(mask)[0] * n1 + items[mask])
        counts = np.bincount(pairs % n1, minlength=n1)
        present = np.nonzero(counts)[0]
        starts = self.item_offsets[present]
        lens = self.item_offsets[present + 1] - starts
        total = int(lens.sum())
        if total == 0:
            return np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.float32)
        idx = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total)
        return self.kg[idx], np.repeat(counts[present], lens).astype(np.float32)


class Trainer:
    """Fit one model on one prepared dataset, writing everything into ``out_dir``:

    ``config.json`` resolved configuration; ``log.jsonl`` one line per epoch; ``best/`` the
    checkpoint of the validation-selected epoch; ``state/`` what ``resume`` needs;
    ``metrics.json`` the final figures.
    """

    def __init__(self, data: PreparedData, model_name: str, model_overrides: dict | None = None,
                 config: TrainConfig | None = None, out_dir: str | Path | None = None, progress: bool = True,
                 dist: "DistContext | None" = None,
                 on_epoch_end: Callable[[int, dict], None] | None = None,
                 tensorboard_dir: str | Path | None = None):
        self.data = data
        # per-epoch scalars as TensorBoard event files (see mkmsr.tensorboard_log)
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir else None
        # multi-process (DDP) training: see mkmsr.distributed for what each rank does
        self.dist = dist
        self.main = dist is None or dist.is_main
        self.model_name = model_name
        self.model_config = make_config(model_name, model_overrides)
        self.config = config or TrainConfig()
        self.config.validate()
        self.out_dir = Path(out_dir) if out_dir else None
        self.progress = progress and self.main
        self.device = resolve_device(self.config.device)
        if dist is not None and self.device.type == "cuda":
            self.device = torch.device("cuda", dist.local_rank)
        check_precision(self.config.precision, self.device)  # bf16 where it runs natively only
        if dist is not None and self.config.time_budget_s:
            raise ConfigError("time_budget_s is for one process: ranks would stop at different steps")
        self.history: list[dict] = []
        # called as on_epoch_end(epoch, validation metrics) right after each epoch's validation
        # (mkmsr.tune reports to Optuna there; an exception it raises, e.g. TrialPruned, ends fit)
        self.on_epoch_end = on_epoch_end

    # ------------------------------------------------------------------------------------------
    def _build(self) -> SessionModel:
        torch.manual_seed(self.config.seed)
        model = build_model(self.model_name, self.data.spec, config=self.model_config)
        model.fit_statistics(self.data)
        return model.to(self.device)

    def _optimizers(self, model: SessionModel):
        c = self.config
        params = [p for p in model.parameters() if p.requires_grad]
        opt = adam(params, lr=c.lr, weight_decay=c.weight_decay, cls=LazyAdam if c.optimizer == "lazy-adam" else torch.optim.Adam)
        kg_opt = opt
        if model.uses_knowledge and c.kg_optimizer != "shared":
            kg_params = [p for n, p in model.named_parameters() if n.startswith(KG_PARAMS)]
            if c.kg_optimizer == "sparse":
                kg_opt = torch.optim.SparseAdam(kg_params, lr=c.lr)
            else:
                kg_opt = adam(kg_params, lr=c.lr, weight_decay=c.weight_decay)
        sched = (torch.optim.lr_scheduler.StepLR(opt, c.lr_decay_step, c.lr_decay) if c.lr_decay_step else None)
        return opt, kg_opt, sched

    def _run_config(self) -> dict:
        return {"model": self.model_name, "model_config": dataclasses.asdict(self.model_config),
                "train_config": dataclasses.asdict(self.config), "dataset": str(self.data.path.resolve()),
                "dataset_sha256": self.data.content_hash, "mkmsr_version": __version__}

    def _eval(self, model: SessionModel, split: str) -> dict:
        epoch = getattr(self, "_epoch", None)
        try:
            return evaluate(model, self.data, split, self.config.eval_batch_size, self.config.max_len, self.device,
                            dist=self.dist)
        except NonFiniteScoreError as e:
            when = f"after epoch {epoch}" if epoch else "at the end of training"
            raise TrainingDiverged(f"{self.model_name}: training diverged {when}: {e} on the {split} split. "
                                   f"Lower the learning rate (now {self.config.lr:g}) or check the data; "
                                   "no epoch with non-finite scores is ever selected") from e

    # ------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict:
        """Train (or resume), then write and return ``metrics.json``'s content."""
        c = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        out = self.out_dir
        if out is not None:
            if (out / "state").exists() and not resume and not overwrite:
                raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) to continue it "
                                      "or overwrite=True (--overwrite) to start again")
            if self.main:
                out.mkdir(parents=True, exist_ok=True)
                write_json(out / "config.json", self._run_config())
        model = self._build()
        dist = self.dist
        softmax = self._softmax_loss(model)   # a clear error on options the model cannot take, before any training
        self._attach_expert(model)
        if not model.trainable:
            return self._finish(model, best_epoch=0, epochs_run=0, stopped_early=False, t_train=0.0)
        opt, kg_opt, sched = self._optimizers(model)
        kgs = KnowledgeSampler(self.data) if model.uses_knowledge else None
        state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad_epochs": 0, "pretrained": False,
                 "stopped_early": False, "train_seconds": 0.0}
        if resume and out is not None and (out / "state" / "trainer.json").exists():
            state = self._load_state(model, opt, kg_opt, sched)
            log.info("resumed %s after epoch %d", out, state["epoch"])

        if kgs is not None and c.strategy == "pretrain" and not state["pretrained"]:
            self._pretrain(model, kgs)
            state["pretrained"] = True

        arr = self.data.split("train")
        sess, prefix = arr.samples()
        lengths = np.minimum(prefix, c.max_len) if c.max_len else prefix
        n = sess.size
        n_batches = math.ceil(n / c.batch_size)
        alternate = kgs is not None and c.strategy == "alternate" and kgs.n > 0
        joint = kgs is not None and c.strategy == "joint" and kgs.n > 0
        passes = float(getattr(model.config, "kg_passes", 1.0))
        kg_bs = c.kg_batch_size or (math.ceil(passes * kgs.n / max(1, n_batches // c.alternate_every)) if kgs else 0)
        margin = model.uses_knowledge and getattr(model.config, "kg_loss", "squared") == "margin"
        sparse = c.kg_optimizer == "sparse" or c.optimizer == "lazy-adam"
        select = c.select_metric
        if dist is not None:
            from .distributed import wrap_sr_loss

            dist.broadcast_parameters(model)
            ddp = wrap_sr_loss(model, dist, self.device, softmax)

        from tqdm.auto import tqdm

        tb = None
        if self.tensorboard_dir is not None and self.main:
            from .tensorboard_log import open_writer, write_epoch

            tb = open_writer(self.tensorboard_dir)

        budget = c.time_budget_s or math.inf
        while state["epoch"] < c.epochs and not state["stopped_early"] and state["train_seconds"] < budget:
            epoch = state["epoch"] + 1
            rng = np.random.default_rng([c.seed, epoch])
            model.train()
            if kgs is not None:
                kgs.start_epoch(rng)
            t0 = time.perf_counter()
            sr_sum, kg_sum, kg_steps = 0.0, 0.0, 0
            bar = tqdm(total=n_batches, desc=f"{self.model_name} epoch {epoch}", disable=not self.progress,
                       leave=False, unit="batch")
            seen, cut = 0, False
            for step, idx in enumerate(batch_order(n, c.batch_size, rng, lengths, c.bucket)):
                seen += idx.size
                if dist is not None:
                    if idx.size < dist.world:  # a last batch too small to give every rank a sample
                        continue
                    idx = dist.shard(idx)  # this rank's slice of the global batch
                b = make_batch(arr, sess[idx], prefix[idx], c.max_len)
                b.train_sessions = torch.from_numpy(sess[idx].astype(np.int64))
                neg = None
                if joint:
                    trip, w = kgs.batch_triplets(b)
                    if margin and trip.shape[0]:
                        # the margin TransH loss (MKM-SR+, MKM-SR-RN) needs a corrupted tail per triplet
                        neg = torch.from_numpy(kgs.corrupt_tails(trip, rng)).to(self.device)
                b = b.to(self.device)
                if dist is not None:
                    # DDP averages the slices' mean-loss gradients: the global batch's gradient
                    loss = ddp(b, *((torch.from_numpy(trip).to(self.device), torch.from_numpy(w).to(self.device),
                                     c.kg_weight) if joint and trip.shape[0] else ()), rng=rng, corrupt_tails=neg)
                    sr_sum += float(loss.detach())
                else:
                    loss = batch_sr_loss(model, b, softmax, rng)
                    sr_sum += float(loss.detach())
                    if joint and trip.shape[0]:
                        kl = model.kg_loss(torch.from_numpy(trip).to(self.device), torch.from_numpy(w).to(self.device),
                                           corrupt_tails=neg)
                        kg_sum += float(kl.detach())
                        kg_steps += 1
                        loss = loss + c.kg_weight * kl / len(b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if alternate and (step + 1) % c.alternate_every == 0:
                    trip = kgs.next_batch(kg_bs, rng)
                    neg = torch.from_numpy(kgs.corrupt_tails(trip, rng)).to(self.device) if margin else None
                    kl = model.kg_loss(torch.from_numpy(trip).to(self.device), corrupt_tails=neg, sparse=sparse)
                    kg_opt.zero_grad(set_to_none=True)
                    if dist is None:
                        (c.kg_weight * kl).backward()
                    else:
                        # every rank takes this same step; autograd.grad keeps it clear of DDP's
                        # gradient hooks, which belong to the SR step
                        ps = [p for g in kg_opt.param_groups for p in g["params"]]
                        for p_, g_ in zip(ps, torch.autograd.grad(c.kg_weight * kl, ps, allow_unused=True)):
                            p_.grad = g_
                    kg_opt.step()
                    kg_sum += float(kl.detach())
                    kg_steps += 1
                bar.update(1)
                if state["train_seconds"] + (time.perf_counter() - t0) >= budget:
                    cut = seen < n
                    break
            bar.close()
            if sched is not None:
                sched.step()
            if dist is not None:
                dist.broadcast_parameters(model)  # rank 0's weights everywhere: no drift can accumulate
            t_train = time.perf_counter() - t0
            state["train_seconds"] += t_train
            if not (math.isfinite(sr_sum) and math.isfinite(kg_sum)):
                raise TrainingDiverged(f"{self.model_name}: training diverged in epoch {epoch}: the "
                                       f"{'SR' if not math.isfinite(sr_sum) else 'knowledge'} loss became "
                                       f"{sr_sum if not math.isfinite(sr_sum) else kg_sum}. Lower the learning rate "
                                       f"(now {c.lr:g}) or check the data")
            self._epoch = epoch
            valid = self._eval(model, "valid")
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, valid)
            test = self._eval(model, "test") if c.eval_test_each_epoch else None
            self._epoch = None
            rec = {"epoch": epoch, "sr_loss": sr_sum / max(1, n_batches),
                   "kg_loss": (kg_sum / kg_steps) if kg_steps else None,
                   "train_seconds": round(t_train, 3), "train_samples_per_s": round(seen / t_train, 1),
                   "lr": opt.param_groups[0]["lr"], "item_embedding_norm": self._item_norm(model),
                   "valid": valid, "test": test}
            if cut:  # the time budget ended this epoch early
                rec["train_samples"] = seen
            self.history.append(rec)
            improved = valid[select] > state["best"]
            if dist is not None:  # rank 0 decides (the gathered metrics agree anyway)
                improved = dist.broadcast_object(improved)
            if improved:
                state["best"], state["best_epoch"], state["bad_epochs"] = valid[select], epoch, 0
                if out is not None:
                    if self.main:
                        save_checkpoint(out / "best", model, self.model_name, self.data,
                                        {"epoch": epoch, "valid": valid, "train_config": dataclasses.asdict(c)})
                else:
                    self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
                # warm-up: until validation improves on the first epoch, wait 3 x patience (a
                # randomly initialised model often dips for a few epochs before it learns; the
                # plain rule stopped NARM at epoch 4 on Demo(N) with patience 3)
                if state["bad_epochs"] >= (c.patience if state["best_epoch"] > 1 else 3 * c.patience):
                    state["stopped_early"] = True
            state["epoch"] = epoch
            log.info("%s epoch %d: loss %.4f valid %s %.3f%s (%.0f samples/s)%s", self.model_name, epoch,
                     rec["sr_loss"], select, valid[select],
                     f" test {select} {test[select]:.3f}" if test and not blind_test() else "",
                     rec["train_samples_per_s"], " *" if improved else "")
            if tb is not None:
                write_epoch(tb, rec)
            if out is not None and self.main:
                self._save_state(model, opt, kg_opt, sched, state)
            if dist is not None:
                state["stopped_early"] = dist.broadcast_object(state["stopped_early"])

        if tb is not None:
            tb.close()
        # restore the validation-selected weights
        if self.main:
            if out is not None:
                best = torch.load(out / "best" / "model.pt", map_location=self.device, weights_only=True)
            else:
                best = self._best_state
            model.load_state_dict(best)
        if dist is not None:
            dist.broadcast_parameters(model)
        return self._finish(model, state["best_epoch"], state["epoch"], state["stopped_early"], state["train_seconds"])

    def refinish(self) -> dict:
        """Finish a finished run again under this Trainer's model configuration, without training:
        allowed when the run's configuration has the same training identity
        (:meth:`SessionModel.training_identity`: it differs only in inference-time options such
        as a calibration grid or an inference-only component), the same training configuration
        and the same data. Loads the run's validation-selected weights (``best/``), then does what
        the end of :meth:`fit` does: calibration on validation from this configuration's values,
        validation and test figures, ``metrics.json``; training figures (epochs, time, per-epoch
        log) are the run's. Raises ConfigError when the run cannot be reused."""
        out = self.out_dir
        if out is None:
            raise ConfigError("refinish needs the run's output folder")
        state_path = out / "state" / "trainer.json"
        if not state_path.exists() or not (out / "best" / "model.pt").exists():
            raise ConfigError(f"cannot refinish {out}: it holds no trained run (state/trainer.json, best/model.pt)")
        saved = read_json(state_path)
        run = saved["run"]
        mine = json.loads(json.dumps(self._run_config(), default=list))
        cls = MODELS[self.model_name][0]
        # an option added after the run was trained counts as its default (the behaviour it had)
        as_json = lambda obj: json.loads(json.dumps(dataclasses.asdict(obj), default=list))  # noqa: E731
        run_model = {**as_json(cls.Config()), **cls.upgrade_config(run["model_config"])}
        run_train = {**as_json(TrainConfig()), **run["train_config"]}
        finished = saved.get("stopped_early") or saved.get("epoch", 0) >= int(run_train["epochs"])
        same = (MODELS.get(run["model"], (None,))[0] is cls
                and cls.training_identity(run_model) == cls.training_identity(mine["model_config"])
                and run_train == mine["train_config"] and run["dataset_sha256"] == mine["dataset_sha256"])
        if not same or not finished:
            raise ConfigError(f"cannot refinish {out}: its training differs from this configuration's"
                              if not same else f"cannot refinish {out}: its training has not finished")
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        model = self._build()
        best = torch.load(out / "best" / "model.pt", map_location=self.device, weights_only=True)
        # the explore expert is trained apart from the rest and attached below (``_attach_expert``):
        # a run trained without one lacks its weights, and a run with one may finish as a model
        # without one or with another expert, so its expert weights are never taken from here
        experts = ("expert", "expert2")
        best = {k: v for k, v in best.items() if k.split(".", 1)[0] not in experts}
        missing, unexpected = model.load_state_dict(best, strict=False)
        if unexpected or any(k.split(".", 1)[0] not in experts for k in missing):
            raise ConfigError(f"cannot refinish {out}: its weights do not fit this configuration "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self._attach_expert(model)
        model.eval()
        self.history = saved.get("history", [])
        if self.main:
            write_json(out / "config.json", self._run_config())
            write_json(state_path, {**saved, "run": self._run_config()})
        log.info("%s: reusing the training of %s (same training identity); finishing under the new options",
                 self.model_name, out)
        return self._finish(model, saved["best_epoch"], saved["epoch"], bool(saved.get("stopped_early")),
                            float(saved.get("train_seconds", 0.0)))

    def _attach_expert(self, model: SessionModel) -> None:
        """For a model with explore experts (mkmsr-rn's ``explore_expert``, ``explore_expert2``):
        train each expert first, as the registered model of that name with this run's training
        options (seed included) and its own validation early stopping, in ``OUT/expert`` (and
        ``OUT/expert2``; a finished or interrupted run there is reused or resumed; in memory
        without an output folder), then load its validation-selected weights into
        ``model.expert`` (``model.expert2``), frozen. The global random state is left as it was,
        so the model's own training is that of the same model without an expert."""
        self._expert_metrics = {}
        for attr, name, expert in (model.experts() if hasattr(model, "experts") else []):
            self._expert_metrics[attr] = self._train_expert(attr, name, expert)

    def _train_expert(self, attr: str, name: str, expert) -> dict:
        sub = self.out_dir / attr if self.out_dir is not None else None
        cfg = dataclasses.replace(self.config)

        def trainer() -> "Trainer":
            return Trainer(self.data, name, None, cfg, sub, progress=self.progress, dist=self.dist)

        resume = False
        if sub is not None and (sub / "state" / "trainer.json").exists() and (sub / "config.json").exists():
            saved = read_json(sub / "config.json").get("train_config")
            resume = {**json.loads(json.dumps(dataclasses.asdict(TrainConfig()), default=list)), **(saved or {})} \
                == json.loads(json.dumps(dataclasses.asdict(cfg), default=list))
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            tr = trainer()
            try:
                m = tr.fit(resume=resume, overwrite=not resume)
            except ConfigError:   # the state there belongs to another configuration: train it again
                tr = trainer()
                m = tr.fit(overwrite=True)
        expert.load_state_dict(tr.model.state_dict())
        expert.requires_grad_(False)
        log.info("%s: explore expert %s ready (epoch %d of %d, valid %s %.3f)", self.model_name, name,
                 m["best_epoch"], m["epochs_run"], cfg.select_metric, m["valid"][cfg.select_metric])
        return {"model": name, "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
                "train_seconds": m["train_seconds"], "valid": m["valid"], "test": m["test"],
                "seconds_here": round(time.perf_counter() - t0, 2)}

    def _softmax_loss(self, model: SessionModel):
        """The replacement SR loss of ``precision`` / ``loss`` (mkmsr.models.scoring.training_loss),
        or None for the model's own ``sr_loss``; a clear error for a model that cannot take it."""
        c = self.config
        if c.precision == "float32" and c.loss == "full":
            return None
        if not model.softmax_loss:
            raise ConfigError(f"model {self.model_name!r} cannot train with precision={c.precision} loss={c.loss}: "
                              "its SR loss is not a softmax over dot products of session and item vectors "
                              f"({type(model).__name__}: a mixture, BPR, transformed scores or no SGD). Use "
                              "precision float32 and loss full with it, or a model such as mkmsr, sr-gnn, sasrec")
        if c.optimizer == "lazy-adam":
            if not model.supports_sparse_rows():
                raise ConfigError(f"optimizer lazy-adam needs item vectors that are the item table itself, looked up "
                                  f"row by row; model {self.model_name!r} computes them from the whole table (e.g. "
                                  "cosine scoring or attribute means). Use optimizer adam with it, or mkmsr / its "
                                  "variants with item_repr=id and scoring=dot")
            if self.dist is not None:
                raise ConfigError("optimizer lazy-adam runs in one process (row-sparse gradients are not averaged "
                                  "across ranks here); use optimizer adam with torchrun")
            model.sparse_rows = True
        counts = None
        if c.loss == "sampled":
            counts = np.bincount(self.data.split("train").targets(), minlength=self.data.spec.n_items + 1)
        log.info("%s: SR loss %s, precision %s%s", self.model_name, c.loss, c.precision,
                 f", {c.negatives} {c.sampler} negatives + in-batch, logQ-corrected" if c.loss == "sampled" else "")
        return training_loss(c.loss, c.precision, c.negatives, c.sampler, counts, self.device,
                             sparse=c.optimizer == "lazy-adam")

    # ------------------------------------------------------------------------------------------
    def _pretrain(self, model: SessionModel, kgs: KnowledgeSampler) -> None:
        """TransH alone for ``pretrain_epochs`` passes (strategy=pretrain), with its own Adam."""
        c = self.config
        params = [p for n, p in model.named_parameters() if n.startswith(KG_PARAMS)]
        opt = adam(params, lr=c.lr, weight_decay=c.weight_decay)
        bs = c.kg_batch_size or 1024
        rng = np.random.default_rng([c.seed, 0])
        margin = getattr(model.config, "kg_loss", "squared") == "margin"
        model.train()
        for ep in range(c.pretrain_epochs):
            total = 0.0
            for _ in range(math.ceil(kgs.n / bs)):
                trip = kgs.next_batch(bs, rng)
                neg = torch.from_numpy(kgs.corrupt_tails(trip, rng)).to(self.device) if margin else None
                kl = model.kg_loss(torch.from_numpy(trip).to(self.device), corrupt_tails=neg)
                opt.zero_grad(set_to_none=True)
                kl.backward()
                opt.step()
                total += float(kl.detach())
            log.info("pretrain TransH pass %d: L_K %.4f", ep + 1, total)

    @staticmethod
    def _item_norm(model: SessionModel) -> float | None:
        try:
            e = model.item_embeddings()
        except NotImplementedError:
            return None
        return round(float(e[1:].detach().norm(dim=1).mean()), 5)

    def _tune_repeat_boost(self, model: SessionModel, best_epoch: int) -> dict | None:
        """Pick the model's inference-time ``repeat_boost`` from its ``repeat_boost_grid`` on
        validation (ties go to the smaller boost), and re-save the best checkpoint with it.
        Neural and count-based models alike (MKM-SR+, and STAN / V-SKNN with reminders)."""
        calib = getattr(model, "calibration_grid", None)
        if callable(calib) and calib():
            return self._calibrate(model, best_epoch, calib())
        grid = tuple(getattr(model.config, "repeat_boost_grid", ()) or ())
        if not grid:
            return None
        select = self.config.select_metric
        curve = {}
        for beta in sorted(set(float(b) for b in grid)):
            model.config.repeat_boost = beta
            curve[beta] = self._eval(model, "valid")[select]
        best = max(curve, key=lambda b: (curve[b], -b))
        model.config.repeat_boost = best
        log.info("%s: repeat_boost %.3g chosen on validation %s (%s)", self.model_name, best, select,
                 ", ".join(f"{b:g}: {v:.3f}" for b, v in curve.items()))
        if self.out_dir is not None and self.main and model.trainable:
            save_checkpoint(self.out_dir / "best", model, self.model_name, self.data,
                            {"epoch": best_epoch, "train_config": dataclasses.asdict(self.config)})
        return {"repeat_boost": best, f"valid_{select}_by_boost": {str(b): v for b, v in curve.items()}}

    def _calibrate(self, model: SessionModel, best_epoch: int, grid: dict[str, tuple]) -> dict:
        """Choose a model's inference-time calibration options (``model.calibration_grid()``:
        config field -> values) on validation, then re-save the best checkpoint with them. Test is
        never looked at. For models that mix learned terms whose weights are biased on the training
        prefixes they memorise (mkmsr-rn): a held-out recalibration, as stacking does.

        The search (:func:`calibration_search`): coordinate ascent (each axis in turn, every value,
        ``rounds`` passes; ties keep the current value) from the configured values and from
        ``starts - 1`` further starting points drawn uniformly from the grid (seeded by the
        training seed); the best validation value of all wins (ties: the earliest start). One
        start is a greedy path, and the path decides where it ends: on Demo(N), seed 3, it ended at
        validation MRR@20 12.14 where the other seeds' ended near 12.93 (docs/results.md). Nested
        axes (``search["nested"]``, :func:`calibration_paths`) join in a last ascent from that best."""
        cfg = model.config
        search = calibration_search(cfg)
        select = search.get("metric") or self.config.select_metric
        seen: dict[str, float] = {}

        def value(p: dict) -> float:
            key = json.dumps(p, sort_keys=True)
            if key not in seen:
                for k, v in p.items():
                    setattr(cfg, k, v)
                got = self._eval(model, "valid")
                seen[key] = sum(got[m] for m in select.split("+"))
            return seen[key]

        memo = getattr(model, "calibration_memo", None)
        with memo() if callable(memo) else contextlib.nullcontext():
            paths = calibration_paths(value, grid, {k: getattr(cfg, k) for k in grid}, self.config.seed, search)
        cur, best = calibration_choice(paths, search)
        for k, v in cur.items():
            setattr(cfg, k, v)
        log.info("%s: calibration %s chosen on validation %s %.3f (%d points, %d paths: %s)", self.model_name, cur,
                 select, best, len(seen), len(paths), ", ".join(f"{b:.3f}" for _, _, b in paths))
        if self.out_dir is not None and self.main and model.trainable:
            save_checkpoint(self.out_dir / "best", model, self.model_name, self.data,
                            {"epoch": best_epoch, "train_config": dataclasses.asdict(self.config)})
        return {**cur, f"valid_{select}_by_calibration": seen,
                "calibration_grid": {k: list(v) for k, v in grid.items()},
                "calibration_search": search,
                "calibration_paths": [{"start": p, "end": e, f"valid_{select}": b} for p, e, b in paths]}

    def _finish(self, model: SessionModel, best_epoch: int, epochs_run: int, stopped_early: bool,
                t_train: float) -> dict:
        # the selected checkpoint's validation, recomputed before any inference-time option is tuned,
        # against the figure logged in its epoch (stop 29's bug: stale cached item vectors in every
        # per-epoch validation after the first one; the two agree exactly on the CPU otherwise)
        valid = self._eval(model, "valid")
        check = self._validation_check(valid, best_epoch)
        tuned = self._tune_repeat_boost(model, best_epoch)
        if tuned:
            valid = self._eval(model, "valid")
        try:
            counts = split_rank_counts(model, self.data, "test", self.config.eval_batch_size, self.config.max_len,
                                       self.device) if self.dist is None else None
        except NonFiniteScoreError as e:
            raise TrainingDiverged(f"{self.model_name}: the selected model gives non-finite test scores: {e}") from e
        test = metrics_from_counts(counts, self.data.item_train_count) if counts is not None else self._eval(model, "test")
        metrics = {
            "model": self.model_name, "seed": self.config.seed, "dataset": str(self.data.path.resolve()),
            "dataset_sha256": self.data.content_hash,
            "protocol": "test = the test set at the epoch with the best validation " + self.config.select_metric,
            "best_epoch": best_epoch, "epochs_run": epochs_run, "stopped_early": stopped_early,
            "valid": valid, "test": test,
            "test_best_over_epochs": self._optimistic(test, best_epoch, bool(tuned)),
            "train_seconds": round(t_train, 2),
            "train_samples_per_s": (round(float(np.mean([h["train_samples_per_s"] for h in self.history])), 1)
                                    if self.history else None),
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
        }
        if check is not None:
            metrics["validation_check"] = check
        if tuned:
            metrics["tuned_on_validation"] = tuned
        for attr, key in (("expert", "explore_expert"), ("expert2", "explore_expert2")):
            if (getattr(self, "_expert_metrics", None) or {}).get(attr):
                metrics[key] = self._expert_metrics[attr]
        if self.out_dir is not None and self.main:
            if not model.trainable:
                save_checkpoint(self.out_dir / "best", model, self.model_name, self.data, {"epoch": 0, "valid": valid})
            if counts is not None:
                # per-sample test rank counts of the selected model, for paired comparisons
                # (mkmsr.benchmark.paired_bootstrap) without reloading the checkpoint
                tmp = self.out_dir / ".test_ranks.tmp.npz"
                np.savez_compressed(tmp, greater=counts["greater"].astype(np.int32),
                                    ties=counts["ties"].astype(np.int32), targets=counts["targets"].astype(np.int64),
                                    inside_above=counts["inside_above"].astype(np.int32))
                tmp.replace(self.out_dir / "test_ranks.npz")
            write_json(self.out_dir / "metrics.json", metrics)
        self.model = model
        return metrics

    def _validation_check(self, valid: dict, best_epoch: int) -> dict | None:
        """:func:`validation_check` of the selected epoch's logged validation figure against ``valid``
        (recomputed on the loaded checkpoint); a warning when they disagree. None for a run with no
        logged epoch (count-based models)."""
        select = self.config.select_metric
        logged = next((h["valid"] for h in self.history if h.get("epoch") == best_epoch and h.get("valid")), None)
        if logged is None or select not in logged or select not in valid:
            return None
        check = validation_check(logged[select], valid[select], select)
        if not check["consistent"]:
            log.warning("%s: validation %s of the selected epoch %d recomputed on its checkpoint is %.4f, but %.4f "
                        "was logged in that epoch: the per-epoch evaluation did not score the weights it saved "
                        "(a stale cache, or a non-deterministic evaluation), so early stopping read another curve",
                        self.model_name, select, best_epoch, valid[select], logged[select])
        return check

    def _optimistic(self, final_test: dict, best_epoch: int = 0, tuned_after: bool = False) -> dict:
        if tuned_after:
            # the per-epoch test figures were taken without the inference-time term tuned after
            # training (repeat_boost): mixing them with the final figure compares unlike models
            return {"protocol": "not applicable: an inference-time term (repeat_boost) was tuned on "
                                "validation after training, so per-epoch test figures describe another model",
                    "not_applicable": True}
        tests = [(h["epoch"], h["test"]) for h in self.history if h.get("test")] + [(best_epoch, final_test)]
        out: dict[str, Any] = {"protocol": OPTIMISTIC_LABEL}
        for key in final_test:
            if "@" in key:
                vals = [t.get(key, np.nan) for _, t in tests]
                j = int(np.nanargmax(vals)) if not all(np.isnan(vals)) else len(tests) - 1
                out[key] = vals[j]
                out.setdefault("epoch_of", {})[key] = tests[j][0]
        return out

    # ---- resume state ---------------------------------------------------------------------------
    def _save_state(self, model, opt, kg_opt, sched, state: dict) -> None:
        out = self.out_dir
        with atomic_dir(out / "state", overwrite=True) as tmp:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
            if kg_opt is not opt:
                torch.save(kg_opt.state_dict(), tmp / "kg_optimizer.pt")
            if sched is not None:
                torch.save(sched.state_dict(), tmp / "scheduler.pt")
            write_json(tmp / "trainer.json", {**state, "history": self.history, "run": self._run_config()})
        atomic_write_text(out / "log.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))

    def _load_state(self, model, opt, kg_opt, sched) -> dict:
        sdir = self.out_dir / "state"
        saved = read_json(sdir / "trainer.json")
        run = saved["run"]
        mine = self._run_config()
        mine = json.loads(json.dumps(mine, default=list))  # tuples become lists, as in the saved JSON
        for key in ("model", "model_config", "dataset_sha256"):
            if run[key] != mine[key]:
                raise ConfigError(f"cannot resume: the run in {self.out_dir} has a different {key} "
                                  f"({run[key]!r} vs {mine[key]!r})")
        model.load_state_dict(torch.load(sdir / "model.pt", map_location=self.device, weights_only=True))
        opt.load_state_dict(torch.load(sdir / "optimizer.pt", map_location=self.device, weights_only=True))
        if kg_opt is not opt and (sdir / "kg_optimizer.pt").exists():
            kg_opt.load_state_dict(torch.load(sdir / "kg_optimizer.pt", map_location=self.device, weights_only=True))
        if sched is not None and (sdir / "scheduler.pt").exists():
            sched.load_state_dict(torch.load(sdir / "scheduler.pt", weights_only=True))
        self.history = saved.pop("history")
        saved.pop("run")
        return saved


def coordinate_ascent(value: Callable[[dict], float], grid: dict[str, tuple], start: dict,
                      rounds: int) -> tuple[dict, float]:
    """Greedy coordinate ascent of ``value`` over ``grid`` (field -> values) from ``start``: each
    axis in turn, every value, ``rounds`` passes (fewer when a pass changes nothing); a value
    replaces the current one only when strictly better. Returns (end point, its value)."""
    cur, best = dict(start), value(start)
    for _ in range(rounds):
        changed = False
        for axis, vals in grid.items():
            for v in vals:
                cand = {**cur, axis: v}
                cv = value(cand)
                if cv > best + 1e-12:
                    cur, best, changed = cand, cv, True
        if not changed:
            break
    return cur, best


def calibration_start_points(grid: dict[str, tuple], configured: dict, seed: int, n: int) -> list[dict]:
    """The calibration's starting points: the configured values, then ``n - 1`` points drawn
    uniformly from ``grid`` with a generator seeded by the training seed (so a run's search is
    reproducible and differs between seeds)."""
    rng = np.random.default_rng([seed, 0xCA1])
    return [dict(configured)] + [{k: vals[int(rng.integers(len(vals)))] for k, vals in grid.items()}
                                 for _ in range(n - 1)]


#: set (to anything but "" or "0") to keep test figures out of the progress log (``blind_test``)
BLIND_TEST_ENV = "MKMSR_BLIND_TEST"


def blind_test() -> bool:
    """Whether the progress log leaves out the per-epoch test figure (environment variable
    ``MKMSR_BLIND_TEST``; ``benchmarks/lead.py --blind``): for a confirmatory run whose test must
    not be seen before its report. Display only: the figure is still computed and kept (log.jsonl,
    the optimistic protocol), so a blind run is the same run."""
    return os.environ.get(BLIND_TEST_ENV, "") not in ("", "0")


def calibration_paths(value: Callable[[dict], float], grid: dict[str, tuple], configured: dict, seed: int,
                      search: dict) -> list[tuple[dict, dict, float]]:
    """The calibration's coordinate-ascent paths, (start, end, value) each: one from every point
    of :func:`calibration_start_points`. With ``search["nested"]`` (axes of ``grid``) those axes are
    held at their configured values in these paths, exactly as for a model without them (same
    grid, same starts), and one more ascent over the whole grid continues from the best of them:
    path number ``starts``, whose value can only be at least that best (a second explore expert,
    ``MKMSRRNConfig.calibration_nested``, then never costs validation). With ``search["flat_too"]``
    the flat search (every axis from the start, its own starts over the whole grid) follows, one path
    per start (``MKMSRRNConfig.calibration_flat_too``)."""
    held = [k for k in search.get("nested", ()) if k in grid]
    inner = {k: v for k, v in grid.items() if k not in held}
    fixed = {k: configured[k] for k in held}
    starts = [{**p, **fixed} for p in calibration_start_points(inner, {k: configured[k] for k in inner}, seed,
                                                               search["starts"])]
    paths = [(p, *coordinate_ascent(value, inner, p, search["rounds"])) for p in starts]
    if held:
        _, end, _ = max(paths, key=lambda t: t[2])              # the first of equals: the configured start
        paths.append((end, *coordinate_ascent(value, grid, end, search["rounds"])))
        if search.get("flat_too"):
            paths += [(p, *coordinate_ascent(value, grid, p, search["rounds"]))
                      for p in calibration_start_points(grid, configured, seed, search["starts"])]
    return paths


def calibration_choice(paths: list[tuple[dict, dict, float]], search: dict) -> tuple[dict, float]:
    """The chosen end of :func:`calibration_paths` and its value: with nested axes the path that
    continued from the best of the others (or, with ``flat_too``, the better of it and the flat
    search's best end; ties: the nested one), else the best path (the first of equals: the configured
    start)."""
    if search.get("nested"):
        n = search["starts"]
        _, end, v = max(paths[n:], key=lambda t: t[2])
    else:
        _, end, v = max(paths, key=lambda t: t[2])
    return end, v


def calibration_search(model_config: Any) -> dict:
    """How :meth:`Trainer._calibrate` searches a model's calibration grid: coordinate ascent,
    ``rounds`` passes, from ``starts`` starting points (the model's ``calibration_starts``; 1, the
    configured values alone, for a model without that option). Saved with the chosen values, so a
    run calibrated by another search is finished again (``mkmsr.training.benchmark``)."""
    out = {"method": "coordinate ascent", "rounds": 2,
           "starts": max(1, int(getattr(model_config, "calibration_starts", 1)))}
    metric = getattr(model_config, "calibration_metric", "")
    if metric:
        out["metric"] = metric
    nested = getattr(model_config, "calibration_nested_axes", None)
    if callable(nested) and nested():
        out["nested"] = list(nested())
        if getattr(model_config, "calibration_flat_too", False):
            out["flat_too"] = True
    return out


def train(data: PreparedData | str | Path, model: str = "mkmsr", out_dir: str | Path | None = None,
          config: TrainConfig | None = None, model_overrides: dict | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = True, dist: "DistContext | None" = None,
          tensorboard_dir: str | Path | None = None) -> dict:
    """Train ``model`` on a prepared dataset; returns the metrics dict (also in out_dir/metrics.json).

    ``dist``: this process's place in a DDP process group (see :mod:`mkmsr.distributed`).
    ``tensorboard_dir``: also write per-epoch scalars there (see :mod:`mkmsr.tensorboard_log`;
    needs the ``tensorboard`` extra).
    """
    if not isinstance(data, PreparedData):
        data = PreparedData(data)
    return Trainer(data, model, model_overrides, config, out_dir, progress, dist,
                   tensorboard_dir=tensorboard_dir).fit(resume=resume, overwrite=overwrite)


#: how far (percentage points) a recomputed validation figure may be from the logged one: the CPU
#: evaluation is deterministic (they agree exactly); a GPU may flip a tie or two
VALIDATION_CHECK_TOLERANCE = 0.05


def validation_check(logged: float, recomputed: float, metric: str,
                     tolerance: float = VALIDATION_CHECK_TOLERANCE) -> dict:
    """Does the validation figure logged in the selected epoch match the one recomputed on the
    saved checkpoint? ``metrics.json``'s ``validation_check``; a mismatch means early stopping and
    the epoch choice read a curve that was not the saved weights' (stop 29 found such a bug)."""
    return {"metric": metric, "logged": float(logged), "recomputed": float(recomputed),
            "consistent": bool(abs(float(logged) - float(recomputed)) <= tolerance)}


def load_train_config(d: dict) -> TrainConfig:
    return _from_dict(TrainConfig, d)
