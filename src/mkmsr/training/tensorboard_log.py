"""Per-epoch training scalars as TensorBoard event files (``mkmsr train --tensorboard DIR``).

Needs the ``tensorboard`` package (``pip install 'mkmsr[tensorboard]'``); it is imported only
when a writer is opened. Tags, one point per epoch (step = the epoch number, 1-based):

==========================  =======================================================
tag                         value
==========================  =======================================================
``loss/sr``                 mean L_S over the epoch's SR steps
``loss/kg``                 mean L_K over the epoch's KG steps (models with knowledge)
``lr``                      the SR optimiser's learning rate during the epoch
``item_embedding_norm``     mean L2 norm of the item embedding rows (1..n_items)
``train/samples_per_s``     training throughput of the epoch
``valid/<metric>``          every ``@k`` metric of the validation split (percent),
                            e.g. ``valid/mrr@20``, ``valid/cold_hit@20``
``test/<metric>``           the same on the test split (when evaluated each epoch)
==========================  =======================================================
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

_RECORD_TAGS = (("sr_loss", "loss/sr"), ("kg_loss", "loss/kg"), ("lr", "lr"),
                ("item_embedding_norm", "item_embedding_norm"), ("train_samples_per_s", "train/samples_per_s"))


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; raises ConfigError naming the extra when the
    ``tensorboard`` package is not installed (call it early to fail before training starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch raises ImportError when tensorboard is missing
        raise ConfigError("TensorBoard logging needs the 'tensorboard' package: "
                          "pip install 'mkmsr[tensorboard]'") from exc
    return SummaryWriter


def open_writer(log_dir: str | Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing into ``log_dir`` (created if missing).

    Raises ConfigError naming the extra when the ``tensorboard`` package is not installed.
    """
    SummaryWriter = summary_writer_class()
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    log.info("TensorBoard event files -> %s", log_dir)
    return SummaryWriter(log_dir=str(log_dir))


def epoch_scalars(rec: dict) -> dict[str, float]:
    """The scalars of one per-epoch training record (a line of ``log.jsonl``) by tag.

    ``None`` values (no KG loss, no test evaluation) are left out; of the metric dicts only
    the ``@k`` metrics are kept (not the sample counts).
    """
    out: dict[str, float] = {}
    for key, tag in _RECORD_TAGS:
        if rec.get(key) is not None:
            out[tag] = float(rec[key])
    for split in ("valid", "test"):
        for name, v in (rec.get(split) or {}).items():
            if "@" in name and v is not None:
                out[f"{split}/{name}"] = float(v)
    return out


def write_epoch(writer: Any, rec: dict) -> None:
    """Add the record's scalars at step ``rec['epoch']`` and flush, so a live TensorBoard sees them."""
    step = int(rec["epoch"])
    for tag, v in epoch_scalars(rec).items():
        writer.add_scalar(tag, v, step)
    writer.flush()
