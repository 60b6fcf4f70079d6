"""Checkpoints are data, not pickles: ``model.pt`` (a state_dict, loaded with
``weights_only=True``), ``model.json`` (model name, config, dataset spec) and the id maps
copied from the prepared dataset, so a checkpoint directory alone can serve recommendations.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .data.dataset import DatasetSpec, PreparedData
from .errors import ConfigError, DataError
from .fsutil import atomic_dir, read_json, write_json
from .models import MODELS, build_model
from .models.base import SessionModel

FORMAT = "mkmsr-checkpoint"
VOCAB_FILES = ("items.parquet", "operations.parquet", "relations.parquet", "attributes.parquet")


def save_checkpoint(path: str | Path, model: SessionModel, model_name: str, data: PreparedData,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a self-contained checkpoint directory atomically (replacing an older one)."""
    path = Path(path)
    with atomic_dir(path, overwrite=True) as tmp:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp / "model.pt")
        write_json(tmp / "model.json", {
            "format": FORMAT, "format_version": 1, "mkmsr_version": __version__,
            "model": model_name, "config": dataclasses.asdict(model.config), "spec": model.spec.to_dict(),
            "dataset": {"path": str(data.path.resolve()), "content_sha256": data.content_hash,
                        "source": data.manifest.get("source")},
            **(extra or {}),
        })
        for name in VOCAB_FILES:
            shutil.copyfile(data.path / name, tmp / name)
        shutil.copyfile(data.path / "manifest.json", tmp / "dataset_manifest.json")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (its ``best/`` checkpoint)."""
    path = Path(path)
    if (path / "model.json").exists():
        return path
    if (path / "best" / "model.json").exists():
        return path / "best"
    raise DataError("no checkpoint here (expected model.json, or best/model.json in a run directory)",
                    file=str(path))


def inference_options(model_name: str) -> list[str]:
    """The options of ``model_name`` that may change after training (field metadata
    ``inference_only`` or ``execution_only``): :func:`load_checkpoint`'s ``overrides``."""
    cls, _ = MODELS[model_name]
    return sorted(f.name for f in dataclasses.fields(cls.Config)
                  if f.metadata.get("inference_only") or f.metadata.get("execution_only"))


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu",
                    overrides: dict[str, Any] | None = None) -> tuple[SessionModel, dict]:
    """Rebuild the model from ``model.json`` and load ``model.pt`` with ``weights_only=True``.

    ``overrides``: model options to change at load, only those that do not touch the trained
    weights (:func:`inference_options`: e.g. MKM-SR-RN's repeat hurdle, ``hurdle_shift=40`` puts
    the session's items above every new item as S-POP does); anything else is a ConfigError. They
    replace the checkpoint's values (calibrated ones included) and are listed in ``meta["overrides"]``.
    """
    path = resolve_checkpoint(path)
    meta = read_json(path / "model.json")
    if meta.get("format") != FORMAT:
        raise DataError(f"not an mkmsr checkpoint (format {meta.get('format')!r})", file=str(path / "model.json"))
    name = meta["model"]
    if name not in MODELS:
        raise DataError(f"checkpoint model {name!r} is not known to this mkmsr version; known: {', '.join(MODELS)}",
                        file=str(path / "model.json"))
    cls, _ = MODELS[name]
    saved = cls.upgrade_config(meta["config"])
    overrides = dict(overrides or {})
    if overrides:
        allowed = inference_options(name)
        for key in overrides:
            if key not in allowed:
                what = ("is learned in training: retrain with it" if key in saved else "is not an option of this model")
                raise ConfigError(f"{name}: {key!r} {what}; options that can change at load: "
                                  f"{', '.join(allowed) or 'none'}")
        saved = {**saved, **overrides}
    try:
        config = cls.Config(**saved)
        model = build_model(name, DatasetSpec(**meta["spec"]), config=config)
    except (TypeError, ValueError) as exc:
        if not overrides:
            raise
        raise ConfigError(f"{name}: the options {overrides} are not valid for this checkpoint: {exc}") from None
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        if not overrides:
            raise
        raise ConfigError(f"{name}: the options {overrides} change the model's structure, so the trained weights "
                          f"do not fit it ({str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    meta["path"] = str(path)
    if overrides:
        meta["overrides"] = overrides
        meta["config"] = dataclasses.asdict(model.config)
    return model, meta
