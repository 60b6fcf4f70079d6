"""``mkmsr evaluate``: a checkpoint (or run directory) on a prepared dataset, full ranking, to JSON."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..checkpoint import load_checkpoint
from ..data.dataset import PreparedData
from ..errors import DataError
from ..fsutil import write_json
from .evaluate import evaluate
from .train import resolve_device


def evaluate_checkpoint(run: str | Path, data: str | Path, splits: Sequence[str] = ("test",), batch_size: int = 512,
                        device: str = "auto", threads: int = 0, out: str | Path | None = None,
                        overrides: dict | None = None) -> tuple[dict, Path]:
    """Evaluate the checkpoint in ``run`` on each of ``splits`` of the prepared dataset ``data``.

    The dataset must be the one the checkpoint was trained on, or one with the same id maps (a
    :class:`DataError` otherwise). Writes ``{"checkpoint", "dataset", "results"}`` to ``out``
    (default: ``evaluation.json`` beside the checkpoint directory) and returns it with its path;
    ``results`` maps each split to its metrics (``cold_*``: the cold-target samples).
    ``overrides``: inference-time model options changed at load (:func:`mkmsr.checkpoint.load_checkpoint`),
    recorded in the report and, by default, in the file name (``evaluation-hurdle_shift=40.json``).
    """
    import torch

    dev = resolve_device(device)
    model, meta = load_checkpoint(run, dev, overrides)
    prepared = PreparedData(data)
    if prepared.spec.to_dict() != meta["spec"] or meta["dataset"]["content_sha256"] != prepared.content_hash:
        # a different artifact is fine only when its id maps match the checkpoint's
        import polars as pl
        ck_items = pl.read_parquet(Path(meta["path"]) / "items.parquet")
        if prepared.spec.to_dict() != meta["spec"] or not prepared.items["item_id"].equals(ck_items["item_id"]):
            raise DataError("this prepared dataset's id maps differ from the checkpoint's "
                            f"(trained on {meta['dataset']['path']}); evaluate on the artifact it was trained on",
                            file=str(data))
    if threads:
        torch.set_num_threads(threads)
    max_len = (meta.get("train_config") or {}).get("max_len")
    res = {s: evaluate(model, prepared, s, batch_size, max_len, dev) for s in splits}
    if out:
        path = Path(out)
    else:  # beside the checkpoint; an evaluation with changed options never replaces the plain one
        tag = "".join(f"-{k}={v}" for k, v in sorted((meta.get("overrides") or {}).items()))
        path = Path(meta["path"]).parent / f"evaluation{re.sub(r'[^A-Za-z0-9_.=-]', '_', tag)}.json"
    report = {"checkpoint": meta["path"], "dataset": str(prepared.path),
              **({"overrides": meta["overrides"]} if meta.get("overrides") else {}), "results": res}
    write_json(path, report)
    return report, path
