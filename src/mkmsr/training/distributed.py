"""Multi-process training with PyTorch DDP (``torchrun --nproc_per_node=N -m mkmsr train ...``).

One process per CPU socket / GPU. Result semantics are those of a single process:

* **the same sample stream**: every rank draws the same batch order from the seed and takes
  its 1/N slice of each batch of ``batch_size`` samples; DistributedDataParallel averages the
  gradients, so a step uses the gradient of the whole batch (the global batch stays
  ``batch_size``; the lr is unchanged);
* **knowledge steps** (alternating TransH) are small and sparse: every rank performs the same
  one (same triplets, same random stream), so no sparse gradient crosses processes; at the end
  of every epoch rank 0's parameters are broadcast, which removes any drift that a
  non-deterministic kernel (CUDA index_add) could cause;
* **evaluation** is sharded (rank r ranks samples r, r+N, ...) and the ranks are gathered, so
  every rank computes the metrics of the whole split;
* **early stopping** is rank 0's decision, broadcast to all ranks; **one writer**: only rank 0
  writes checkpoints, logs and metrics.

Backend: ``nccl`` when training on CUDA, ``gloo`` on CPU. Library code never reads the
environment: the CLI builds a :class:`DistContext` from torchrun's variables with
:func:`from_env`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..models.scoring import batch_sr_loss

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    """This process's place in a process group that is already initialised."""

    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's slice of a global batch of sample indices."""
        return idx[self.rank::self.world]

    def gather_array(self, arr: np.ndarray) -> list[np.ndarray]:
        """Every rank's ``arr`` (any length), in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, np.asarray(arr))
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Overwrite every rank's parameters and buffers with rank 0's."""
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        dist.barrier()


def from_env(env: Mapping[str, str], device: str = "auto") -> DistContext | None:
    """Initialise the default process group from torchrun's variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) in ``env``; None when not launched by torchrun or
    with a single process. ``device``: the training device setting (``nccl`` for CUDA)."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("rank %d of %d (local %d), backend %s", rank, world, local_rank, backend)
    return DistContext(rank, world, local_rank, backend)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class SRLoss(nn.Module):
    """The SR loss as a module's forward, so that DistributedDataParallel can wrap it (the
    model's other entry points, e.g. the knowledge loss, stay outside DDP)."""

    def __init__(self, model: nn.Module, softmax=None):
        super().__init__()
        self.model = model
        self.softmax = softmax  # a replacement SR loss (mkmsr.models.scoring.training_loss) or None

    def forward(self, batch, triplets: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                kg_weight: float = 0.0, rng=None, corrupt_tails: torch.Tensor | None = None) -> torch.Tensor:
        """L_S of ``batch``; with ``triplets`` (joint strategy, Eq. 16) + lambda_1 * L_K / B
        (``corrupt_tails``: the negatives of a margin knowledge loss). ``rng``: the epoch's
        generator (the sampled softmax draws its negatives from it: every rank draws the same ones)."""
        loss = batch_sr_loss(self.model, batch, self.softmax, rng)
        if triplets is not None:
            loss = loss + kg_weight * self.model.kg_loss(triplets, weights, corrupt_tails=corrupt_tails) / len(batch)
        return loss


def wrap_sr_loss(model: nn.Module, ctx: DistContext, device: torch.device, softmax=None) -> nn.Module:
    """DDP over the SR loss. Parameters the SR loss does not touch (attribute entities, TransH)
    are found unused at every step (a walk over a graph of a few hundred nodes)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(SRLoss(model, softmax), device_ids=ids, find_unused_parameters=True)
