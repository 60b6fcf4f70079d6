"""The paper's experiments in one place: many models x many prepared datasets x seeds, the
training-strategy curves (Fig. 3), the lambda_1 sweep (Fig. 5) and the embedding map (Fig. 4).

Everything runs through the same training loop, metrics and checkpoints as ``mkmsr train``.
Nothing is tuned on test: count-based models pick their hyper-parameters by coordinate ascent by
validation MRR@20 (the loop's ``select_metric``), neural models keep their papers' defaults and
select the epoch on validation. Each run lives in its own directory
``OUT/runs/<dataset>/<model>[@<variant>]/seed<n>``; a finished run (``metrics.json`` with the
same resolved configuration) is never redone, an interrupted one is resumed.

Layout of ``OUT``::

    runs/...            one Trainer run directory per (dataset, model, variant, seed)
    tuning/<dataset>/<model>.json   the validation grid of a count-based model
    results.json / results.md       the table (mean +- std over seeds, both protocols)
    strategies.json, lambda.json, embedding_map.json   the experiments' numbers
    figures/*.png       (with the ``plot`` extra: matplotlib)
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..data.dataset import PreparedData
from ..errors import ConfigError
from .evaluate import evaluate
from ..fsutil import atomic_dir, atomic_write_text, read_json, write_json
from ..models import MODELS, build_model, make_config, model_names
from .train import TrainConfig, Trainer, blind_test, calibration_search, coordinate_ascent

log = logging.getLogger(__name__)

#: the paper's Table 2 order, then the count-based baselines it lacks
TABLE2_MODELS = ["fpmc", "gru4rec-bpr", "gru4rec-ce", "narm", "stamp", "sr-gnn", "rib", "km-sr", "m-gru-sr",
                 "m-ggnn-sr", "m-ggnnx2-sr", "m-sr", "mkmsr"]
SIMPLE_MODELS = ["pop", "s-pop", "item-knn", "v-sknn", "stan", "v-sknn-remind", "stan-remind"]

#: validation search axes of the count-based models, searched by coordinate ascent (see
#: ``tune_on_validation``): session-rec's ranges, each axis wide enough that a chosen value is
#: not pinned to an edge on Demo / Demo(N) (the earlier small grid left STAN on an edge of every axis)
TUNING_GRIDS: dict[str, dict[str, list]] = {
    "s-pop": {"mode": ["recency", "count"]},
    "item-knn": {"lmbd": [0.0, 20.0, 100.0, 500.0], "alpha": [0.25, 0.5, 0.75, 1.0]},
    "v-sknn": {"k": [50, 100, 200, 500], "sample_size": [500, 1000, 2500, 0],
               "weighting": ["linear", "div", "quadratic", "log", "same"],
               "weighting_score": ["linear", "div", "quadratic", "log", "same"], "idf_weighting": [0.0, 1.0, 2.0]},
    "stan": {"k": [50, 100, 200, 500], "sample_size": [1000, 2500, 5000, 0],
             "lambda_spw": [0.5, 1.02, 2.5, 5.0, 10.0], "lambda_inh": [0.5, 1.0, 2.05, 4.0, 8.0, 16.0],
             "lambda_snh": [1.25, 5.0, 20.0, 80.0, 320.0]},
}
#: models whose searched options are those of another registered model (the reminder variants
#: add only the validation-tuned repeat boost, which the trainer picks after fitting)
TUNE_AS = {"v-sknn-remind": "v-sknn", "stan-remind": "stan"}
#: models with a STAN inside (its ``nb_*`` options): they get STAN's validation-tuned options.
#: Only the mkmsr-rn variants whose neighbourhood is on (``neighbours``; ``mkmsr-rn-nb``): the
#: others would only carry unused options (and wait for STAN's search)
NEIGHBOURHOOD_OF = {name: "stan" for name, (cls, over) in MODELS.items()
                    if cls.__name__ == "MKMSRRN" and {**dataclasses.asdict(cls.Config()), **over}["neighbours"]}

#: per-model training defaults that differ from the shared ones (each from the model's own code)
#: per-model training overrides. Empty on purpose: SR-GNN's code decays the lr x 0.1 every
#: 3 epochs, tuned for datasets with ~10^5 steps per epoch; on Demo (~160 steps per epoch) that
#: froze SR-GNN at Hit@20 3.4% after 2 epochs, so every model trains with the same constant
#: Adam lr (``--lr-decay-step 3 --lr-decay 0.1`` restores SR-GNN's schedule).
MODEL_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {}

PROTOCOLS = {"selected": "test at the epoch chosen by validation MRR@20",
             "best_over_epochs": "best test value over epochs (optimistic, paper-style)"}
REPORT_METRICS = ("hit@20", "mrr@20", "ndcg@20", "cold_hit@20", "cold_mrr@20", "rt_hit@20", "rt_mrr@20",
                  "repeat_hit@20", "repeat_mrr@20", "first_hit@20", "first_mrr@20", "cold_first_hit@20",
                  "cold_first_mrr@20")


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def cpu_lock(path: str | Path | None):
    """Hold an exclusive ``flock`` on ``path`` (None: no lock) — the shared-CPU etiquette."""
    if path is None:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class RunSpec:
    """One training run: where, on what, with which settings."""

    dataset: str                      # label
    data_path: Path
    model: str
    seed: int
    model_overrides: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)
    variant: str = ""                 # "" for the table's run; e.g. "strategy=joint"

    def run_dir(self, out: Path) -> Path:
        name = self.model + (f"@{self.variant}" if self.variant else "")
        return out / "runs" / self.dataset / name / f"seed{self.seed}"

    def train_config(self) -> TrainConfig:
        cfg = TrainConfig(**{**MODEL_TRAIN_DEFAULTS.get(self.model, {}), **self.train_overrides, "seed": self.seed})
        cfg.validate()
        return cfg


def _as_json(obj) -> Any:
    return json.loads(json.dumps(obj))  # as JSON reads it back (tuples become lists)


def _complete(saved: dict | None, defaults: dict) -> dict:
    """A saved configuration with every option it lacks set to today's default: an option added
    after a run was trained defaults to the behaviour the run had."""
    return {**defaults, **(saved or {})}


def _same_run(run_dir: Path, spec: RunSpec, data: PreparedData) -> bool:
    return (run_dir / "metrics.json").exists() and (run_dir / "config.json").exists() \
        and _run_mismatch(run_dir, spec, data) is None


def _run_mismatch(run_dir: Path, spec: RunSpec, data: PreparedData) -> str | None:
    """Why the finished run in ``run_dir`` is not the run ``spec`` asks for (which options
    differ, and how), or None when it is."""
    saved = read_json(run_dir / "config.json")
    cfg = make_config(spec.model, spec.model_overrides)
    want_model = _as_json(dataclasses.asdict(cfg))
    want_train = _as_json(dataclasses.asdict(spec.train_config()))
    saved_model = _complete(MODELS[spec.model][0].upgrade_config(saved.get("model_config")),
                            _as_json(dataclasses.asdict(make_config(spec.model))))
    saved_train = _complete(saved.get("train_config"), _as_json(dataclasses.asdict(TrainConfig())))
    # options that change how, not what, a model computes (field metadata execution_only) may differ
    how = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("execution_only")}
    saved_model = {k: v for k, v in saved_model.items() if k not in how}
    want_model = {k: v for k, v in want_model.items() if k not in how}
    if saved.get("model") != spec.model:
        return f"model {saved.get('model')!r}, not {spec.model!r}"
    if saved.get("dataset_sha256") != data.content_hash:
        return "trained on other data (dataset_sha256 differs)"
    for what, have, want in (("training option", saved_train, want_train), ("model option", saved_model, want_model)):
        diff = [f"{k} {have.get(k)!r} (asked: {want.get(k)!r})" for k in sorted(set(have) | set(want))
                if have.get(k) != want.get(k)]
        if diff:
            return f"{what}s differ: " + ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
    if not _calibrated_alike(run_dir, spec, data, cfg):
        return "calibrated over an older grid (finished again when trained)"
    return None


def _calibrated_alike(run_dir: Path, spec: RunSpec, data: PreparedData, cfg) -> bool:
    """A model calibrated on validation after training (``calibration_grid``) was calibrated over
    today's grid by today's search (:func:`calibration_search`): a run from before an axis or a
    value was added, or searched otherwise, is finished again (:meth:`Trainer.refinish`, no
    training)."""
    cls = MODELS[spec.model][0]
    if not hasattr(cls, "calibration_grid"):
        return True
    grid = build_model(spec.model, data.spec, config=cfg).calibration_grid()
    if not grid:
        return True
    tuned = read_json(run_dir / "metrics.json").get("tuned_on_validation") or {}
    # runs from before the search was recorded searched from one start
    if tuned.get("calibration_search", {**calibration_search(None), "starts": 1}) != calibration_search(cfg):
        return False
    if "calibration_grid" in tuned:
        return tuned["calibration_grid"] == _as_json(grid)
    return set(grid) <= set(tuned)


def _training_donor(out: Path, spec: RunSpec, data: PreparedData) -> Path | None:
    """A finished run (this run's own folder first, then the same dataset and seed of any model of
    the same class) whose training is this run's: same training identity
    (:meth:`SessionModel.training_identity`), training options and data; None when there is none."""
    cls = MODELS[spec.model][0]
    if not cls.trainable:
        return None
    want_model = cls.training_identity(_as_json(dataclasses.asdict(make_config(spec.model, spec.model_overrides))))
    want_train = _as_json(dataclasses.asdict(spec.train_config()))
    own = spec.run_dir(out)
    base = own.parent.parent
    others = sorted(base.glob(f"*/seed{spec.seed}")) if base.is_dir() else []
    for rd in [own] + [d for d in others if d != own]:
        cfg_path, state = rd / "config.json", rd / "state" / "trainer.json"
        if not (rd / "metrics.json").exists() or not cfg_path.exists() or not state.exists() \
                or not (rd / "best" / "model.pt").exists():
            continue
        saved = read_json(cfg_path)
        if MODELS.get(saved.get("model"), (None,))[0] is not cls or saved.get("dataset_sha256") != data.content_hash:
            continue
        saved_model = _complete(cls.upgrade_config(saved.get("model_config")), _as_json(dataclasses.asdict(cls.Config())))
        saved_train = _complete(saved.get("train_config"), _as_json(dataclasses.asdict(TrainConfig())))
        if cls.training_identity(saved_model) == want_model and saved_train == want_train:
            return rd
    return None


#: run subfolder of each explore expert -> its option (mkmsr-rn)
EXPERT_DIRS = {"expert": "explore_expert", "expert2": "explore_expert2"}


def _expert_of(rd: Path, sub: str = "expert") -> str:
    """The explore expert a finished run was trained with in ``RUN/sub`` ("" for none), from its
    config.json."""
    saved = read_json(rd / "config.json") if (rd / "config.json").exists() else {}
    return str((saved.get("model_config") or {}).get(EXPERT_DIRS[sub], ""))


def _expert_of_spec(spec: RunSpec, sub: str = "expert") -> str:
    return str(getattr(make_config(spec.model, spec.model_overrides), EXPERT_DIRS[sub], ""))


def _seed_expert(out: Path, spec: RunSpec, data: PreparedData, rd: Path) -> None:
    """A model with an explore expert (mkmsr-rn) trains the expert first, in ``RUN/expert``, with
    the run's own training options (``Trainer._attach_expert``): that is exactly the expert
    model's own run in this benchmark (its row: same dataset, seed, training options, data, its
    default options), so where that run is finished it is copied there instead of trained again."""
    for sub in EXPERT_DIRS:
        _seed_one_expert(out, spec, data, rd, sub)


def _seed_one_expert(out: Path, spec: RunSpec, data: PreparedData, rd: Path, sub: str) -> None:
    name = _expert_of_spec(spec, sub)
    dest = rd / sub
    if not name or (dest / "metrics.json").exists():
        return
    sib = dataclasses.replace(spec, model=name, model_overrides={})
    src = sib.run_dir(out)
    if (_as_json(dataclasses.asdict(sib.train_config())) != _as_json(dataclasses.asdict(spec.train_config()))
            or not _same_run(src, sib, data) or not (src / "state" / "trainer.json").exists()):
        return
    rd.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dest, overwrite=True) as tmp:
        for name_ in ("best", "state"):
            shutil.copytree(src / name_, tmp / name_)
        for name_ in ("config.json", "log.jsonl", "metrics.json", "test_ranks.npz"):
            if (src / name_).exists():
                shutil.copyfile(src / name_, tmp / name_)
    log.info("%s %s seed %d: explore expert copied from %s", spec.dataset, spec.model, spec.seed, src)


def run_one(out: Path, spec: RunSpec, data: PreparedData, lock: str | Path | None = None,
            progress: bool = False, train: bool = True,
            tensorboard_dir: str | Path | None = None) -> tuple[dict | None, bool]:
    """Train one run unless an identical finished one exists. Returns (metrics, trained_now);
    with ``train=False`` only a finished run is read ((None, False) when there is none).
    ``tensorboard_dir``: per-epoch scalars go to its subfolder ``<dataset>/<model>/seed<N>``."""
    rd = spec.run_dir(out)
    tb = Path(tensorboard_dir) / rd.relative_to(out / "runs") if tensorboard_dir else None
    if _same_run(rd, spec, data):
        return read_json(rd / "metrics.json"), False
    if not train:
        if (rd / "metrics.json").exists() and (rd / "config.json").exists():
            # a report must not silently drop a finished run that other flags would have found
            log.warning("%s %s seed %d: the finished run in %s is not reported: %s", spec.dataset, spec.model,
                        spec.seed, rd, _run_mismatch(rd, spec, data))
        return None, False
    donor = _training_donor(out, spec, data)
    if donor is not None:
        # a finished run with the same training (it differs in inference-time options only):
        # reuse its weights, redo what follows training (calibration, figures)
        with cpu_lock(lock):
            if donor != rd:
                (rd / "metrics.json").unlink(missing_ok=True)
                with atomic_dir(rd, overwrite=True) as tmp:
                    for name in ("best", "state", *EXPERT_DIRS):
                        if name not in EXPERT_DIRS or ((donor / name).is_dir()
                                                       and _expert_of(donor, name) == _expert_of_spec(spec, name)):
                            shutil.copytree(donor / name, tmp / name)
                    for name in ("log.jsonl", "config.json"):
                        if (donor / name).exists():
                            shutil.copyfile(donor / name, tmp / name)
            else:
                (rd / "metrics.json").unlink(missing_ok=True)
            _seed_expert(out, spec, data, rd)
            m = Trainer(data, spec.model, spec.model_overrides, spec.train_config(), rd, progress=progress).refinish()
        log.info("%s %s seed %d: training reused from %s", spec.dataset, spec.model, spec.seed, donor)
        return m, True
    resume = (rd / "state" / "trainer.json").exists() and (rd / "config.json").exists()
    if resume:
        saved = read_json(rd / "config.json")
        resume = (_complete(saved.get("train_config"), _as_json(dataclasses.asdict(TrainConfig())))
                  == _as_json(dataclasses.asdict(spec.train_config())))
    # a metrics.json left from an older configuration must not outlive this run's config.json
    # (the Trainer rewrites config.json first; an interruption would pair it with stale metrics)
    (rd / "metrics.json").unlink(missing_ok=True)
    with cpu_lock(lock):
        _seed_expert(out, spec, data, rd)
        tr = Trainer(data, spec.model, spec.model_overrides, spec.train_config(), rd, progress=progress,
                     tensorboard_dir=tb)
        try:
            m = tr.fit(resume=resume, overwrite=not resume)
        except ConfigError:  # the saved state belongs to another configuration: start again
            m = Trainer(data, spec.model, spec.model_overrides, spec.train_config(), rd,
                        progress=progress, tensorboard_dir=tb).fit(overwrite=True)
    return m, True


# ---------------------------------------------------------------------------------------------
# tuning of count-based models on validation
# ---------------------------------------------------------------------------------------------

def grid_points(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def tune_on_validation(out: Path, label: str, data: PreparedData, model: str, grid: dict[str, list],
                       metric: str = "mrr@20", lock: str | Path | None = None, rounds: int = 3) -> dict:
    """Pick a count-based model's options by validation ``metric`` (test is never looked at).

    Coordinate ascent over the axes of ``grid``: start from each axis's value closest to the
    model's default (its first value otherwise), then try every value of one axis with the
    others fixed, keep the best, move to the next axis; repeat until a round changes nothing
    (at most ``rounds``). Every evaluated point is recorded. A full grid of the widened axes
    would cost thousands of evaluations; coordinate ascent costs the sum of the axis sizes per
    round. Writes ``OUT/tuning/<label>/<model>.json`` and reuses it when grid and data match.
    """
    path = out / "tuning" / label / f"{model}.json"
    if path.exists():
        saved = read_json(path)
        if saved.get("grid") == grid and saved.get("dataset_sha256") == data.content_hash and saved.get("metric") == metric:
            return saved["best"]
    defaults = dataclasses.asdict(make_config(model))
    cur = {k: (defaults[k] if defaults.get(k) in v else v[0]) for k, v in grid.items()}
    seen: dict[str, dict] = {}

    def value(p: dict) -> float:
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            m = build_model(model, data.spec, p)
            m.fit_statistics(data)
            v = evaluate(m, data, "valid")
            seen[key] = {"options": dict(p), "valid": {k: v[k] for k in ("hit@20", "mrr@20", "ndcg@20", "rt_hit@20")}}
        return seen[key]["valid"][metric]

    with cpu_lock(lock):
        cur, _ = coordinate_ascent(value, grid, cur, rounds)
    write_json(path, {"model": model, "metric": metric, "grid": grid, "search": "coordinate ascent",
                      "dataset_sha256": data.content_hash, "points": list(seen.values()), "best": cur})
    log.info("tuned %s on %s validation (%d points): %s", model, label, len(seen), cur)
    return cur


def tune_with_optuna(out: Path, label: str, data: PreparedData, model: str, budget: dict,
                     train_overrides: dict | None = None, model_overrides: dict | None = None,
                     lock: str | Path | None = None, on_progress: Callable[[str], None] | None = None) -> dict:
    """The same search budget for every model: ``mkmsr tune`` (:func:`mkmsr.tune.tune`: TPE,
    median pruning on validation, the model's default as trial 0) with ``budget`` =
    ``{"trials": N, "minutes": M}`` (M None = no clock; with ``"clock": "cpu"`` M is CPU
    minutes, the same search whatever else the machine runs), on validation only.

    The study lives in ``OUT/optuna/<label>/<model>/`` and resumes when interrupted; once a
    search has finished (trials reached, space exhausted or minutes spent) its outcome is
    recorded in ``budget.json`` there and reused, so rerunning the benchmark never spends more
    than the budget. Returns ``{"model": options, "train": options}`` of the best trial (the
    ``model_overrides`` included; the model's defaults when no trial completed).
    """
    from .tune import tune as optuna_tune

    folder = out / "optuna" / label / model
    clock = budget.get("clock") or "wall"
    want = {"trials": int(budget["trials"]), "minutes": budget.get("minutes"),
            # a wall budget keeps the record it had before the clock was an option
            **({"clock": clock} if clock != "wall" else {}),
            "model_overrides": json.loads(json.dumps(model_overrides or {})), "dataset_sha256": data.content_hash,
            "train_overrides": {k: v for k, v in (train_overrides or {}).items() if k not in ("threads", "device")}}
    record = folder / "budget.json"
    if record.exists():
        saved = read_json(record)
        if saved.get("budget") == want:
            return saved["best"]
    with cpu_lock(lock):
        summary = optuna_tune(data, model, folder, trials=want["trials"], minutes=want["minutes"], seed=0,
                              train_overrides=train_overrides, model_overrides=model_overrides,
                              on_progress=on_progress, clock=clock)
    b = summary["best"]
    best = {"model": {**(model_overrides or {}), **(b["model_options"] if b else {})},
            "train": dict(b["train_options"]) if b else {}}
    write_json(record, {"budget": want, "best": best, "summary": summary})
    return best


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

def mean_std(vals: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def run_figures(m: dict) -> str:
    """A finished run's figures for the progress log: test Hit@20 / MRR@20, or, in a blind run
    (``train.blind_test``), validation's instead, so a confirmatory block's test is first read in
    its report; a warning when the run's ``validation_check`` failed (train.validation_check)."""
    check = m.get("validation_check") or {}
    warn = (f"; WARNING: validation {check['metric']} of the selected epoch logged {check['logged']:.3f}, "
            f"recomputed {check['recomputed']:.3f}" if check and not check.get("consistent", True) else "")
    if blind_test():
        return f"valid Hit@20 {m['valid']['hit@20']:.2f} MRR@20 {m['valid']['mrr@20']:.2f} (test hidden){warn}"
    return f"test Hit@20 {m['test']['hit@20']:.2f} MRR@20 {m['test']['mrr@20']:.2f}{warn}"


def run_benchmark(out: str | Path, datasets: dict[str, str | Path], models: Sequence[str] | None = None,
                  seeds: int = 5, train_overrides: dict | None = None, tune: bool = True,
                  lock: str | Path | None = None, progress: bool = False,
                  on_progress: Callable[[str], None] | None = None,
                  tensorboard_dir: str | Path | None = None, optuna: dict | None = None) -> dict:
    """Run ``models`` x ``datasets`` x ``seeds`` and write ``results.json`` / ``results.md``.

    ``datasets``: label -> prepared dataset directory. Count-based models (``trainable=False``)
    are deterministic: they run once (seed 0), after tuning on validation when ``tune``.
    Tuning: by default the count-based models' validation grids (``TUNING_GRIDS``, coordinate
    ascent) and the neural models at their papers' settings; with ``optuna`` =
    ``{"trials": N, "minutes": M[, "clock": "cpu"]}`` every model, neural and count-based, is searched by
    :func:`tune_with_optuna` with that same budget (a model with a STAN inside takes STAN's
    searched options as its ``nb_*`` ones and searches its own on top).
    Returns the results dict (also in ``OUT/results.json``). ``tensorboard_dir``: each run
    trained now writes its per-epoch scalars to ``<dir>/<dataset>/<model>/seed<N>``.
    """
    out = Path(out)
    models = list(models or model_names())
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model {unknown[0]!r}; valid models: {', '.join(MODELS)}")
    if seeds < 1:
        raise ConfigError("seeds must be >= 1")
    say = on_progress or log.info
    loaded = {label: PreparedData(p) for label, p in datasets.items()}
    plan = []
    for label, data in loaded.items():
        for model in models:
            trainable = MODELS[model][0].trainable
            plan += [(label, model, s) for s in range(seeds if trainable else 1)]
    t0 = time.perf_counter()
    tuned: dict[tuple[str, str], dict] = {}
    tuned_train: dict[tuple[str, str], dict] = {}
    for i, (label, model, seed) in enumerate(plan, 1):
        data = loaded[label]
        if (label, model) not in tuned and optuna and tune:
            fixed = {}
            if model in NEIGHBOURHOOD_OF:
                nb = tune_with_optuna(out, label, data, NEIGHBOURHOOD_OF[model], optuna, train_overrides, lock=lock,
                                      on_progress=say)
                fixed = {f"nb_{k}": v for k, v in nb["model"].items()}
            best = tune_with_optuna(out, label, data, TUNE_AS.get(model, model), optuna, train_overrides, fixed,
                                    lock=lock, on_progress=say)
            tuned[(label, model)], tuned_train[(label, model)] = best["model"], best["train"]
        if (label, model) not in tuned:
            base = TUNE_AS.get(model, model)
            grid = TUNING_GRIDS.get(base) if tune else None
            tuned[(label, model)] = tune_on_validation(out, label, data, base, grid, lock=lock) if grid else {}
            if model in NEIGHBOURHOOD_OF and tune:
                nb = NEIGHBOURHOOD_OF[model]
                best = tune_on_validation(out, label, data, nb, TUNING_GRIDS[nb], lock=lock)
                tuned[(label, model)] = {**tuned[(label, model)], **{f"nb_{k}": v for k, v in best.items()}}
        spec = RunSpec(label, data.path, model, seed, tuned[(label, model)],
                       {**(train_overrides or {}), **tuned_train.get((label, model), {})})
        t = time.perf_counter()
        m, fresh = run_one(out, spec, data, lock, progress, tensorboard_dir=tensorboard_dir)
        say(f"[{i}/{len(plan)}] {label} {model} seed {seed}: "
            f"{'trained in %.0fs' % (time.perf_counter() - t) if fresh else 'done before'}; "
            f"{run_figures(m)} (epoch {m['best_epoch']}); elapsed {(time.perf_counter() - t0) / 60:.1f} min")
    results = collect_results(out, datasets, models, seeds, train_overrides,
                              {k: {**v, **{f"train.{a}": b for a, b in tuned_train.get(k, {}).items()}}
                               for k, v in tuned.items()})
    if optuna and tune:
        results["tuning"] = {"search": "optuna (mkmsr tune: TPE, median pruning)", **optuna}
    write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results))
    return results


def collect_results(out: Path, datasets: dict, models: Sequence[str], seeds: int, train_overrides: dict | None,
                    tuned: dict) -> dict:
    res: dict[str, Any] = {"protocols": PROTOCOLS, "seeds": seeds, "train_overrides": train_overrides or {},
                           "datasets": {}}
    for label, path in datasets.items():
        data = PreparedData(path)
        rows = {}
        for model in models:
            trainable = MODELS[model][0].trainable
            runs = []
            for s in range(seeds if trainable else 1):
                rd = RunSpec(label, Path(path), model, s).run_dir(out)
                if (rd / "metrics.json").exists():
                    runs.append(read_json(rd / "metrics.json"))
            if not runs:
                continue
            row: dict[str, Any] = {"runs": len(runs), "deterministic": not trainable,
                                   "options": tuned.get((label, model), {}),
                                   "best_epochs": [r["best_epoch"] for r in runs],
                                   "train_seconds": mean_std([r["train_seconds"] for r in runs])}
            for proto, key in (("selected", "test"), ("best_over_epochs", "test_best_over_epochs")):
                def val(r, k, key=key):
                    if r[key].get("not_applicable"):
                        return math.nan          # e.g. a boost tuned after training: see Trainer._optimistic
                    return r[key].get(k, r["test"].get(k, math.nan))
                row[proto] = {k: mean_std([val(r, k) for r in runs]) for k in REPORT_METRICS}
                row[proto + "_per_seed"] = {k: [val(r, k) for r in runs] for k in ("hit@20", "mrr@20")}
            row["tuned_after_training"] = [r.get("tuned_on_validation") for r in runs if r.get("tuned_on_validation")]
            row["valid"] = {k: mean_std([r["valid"][k] for r in runs]) for k in ("hit@20", "mrr@20")}
            # per-seed per-sample test rank counts (for paired_bootstrap), where the runs saved them
            row["rank_files"] = [str(rd) for s in range(seeds if trainable else 1)
                                 if ((rd := RunSpec(label, Path(path), model, s).run_dir(out)) / "test_ranks.npz").exists()]
            rows[model] = row
        res["datasets"][label] = {"path": str(path), "manifest_splits": data.manifest["splits"],
                                  "test_samples": data.manifest["splits"]["test"]["samples"], "models": rows}
    return res


def per_sample_metric(greater: np.ndarray, ties: np.ndarray, metric: str = "mrr@20") -> np.ndarray:
    """(n,) a sample's pessimistic-rank metric in percent (``hit@k`` or ``mrr@k``) from the rank
    counts a run saves in ``test_ranks.npz``."""
    kind, k = metric.split("@")
    r = np.asarray(greater, dtype=np.float64) + np.asarray(ties) + 1.0
    if kind == "hit":
        return 100.0 * (r <= int(k))
    if kind == "mrr":
        return 100.0 * np.where(r <= int(k), 1.0 / r, 0.0)
    raise ConfigError(f"per-sample metric must be hit@k or mrr@k, got {metric!r}")


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired difference A - B with the spread over seeds *and* test samples.

    ``a`` (S_a, n) and ``b`` (S_b, n): one row per seed (a deterministic model has one row) of a
    per-sample metric on the same n test samples. Each bootstrap replicate draws the n samples
    with replacement (the same draw for both models: paired) and, independently, each model's
    seeds with replacement, and takes the difference of the means. Returns the observed mean
    difference, the bootstrap standard error, a 95% percentile interval and the verdict rule's
    inputs (``mean``, ``se``, ``lo``, ``hi``, ``n_boot``, ``seeds_a``, ``seeds_b``)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired comparison needs the same samples: {a.shape[1]} vs {b.shape[1]}")
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    diffs = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(1, n))
    for lo in range(0, n_boot, chunk):
        m = min(chunk, n_boot - lo)
        idx = rng.integers(0, n, size=(m, n))
        sa = rng.integers(0, a.shape[0], size=(m, a.shape[0]))
        sb = rng.integers(0, b.shape[0], size=(m, b.shape[0]))
        # mean over resampled seeds of each model, then over the resampled (paired) samples
        ma = np.stack([a[sa[:, j]] for j in range(a.shape[0])]).mean(axis=0)     # (m, n)
        mb = np.stack([b[sb[:, j]] for j in range(b.shape[0])]).mean(axis=0)
        diffs[lo:lo + m] = np.take_along_axis(ma - mb, idx, axis=1).mean(axis=1)
    return {"mean": float(a.mean() - b.mean()), "se": float(diffs.std(ddof=1)),
            "lo": float(np.percentile(diffs, 2.5)), "hi": float(np.percentile(diffs, 97.5)),
            "n_boot": n_boot, "seeds_a": int(a.shape[0]), "seeds_b": int(b.shape[0])}


def best_by_validation(rows: dict, candidates: Iterable[str], metric: str) -> str | None:
    """The comparison partner among ``candidates``: the row with the best *validation* mean of
    ``metric`` (never the test mean)."""
    c = [m for m in candidates if m in rows and rows[m].get("valid", {}).get(metric)]
    return max(c, key=lambda m: rows[m]["valid"][metric][0]) if c else None


def fmt_ms(t: tuple[float, float] | None, det: bool = False) -> str:
    if t is None or math.isnan(t[0]):
        return "–"
    return f"{t[0]:.2f}" if det else f"{t[0]:.2f} ± {t[1]:.2f}"


def results_markdown(results: dict, paper: dict | None = None) -> str:
    """One table per dataset: Hit@20 / MRR@20 under both protocols (percent, mean ± std)."""
    lines = []
    for label, d in results["datasets"].items():
        lines += [f"### {label}", "",
                  f"Test samples: {d['test_samples']}; repeat-consumption share of test targets: "
                  f"{d['manifest_splits']['test']['repeat_target_share']:.3f}.", ""]
        head = ("| model | runs | Hit@20 (val-selected) | MRR@20 (val-selected) | Hit@20 random ties | "
                "MRR@20 random ties | Hit@20 (best over epochs) | MRR@20 (best over epochs) |")
        sep = "| --- | --- | --- | --- | --- | --- | --- | --- |"
        if paper and label in paper:
            head += " paper Hit@20 | paper MRR@20 |"
            sep += " --- | --- |"
        lines += [head, sep]
        for model, r in d["models"].items():
            det = r["deterministic"]
            cells = [model, f"{r['runs']}{' (deterministic)' if det else ''}",
                     fmt_ms(r["selected"]["hit@20"], det), fmt_ms(r["selected"]["mrr@20"], det),
                     fmt_ms(r["selected"]["rt_hit@20"], det), fmt_ms(r["selected"]["rt_mrr@20"], det),
                     fmt_ms(r["best_over_epochs"]["hit@20"], det) if not det else "n/a (no epochs)",
                     fmt_ms(r["best_over_epochs"]["mrr@20"], det) if not det else "n/a (no epochs)"]
            if r.get("tuned_after_training") and not det:
                cells[6] = cells[7] = "n/a (tuned after training)"
            if paper and label in paper:
                p = paper[label].get(model)
                cells += [f"{p[0]:.3f}" if p else "–", f"{p[1]:.3f}" if p else "–"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# experiments: strategies (Fig. 3) and lambda_1 (Fig. 5)
# ---------------------------------------------------------------------------------------------

def run_variants(out: str | Path, label: str, data_path: str | Path, model: str,
                 variants: dict[str, dict], seeds: int = 1, train_overrides: dict | None = None,
                 lock: str | Path | None = None, on_progress: Callable[[str], None] | None = None,
                 train: bool = True) -> dict:
    """Train ``model`` once per variant (name -> TrainConfig overrides) and seed; return each
    run's per-epoch curves and final metrics. A variant equal to the table's settings uses the
    table's run directory (so it is not trained twice)."""
    out = Path(out)
    data = PreparedData(data_path)
    say = on_progress or log.info
    res = {}
    for name, over in variants.items():
        runs = []
        for seed in range(seeds):
            base = dict(train_overrides or {})
            merged = {**base, **over}
            variant = "" if merged == base else name
            spec = RunSpec(label, data.path, model, seed, {}, merged, variant)
            t = time.perf_counter()
            m, fresh = run_one(out, spec, data, lock, train=train)
            if m is None:
                say(f"{label} {model} {name} seed {seed}: not run")
                continue
            say(f"{label} {model} {name} seed {seed}: {'trained in %.0fs' % (time.perf_counter() - t) if fresh else 'done before'};"
                f" valid MRR@20 {m['valid']['mrr@20']:.2f}, test MRR@20 {m['test']['mrr@20']:.2f}")
            logp = spec.run_dir(out) / "log.jsonl"
            curve = [json.loads(x) for x in logp.read_text().splitlines()] if logp.exists() else []
            runs.append({"seed": seed, "valid_mrr@20": [r["valid"]["mrr@20"] for r in curve],
                         "valid_hit@20": [r["valid"]["hit@20"] for r in curve],
                         "test_mrr@20": [r["test"]["mrr@20"] for r in curve if r.get("test")],
                         "selected": {k: m["test"][k] for k in ("hit@20", "mrr@20")},
                         "best_over_epochs": {k: m["test_best_over_epochs"][k] for k in ("hit@20", "mrr@20")},
                         "valid": {k: m["valid"][k] for k in ("hit@20", "mrr@20")},
                         "best_epoch": m["best_epoch"]})
        res[name] = {"overrides": over, "runs": runs}
    return res


def run_strategies(out, label, data_path, model="km-sr", strategies=("alternate", "joint", "pretrain"),
                   seeds=1, train_overrides=None, lock=None, on_progress=None, train: bool = True) -> dict:
    """Fig. 3: one run per knowledge-training strategy; writes ``OUT/strategies.json``."""
    res = run_variants(out, label, data_path, model, {s: {"strategy": s} for s in strategies}, seeds,
                       {"strategy": "alternate", **(train_overrides or {})}, lock, on_progress, train)
    doc = {"dataset": label, "model": model, "seeds": seeds, "strategies": res}
    write_json(Path(out) / "strategies.json", doc)
    return doc


def run_lambda_sweep(out, label, data_path, model="mkmsr", lambdas=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
                     seeds=1, train_overrides=None, lock=None, on_progress=None, extra: dict | None = None,
                     train: bool = True) -> dict:
    """Fig. 5: one run per lambda_1 (``kg_weight``); writes ``OUT/lambda.json``.

    ``extra``: training overrides for every point of the sweep (not for the table's runs), e.g.
    ``{"kg_optimizer": "shared"}``: with the default ``sparse`` optimiser the knowledge step has
    its own Adam, and Adam's update does not depend on the scale of the loss, so lambda_1 has
    almost no effect there.
    """
    default = TrainConfig().kg_weight
    res = run_variants(out, label, data_path, model,
                       {f"lambda1={l:g}": {"kg_weight": l, **(extra or {})} for l in lambdas},
                       seeds, {"kg_weight": default, **(train_overrides or {})}, lock, on_progress, train)
    doc = {"dataset": label, "model": model, "seeds": seeds, "lambdas": list(lambdas), "extra": extra or {},
           "runs": res}
    write_json(Path(out) / "lambda.json", doc)
    return doc


# ---------------------------------------------------------------------------------------------
# embedding map (Fig. 4)
# ---------------------------------------------------------------------------------------------

def tsne(X: np.ndarray, perplexity: float = 30.0, iters: int = 750, seed: int = 0) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) in torch: (n, d) -> (n, 2). O(n^2): meant for
    a few thousand points. Early exaggeration 12 for the first 250 iterations, momentum 0.5 -> 0.8."""
    g = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(X, dtype=torch.float64)
    n = X.shape[0]
    D = torch.cdist(X, X).pow(2)
    D.fill_diagonal_(0.0)
    # binary search of each row's precision for the wanted perplexity, all rows at once
    beta = torch.ones(n, dtype=torch.float64)
    lo = torch.full((n,), 0.0, dtype=torch.float64)
    hi = torch.full((n,), float("inf"), dtype=torch.float64)
    target = math.log(perplexity)
    eye = torch.eye(n, dtype=torch.bool)
    Ds = D - D.masked_fill(eye, float("inf")).min(1, keepdim=True).values   # shifted: stable exp
    Ds = Ds.masked_fill(eye, 0.0)
    for _ in range(60):
        P = torch.exp(-Ds * beta[:, None]).masked_fill(eye, 0.0)
        sP = P.sum(1, keepdim=True).clamp(min=1e-300)
        H = torch.log(sP.squeeze(1)) + beta * (Ds * P).sum(1) / sP.squeeze(1)   # entropy (nats)
        too_flat = H > target                                               # -> sharpen: raise beta
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
    P = P / sP
    P = (P + P.T) / (2 * n)
    P = P.clamp(min=1e-12)
    Y = torch.randn(n, 2, generator=g, dtype=torch.float64) * 1e-4
    vel = torch.zeros_like(Y)
    gains = torch.ones_like(Y)
    for it in range(iters):
        exag = 12.0 if it < 250 else 1.0
        mom = 0.5 if it < 250 else 0.8
        num = 1.0 / (1.0 + torch.cdist(Y, Y).pow(2))
        num.fill_diagonal_(0.0)
        Q = (num / num.sum()).clamp(min=1e-12)
        PQ = (exag * P - Q) * num
        grad = 4.0 * (PQ.sum(1, keepdim=True) * Y - PQ @ Y)
        gains = torch.where(torch.sign(grad) != torch.sign(vel), gains + 0.2, gains * 0.8).clamp(min=0.01)
        vel = mom * vel - 200.0 * gains * grad
        Y = Y + vel
        Y = Y - Y.mean(0)
    return Y.numpy()


def neighbour_purity(E: np.ndarray, labels: np.ndarray, k: int = 10, metric: str = "cosine") -> float:
    """Share of each point's k nearest neighbours (``cosine`` or ``euclidean``) with its label."""
    X = torch.as_tensor(E, dtype=torch.float32)
    if metric == "cosine":
        X = torch.nn.functional.normalize(X, dim=1)
        S = X @ X.T
    else:
        S = -torch.cdist(X, X)
    S.fill_diagonal_(-float("inf"))
    nn_idx = S.topk(k, dim=1).indices.numpy()
    return float((labels[nn_idx] == labels[:, None]).mean())


def separation_ratio(E: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance between category centroids / mean distance of a point to its own centroid."""
    cats = np.unique(labels)
    cent = np.stack([E[labels == c].mean(0) for c in cats])
    within = np.mean([np.linalg.norm(E[labels == c] - cent[i], axis=1).mean() for i, c in enumerate(cats)])
    dc = np.linalg.norm(cent[:, None] - cent[None], axis=-1)
    between = dc[np.triu_indices(len(cats), 1)].mean()
    return float(between / max(within, 1e-12))


def embedding_map(out: str | Path, data_path: str | Path, model_run: str | Path, relation: str | None = None,
                  n_categories: int = 6, per_category: int = 150, seed: int = 0, kg_epochs: int = 30,
                  lock: str | Path | None = None) -> dict:
    """Fig. 4: item embeddings of (a) skip-gram over the train item sequences, (b) TransH alone,
    (c) a trained MKM-SR run (``model_run``), for items of the ``n_categories`` most frequent
    categories (values of ``relation``) among items seen in training, projected by t-SNE.

    Writes ``OUT/embedding_map.json`` (2-D points and, in the original space, the
    same-category share of each item's 10 nearest neighbours and the between/within-category
    distance ratio) and returns it.
    """
    from ..checkpoint import load_checkpoint
    from ..models.word2vec import train_skipgram
    from .train import KnowledgeSampler, adam

    out = Path(out)
    data = PreparedData(data_path)
    rels = data.relations["relation"].to_list()
    if relation is None:
        relation = next((r for r in rels if "cat" in r.lower()), rels[0] if rels else None)
    if relation not in rels:
        raise ConfigError(f"relation {relation!r} not in the dataset's relations {rels}")
    r_idx = rels.index(relation)
    kg = data.kg
    rows = kg[kg[:, 1] == r_idx]
    counts = data.item_train_count
    warm = rows[counts[rows[:, 0]] >= 2]
    cats, freq = np.unique(warm[:, 2], return_counts=True)
    top = cats[np.argsort(-freq, kind="stable")[:n_categories]]
    rng = np.random.default_rng(seed)
    items, labels = [], []
    for c in top:  # a handful of categories
        its = np.unique(warm[warm[:, 2] == c, 0])
        pick = rng.choice(its, size=min(per_category, its.size), replace=False)
        items.append(pick)
        labels.append(np.full(pick.size, c))
    items, labels = np.concatenate(items), np.concatenate(labels)
    attrs = data.attributes
    names = dict(zip(attrs["entity_idx"].to_list(), attrs["value"].to_list()))

    with cpu_lock(lock):
        tr = data.split("train")
        w2v = train_skipgram(tr.items.astype(np.int64), tr.offsets, data.spec.n_items + 1, 100, window=5,
                             epochs=5, seed=seed).numpy()
        torch.manual_seed(seed)
        kgm = build_model("mkmsr", data.spec, {"kg_loss": "margin"})
        ks = KnowledgeSampler(data)
        opt = adam([p for n, p in kgm.named_parameters() if n.startswith(("item_embedding.", "attr_embedding.", "transh."))],
                   1e-3, 0.0)
        krng = np.random.default_rng(seed)
        for _ in range(kg_epochs):
            for _ in range(math.ceil(ks.n / 1024)):
                trip = ks.next_batch(1024, krng)
                neg = torch.from_numpy(ks.corrupt_tails(trip, krng))
                loss = kgm.kg_loss(torch.from_numpy(trip), corrupt_tails=neg)
                opt.zero_grad()
                loss.backward()
                opt.step()
        transh = kgm.item_embedding.weight.detach().numpy()
        trained, _ = load_checkpoint(model_run)
        mk = trained.item_embeddings().detach().numpy()
        panels = {}
        for key, E, title in (("word2vec", w2v, "skip-gram (co-occurrence)"), ("transh", transh, "TransH only"),
                              ("mkmsr", mk, "MKM-SR (multi-task)")):
            sub = E[items]
            Y = tsne(sub, seed=seed)
            panels[key] = {"title": title, "xy": Y.round(4).tolist(),
                           "neighbour_purity@10": round(neighbour_purity(sub, labels), 4),
                           "between_within_ratio": round(separation_ratio(sub, labels), 4)}
    doc = {"dataset": str(data_path), "relation": relation, "model_run": str(model_run),
           "items": items.tolist(), "labels": [names.get(int(c), str(c)) for c in labels],
           "chance_purity": round(float(np.mean([(labels == c).mean() for c in labels])), 4), "panels": panels}
    write_json(out / "embedding_map.json", doc)
    return doc


# ---------------------------------------------------------------------------------------------
# figures (optional extra: matplotlib)
# ---------------------------------------------------------------------------------------------

def make_figures(out: str | Path, fig_dir: str | Path | None = None) -> list[Path]:
    """Draw whatever experiment JSON files exist under ``out`` as PNGs in ``fig_dir``
    (default ``OUT/figures``). Needs matplotlib (``pip install mkmsr[plot]``); without it,
    logs a warning and draws nothing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'mkmsr[plot]'): no figures drawn")
        return []
    out = Path(out)
    fig_dir = Path(fig_dir) if fig_dir else out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    made = []
    if (out / "strategies.json").exists():
        doc = read_json(out / "strategies.json")
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name, r in doc["strategies"].items():
            curves = [c["valid_mrr@20"] for c in r["runs"] if c["valid_mrr@20"]]
            if not curves:
                continue
            L = max(len(c) for c in curves)
            mean = [statistics.fmean([c[e] for c in curves if len(c) > e]) for e in range(L)]
            ax.plot(range(1, L + 1), mean, marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation MRR@20 (%)")
        ax.set_title(f"{doc['model']} on {doc['dataset']}: knowledge-training strategies")
        ax.legend()
        fig.tight_layout()
        made.append(_save(fig, fig_dir / "fig3_strategies.png"))
        plt.close(fig)
    if (out / "lambda.json").exists():
        doc = read_json(out / "lambda.json")
        lams = doc["lambdas"]
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for key, lab in (("selected", "test MRR@20 (validation-selected)"), ("valid", "validation MRR@20")):
            ys, es = [], []
            for l in lams:
                vals = [r[key]["mrr@20"] for r in doc["runs"][f"lambda1={l:g}"]["runs"]]
                m, s = mean_std(vals)
                ys.append(m)
                es.append(s)
            ax.errorbar(lams, ys, yerr=es, marker="o", capsize=3, label=lab)
        ax.set_xscale("log")
        ax.set_xlabel("λ1")
        ax.set_ylabel("MRR@20 (%)")
        ax.set_title(f"{doc['model']} on {doc['dataset']}: λ1 sweep")
        ax.legend()
        fig.tight_layout()
        made.append(_save(fig, fig_dir / "fig5_lambda1.png"))
        plt.close(fig)
    if (out / "embedding_map.json").exists():
        doc = read_json(out / "embedding_map.json")
        labels = np.array(doc["labels"])
        cats = list(dict.fromkeys(labels.tolist()))
        fig, axes = plt.subplots(1, len(doc["panels"]), figsize=(4.2 * len(doc["panels"]), 4.2))
        for ax, (key, p) in zip(np.atleast_1d(axes), doc["panels"].items()):
            xy = np.array(p["xy"])
            for j, c in enumerate(cats):
                sel = labels == c
                ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=plt.cm.tab10(j % 10), label=f"{doc['relation']} {c}")
            ax.set_title(f"{p['title']}\n10-NN same-{doc['relation']} share {p['neighbour_purity@10']:.2f}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        np.atleast_1d(axes)[-1].legend(fontsize=7, markerscale=2, loc="best")
        fig.tight_layout()
        made.append(_save(fig, fig_dir / "fig4_embedding_map.png"))
        plt.close(fig)
    if (out / "results.json").exists():
        res = read_json(out / "results.json")
        labels_ds = list(res["datasets"])
        fig, axes = plt.subplots(1, len(labels_ds), figsize=(6.5 * len(labels_ds), 4.6), squeeze=False)
        for ax, label in zip(axes[0], labels_ds):
            rows = res["datasets"][label]["models"]
            names = list(rows)
            x = np.arange(len(names))
            for off, (metric, lab) in zip((-0.2, 0.2), (("hit@20", "Hit@20"), ("mrr@20", "MRR@20"))):
                m = [rows[n]["selected"][metric][0] for n in names]
                s = [rows[n]["selected"][metric][1] for n in names]
                ax.bar(x + off, m, 0.4, yerr=s, capsize=2, label=f"{lab} (validation-selected)")
            ax.set_xticks(x)
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
            ax.set_ylabel("%")
            ax.set_title(label)
            ax.legend(fontsize=8)
        fig.tight_layout()
        made.append(_save(fig, fig_dir / "table2.png"))
        plt.close(fig)
    return made


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    return path


def parse_datasets(items: Iterable[str]) -> dict[str, Path]:
    """``PATH`` or ``PATH=LABEL`` -> {label: path} (label defaults to the directory name)."""
    out: dict[str, Path] = {}
    for it in items:
        path, sep, label = it.partition("=")
        p = Path(path)
        if not (p / "manifest.json").exists():
            raise ConfigError(f"{p}: not a prepared dataset (no manifest.json); run `mkmsr prepare` first")
        out[label or p.name] = p
    return out
