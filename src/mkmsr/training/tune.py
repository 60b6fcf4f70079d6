"""Hyper-parameter search with Optuna: one model, one prepared dataset, chosen on validation.

A trial samples a point of the model's search space (:func:`search_space`), trains it with the
same :class:`~mkmsr.train.Trainer` as ``mkmsr train`` (early stopping on validation, test
never looked at) or, for a count-based model, fits its statistics, and scores it by the
validation metric (MRR@20 by default). TPE proposes the points (seeded); a median pruner stops
a neural trial whose per-epoch validation metric falls below the median of earlier trials at
the same epoch. The first trial of a new study is the model's default configuration.

Everything lives in ``OUT``::

    study.db          the Optuna study (SQLite): rerun the same command to resume it
    trials.json       every trial: state, value, parameters, per-epoch validation values
    best_config.toml  the best trial's configuration, read by ``mkmsr train --config``
    .tune.lock        held (flock) while a process works on the study

Budget: ``trials`` counts the finished (complete + pruned) trials of the study, earlier
invocations included; ``minutes`` is this invocation's time (no trial starts after it, and a
running one stops at its next epoch end, recorded as failed), read on the wall clock or, with
``clock="cpu"``, as this process's CPU time (every thread summed): a CPU budget buys the same
search on a busy machine as on an idle one, where a wall-clock budget buys less when other
processes share the cores (measured at stop 32: a first trial cut at 5 wall minutes by two
neighbours that finished alone). A process killed mid-trial
(even by SIGKILL) leaves its trial RUNNING in the database; the next invocation marks it failed
(it counts toward nothing) and goes on.

Optuna is an optional dependency (``pip install 'mkmsr[tune]'``), imported where it is used.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch

from ..data.dataset import PreparedData
from ..errors import ConfigError
from .evaluate import evaluate
from ..fsutil import atomic_write_text, write_json
from .metrics import KS
from ..models import MODELS, build_model, make_config
from .train import TrainConfig, Trainer, resolve_device

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# search spaces
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LogUniform:
    """A float drawn log-uniformly from [low, high]."""

    low: float
    high: float

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)

    def contains(self, v: Any) -> bool:
        return isinstance(v, (int, float)) and self.low <= v <= self.high

    def to_dict(self) -> dict:
        return {"log_uniform": [self.low, self.high]}


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high)

    def contains(self, v: Any) -> bool:
        return isinstance(v, (int, float)) and self.low <= v <= self.high

    def to_dict(self) -> dict:
        return {"uniform": [self.low, self.high]}


@dataclass(frozen=True)
class Choice:
    """One of a few values (str, int, float or bool)."""

    values: tuple

    def suggest(self, trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))

    def contains(self, v: Any) -> bool:
        return v in self.values

    def to_dict(self) -> dict:
        return {"choice": list(self.values)}


Dist = Union[LogUniform, Uniform, Choice]


@dataclass
class SearchSpace:
    """What a trial samples: options of the model's config dataclass (``model``) and of
    :class:`~mkmsr.train.TrainConfig` (``train``), each name -> distribution."""

    model: dict[str, Dist] = field(default_factory=dict)
    train: dict[str, Dist] = field(default_factory=dict)

    def size(self) -> int | None:
        """Number of distinct points when every dimension is a Choice (1 for an empty space),
        None when a dimension is continuous."""
        dims = [*self.model.values(), *self.train.values()]
        if any(not isinstance(d, Choice) for d in dims):
            return None
        return math.prod(len(d.values) for d in dims)

    def to_dict(self) -> dict:
        return {part: {k: d.to_dict() for k, d in getattr(self, part).items()} for part in ("model", "train")}

    def sample(self, trial) -> tuple[dict, dict]:
        """(model options, train options) suggested by an Optuna trial; parameter names are
        ``model.<option>`` and ``train.<option>``."""
        model = {k: d.suggest(trial, f"model.{k}") for k, d in self.model.items()}
        train = {k: d.suggest(trial, f"train.{k}") for k, d in self.train.items()}
        return model, train


#: embedding (and hidden) sizes a neural trial may take; the paper uses d = 100 everywhere
DIMS = (50, 100, 200)

#: every trainable model: Adam's learning rate (paper 1e-3) and lambda_2 (paper 1e-5), a decade
#: or more either side, log-uniform
NEURAL_TRAIN_SPACE: dict[str, Dist] = {
    "lr": LogUniform(1e-4, 1e-2),
    "weight_decay": LogUniform(1e-8, 1e-3),
}

#: models with a knowledge task: lambda_1 (paper 1e-4; its Fig. 5 sweeps 1e-5..1e-1), the
#: training strategy (paper §3.5: Eq. 15 / Eq. 16 / pretraining) and the optimiser of the
#: knowledge steps (with its own Adam, the step size does not depend on lambda_1 at all)
KNOWLEDGE_TRAIN_SPACE: dict[str, Dist] = {
    "kg_weight": LogUniform(1e-6, 1.0),
    "strategy": Choice(("alternate", "joint", "pretrain")),
    "kg_optimizer": Choice(("sparse", "shared")),
}

#: dropout probabilities (any model option whose name ends in ``dropout``)
DROPOUT = Uniform(0.0, 0.6)

#: per-model additions to the derived neural space
MODEL_EXTRA: dict[str, dict[str, Dist]] = {
    # the exponent of the popularity-based sampling of GRU4Rec's extra negatives (its own tuner's range)
    "gru4rec-bpr": {"sample_alpha": Uniform(0.0, 1.0)},
}

#: count-based models: at least the benchmark's grids (``TUNING_GRIDS``), widened to the
#: session-rec framework's search ranges
COUNT_SPACES: dict[str, dict[str, Dist]] = {
    "s-pop": {"mode": Choice(("recency", "count"))},
    "item-knn": {"lmbd": Choice((0.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)), "alpha": Uniform(0.0, 1.0)},
    "v-sknn": {"k": Choice((50, 100, 200, 500, 1000, 1500)),
               "sample_size": Choice((500, 1000, 2500, 5000, 10000, 0)),   # 0 = every candidate
               "weighting": Choice(("div", "quadratic", "linear", "log", "same")),
               "weighting_score": Choice(("div", "quadratic", "linear", "log", "same")),
               "idf_weighting": Choice((0.0, 1.0, 2.0, 5.0, 10.0))},
    "stan": {"k": Choice((50, 100, 200, 500, 1000, 1500, 2000)),
             "sample_size": Choice((1000, 2500, 5000, 10000, 0)),
             "lambda_spw": LogUniform(0.01, 10.0),
             "lambda_snh": LogUniform(1.0, 400.0),
             "lambda_inh": LogUniform(0.01, 20.0)},
}
# the reminder variants search their base model's options (the trainer picks the boost itself)
COUNT_SPACES["v-sknn-remind"] = COUNT_SPACES["v-sknn"]
COUNT_SPACES["stan-remind"] = COUNT_SPACES["stan"]


def search_space(model: str) -> SearchSpace:
    """The default search space of a registered model.

    Count-based models: ``COUNT_SPACES`` (empty for one without an entry, e.g. ``pop``).
    Trainable models: ``NEURAL_TRAIN_SPACE``; ``dim`` (and ``hidden``) from ``DIMS`` and every
    ``*dropout`` option from ``DROPOUT`` where the model's config has them; the knowledge
    options when the model has a knowledge task; then ``MODEL_EXTRA``. Options that the
    registry's variant fixes (e.g. SR-GNN's ``gnn_mode``) are never tuned: they define the model.
    """
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; valid models: {', '.join(MODELS)}")
    cls, variant = MODELS[model]
    options = {f.name for f in dataclasses.fields(cls.Config)}
    if not cls.trainable:
        space = SearchSpace(model=dict(COUNT_SPACES.get(model, {})))
    else:
        m: dict[str, Dist] = {}
        for name in ("dim", "hidden"):
            if name in options:
                m[name] = Choice(DIMS)
        m.update({name: DROPOUT for name in sorted(options) if name.endswith("dropout")})
        train = dict(NEURAL_TRAIN_SPACE)
        if getattr(make_config(model), "use_knowledge", False):
            train.update(KNOWLEDGE_TRAIN_SPACE)
        m.update(MODEL_EXTRA.get(model, {}))
        space = SearchSpace(model=m, train=train)
    space.model = {k: d for k, d in space.model.items() if k not in variant}
    return space


def check_space(model: str, space: SearchSpace) -> None:
    """Raise ConfigError when a key of ``space`` is not an option of the model's config or of
    TrainConfig."""
    cls = MODELS[model][0] if model in MODELS else None
    if cls is None:
        raise ConfigError(f"unknown model {model!r}; valid models: {', '.join(MODELS)}")
    options = {f.name for f in dataclasses.fields(cls.Config)}
    bad = sorted(set(space.model) - options)
    if bad:
        raise ConfigError(f"search space: model {model!r} has no option {bad[0]!r}; its options: "
                          f"{', '.join(sorted(options))}")
    train_options = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(space.train) - train_options)
    if bad:
        raise ConfigError(f"search space: no training option {bad[0]!r}; options: {', '.join(sorted(train_options))}")


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------

#: the median pruner: no pruning before this many trials have completed, nor in a trial's first
#: epochs (a randomly initialised model often dips before it learns: see TrainConfig.patience)
PRUNE_STARTUP_TRIALS = 5
PRUNE_WARMUP_EPOCHS = 2

#: training options that say where a trial runs, not what it computes (kept out of the
#: study's identity and of best_config.toml)
MACHINE_OPTIONS = ("threads", "device")


#: the budget's clocks: wall time, or this process's CPU time (all threads)
CLOCKS = {"wall": time.monotonic, "cpu": time.process_time}


class _OutOfTime(Exception):
    """The invocation's time budget ran out during a trial."""


@contextlib.contextmanager
def _study_lock(out: Path) -> Iterator[None]:
    """One process per study: a held flock means the study's RUNNING trials are alive; once
    taken, every RUNNING trial belongs to a process that has died."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".tune.lock"
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{out}: another `mkmsr tune` is working on this study (it holds {path}); "
                              "wait for it to finish or use another output folder") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=list))


def _finished(trials) -> list:
    from optuna.trial import TrialState

    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def _best(trials):
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _split_params(params: dict) -> tuple[dict, dict]:
    model = {k[len("model."):]: v for k, v in params.items() if k.startswith("model.")}
    train = {k[len("train."):]: v for k, v in params.items() if k.startswith("train.")}
    return model, train


def tune(data: PreparedData | str | Path, model: str, out_dir: str | Path, trials: int = 20,
         minutes: float | None = None, seed: int = 0, train_overrides: dict | None = None,
         space: SearchSpace | None = None, metric: str = "mrr@20", progress: bool = False,
         on_progress: Callable[[str], None] | None = None, model_overrides: dict | None = None,
         clock: str = "wall") -> dict:
    """Search ``model``'s hyper-parameters on ``data``'s validation split; write ``out_dir``.

    ``trials``: finished (complete + pruned) trials the study should hold, earlier invocations
    included. ``minutes``: time budget of this call (None = none), on ``clock``: ``"wall"``
    (default) or ``"cpu"`` (this process's CPU time, all threads summed: the same budget on a
    busy machine as on an idle one; CPU devices only). ``seed``: the TPE
    sampler's seed and every trial's training seed. ``train_overrides``: TrainConfig options
    fixed for every trial (e.g. ``epochs``, ``patience``, ``threads``). ``space``: the search
    space (default :func:`search_space`). ``metric``: the validation metric maximised and used
    to select epochs (``hit|mrr|ndcg@k``). ``on_progress``: receives one line per finished
    trial (default: the module logger). ``progress``: a progress bar over the trial budget.
    ``model_overrides``: model options fixed for every trial (e.g. the neighbourhood options
    MKM-SR-RN takes from a tuned STAN); written to ``best_config.toml`` with the searched ones.

    Returns a summary: ``best`` (trial number, value, model / train options) or None,
    counts of complete / pruned / failed trials, why it stopped (``trials``, ``minutes`` or
    ``space``: every point of a finite space evaluated) and the paths written.
    """
    import optuna
    from optuna.trial import TrialState

    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}")
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"minutes must be > 0, got {minutes}")
    if clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    kind, _, k = metric.partition("@")
    if kind not in ("hit", "mrr", "ndcg") or not k.isdigit() or int(k) not in KS:
        raise ConfigError(f"metric must be hit|mrr|ndcg@k with k in {KS}, got {metric!r}")
    space = space if space is not None else search_space(model)
    check_space(model, space)
    fixed = dict(train_overrides or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(fixed) - names)
    if bad:
        raise ConfigError(f"unknown training option {bad[0]!r}; options: {', '.join(sorted(names))}")
    clash = sorted(set(fixed) & set(space.train))
    if clash:
        raise ConfigError(f"training option {clash[0]!r} is both fixed and searched; drop one")
    fixed_model = dict(model_overrides or {})
    make_config(model, fixed_model)  # unknown options: a clear ConfigError
    clash = sorted(set(fixed_model) & set(space.model))
    if clash:
        raise ConfigError(f"model option {clash[0]!r} is both fixed and searched; drop one")
    TrainConfig(**{**fixed, "seed": seed, "select_metric": metric}).validate()
    if not isinstance(data, PreparedData):
        data = PreparedData(data)
    out = Path(out_dir)
    say = on_progress or log.info
    trainable = MODELS[model][0].trainable
    if clock == "cpu" and minutes is not None and resolve_device(fixed.get("device", "auto")).type != "cpu":
        raise ConfigError("a CPU-time budget (clock 'cpu') does not see the work a GPU does; "
                          "use the wall clock there")
    now = CLOCKS[clock]
    deadline = now() + minutes * 60.0 if minutes is not None else math.inf
    study_name = f"{model}@{data.content_hash[:16]}"
    settings = _jsonable({"model": model, "dataset_sha256": data.content_hash, "metric": metric, "seed": seed,
                          "train_overrides": {k: v for k, v in fixed.items() if k not in MACHINE_OPTIONS},
                          **({"model_overrides": fixed_model} if fixed_model else {}),
                          "space": space.to_dict()})
    t_start = time.perf_counter()

    with _study_lock(out):
        storage = f"sqlite:///{(out / 'study.db').resolve()}"
        others = [n for n in optuna.study.get_all_study_names(storage) if n != study_name]
        if others:
            raise ConfigError(f"{out} already holds the study {others[0]!r} (another model or dataset); "
                              "use another output folder")
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                    load_if_exists=True,
                                    # steps are 1-based epochs; the first prunable step is n_warmup_steps
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS,
                                                                       n_warmup_steps=PRUNE_WARMUP_EPOCHS + 1))
        saved = study.user_attrs.get("settings")
        if saved is None:
            study.set_user_attr("settings", settings)
            study.set_user_attr("dataset", str(data.path.resolve()))
        elif saved != settings:
            diff = sorted(k for k in settings if settings[k] != saved.get(k))
            raise ConfigError(f"{out}: the study there was run with other settings ({', '.join(diff)}: "
                              f"{saved.get(diff[0])!r} then, {settings[diff[0]]!r} now); use another output folder")
        if saved is None:
            _enqueue_defaults(study, model, space, fixed, fixed_model)
        # trials left RUNNING by a process that died (we hold the lock: nobody else is running one)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)
            say(f"trial {t.number}: left unfinished by an interrupted run; marked failed")
        # a sampler reseeded by the study's size: a resumed study does not repeat the first
        # invocation's random start-up points
        n0 = len(study.get_trials(deepcopy=False))
        study.sampler = optuna.samplers.TPESampler(seed=int(np.random.SeedSequence([seed, n0]).generate_state(1)[0]))
        _write_outputs(out, study, model, data, metric, fixed, seed, fixed_model)

        from tqdm.auto import tqdm

        n_done = len(_finished(study.get_trials(deepcopy=False)))
        bar = tqdm(total=trials, initial=min(n_done, trials), disable=not progress, unit="trial",
                   desc=f"tune {model}")
        size = space.size()
        stopped = "trials"
        try:
            while True:
                all_trials = study.get_trials(deepcopy=False)
                if len(_finished(all_trials)) >= trials:
                    stopped = "trials"
                    break
                if size is not None and len({json.dumps(t.params, sort_keys=True)
                                             for t in _finished(all_trials)}) >= size:
                    stopped = "space"
                    break
                if now() >= deadline:
                    stopped = "minutes"
                    break
                trial = study.ask()
                t0 = time.perf_counter()
                try:
                    model_opts, train_opts = space.sample(trial)
                    if trainable:
                        value = _neural_trial(trial, data, model, {**fixed_model, **model_opts}, train_opts, fixed,
                                              seed, metric, deadline, bar, now)
                    else:
                        value = _count_trial(trial, all_trials, data, model, {**fixed_model, **model_opts}, fixed,
                                             metric)
                except optuna.TrialPruned:
                    frozen = study.tell(trial, state=TrialState.PRUNED)
                except _OutOfTime:
                    trial.set_user_attr("stopped", "time budget ran out during the trial")
                    frozen = study.tell(trial, state=TrialState.FAIL)
                    stopped = "minutes"
                except BaseException as exc:  # recorded, then raised: a bug must not burn the budget
                    trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
                    study.tell(trial, state=TrialState.FAIL)
                    raise
                else:
                    frozen = study.tell(trial, value)  # NaN: Optuna records the trial as failed
                trial_seconds = time.perf_counter() - t0
                _write_outputs(out, study, model, data, metric, fixed, seed, fixed_model)
                best = _best(study.get_trials(deepcopy=False))
                say(_trial_line(frozen, metric, trial_seconds, best))
                if frozen.state in (TrialState.COMPLETE, TrialState.PRUNED):
                    bar.update(1)
                if stopped == "minutes":
                    break
        finally:
            bar.close()
            _write_outputs(out, study, model, data, metric, fixed, seed, fixed_model)

    all_trials = study.get_trials(deepcopy=False)
    best = _best(all_trials)
    counts = {name: sum(t.state == s for t in all_trials)
              for name, s in (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
                              ("failed", TrialState.FAIL))}
    summary = {"model": model, "study": study_name, "out": str(out), "metric": metric, "stopped": stopped,
               "clock": clock,
               "trials": counts, "seconds": round(time.perf_counter() - t_start, 2),
               "best": _trial_best(best) if best else None,
               "files": {"study": str(out / "study.db"), "trials": str(out / "trials.json"),
                         "best_config": str(out / "best_config.toml") if best else None}}
    return summary


def _enqueue_defaults(study, model: str, space: SearchSpace, fixed: dict, fixed_model: dict | None = None) -> None:
    """Trial 0 of a new study: the model's defaults (each that lies in the space; the others
    are sampled), so the search starts from the configuration it is meant to improve on."""
    model_cfg, train_cfg = make_config(model, fixed_model), TrainConfig(**fixed)
    point = {f"model.{k}": getattr(model_cfg, k) for k, d in space.model.items() if d.contains(getattr(model_cfg, k))}
    point.update({f"train.{k}": getattr(train_cfg, k) for k, d in space.train.items()
                  if d.contains(getattr(train_cfg, k))})
    if point:
        study.enqueue_trial(point, user_attrs={"start": "defaults"})


def _neural_trial(trial, data: PreparedData, model: str, model_opts: dict, train_opts: dict, fixed: dict,
                  seed: int, metric: str, deadline: float, bar, now: Callable[[], float] = time.monotonic) -> float:
    """Train one configuration; report each epoch's validation ``metric`` to the pruner."""
    import optuna

    cfg = TrainConfig(**{**fixed, **train_opts, "seed": seed, "select_metric": metric,
                         "eval_test_each_epoch": False})

    def on_epoch_end(epoch: int, valid: dict) -> None:
        trial.report(float(valid[metric]), epoch)
        bar.set_postfix_str(f"trial {trial.number} epoch {epoch}: {metric} {valid[metric]:.2f}")
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: {metric} {valid[metric]:.3f} below the median")
        if now() >= deadline:
            raise _OutOfTime()

    tr = Trainer(data, model, model_opts, cfg, out_dir=None, progress=False, on_epoch_end=on_epoch_end)
    trial.set_user_attr("model_config", _jsonable(dataclasses.asdict(tr.model_config)))
    trial.set_user_attr("train_config", _jsonable(dataclasses.asdict(cfg)))
    m = tr.fit()
    # the validation figures of the selected epoch's weights (after any validation-tuned
    # inference term such as repeat_boost); the test figures fit() also computed are not read
    trial.set_user_attr("best_epoch", m["best_epoch"])
    trial.set_user_attr("epochs_run", m["epochs_run"])
    trial.set_user_attr("valid", {k: v for k, v in m["valid"].items() if "@" in k})
    if m.get("tuned_on_validation"):
        trial.set_user_attr("tuned_on_validation", _jsonable(m["tuned_on_validation"]))
    return float(m["valid"][metric])


def _count_trial(trial, earlier, data: PreparedData, model: str, model_opts: dict, fixed: dict,
                 metric: str) -> float:
    """Fit a count-based model's statistics and score it on validation. Deterministic: a point
    evaluated before takes that trial's value."""
    from optuna.trial import TrialState

    for t in earlier:
        if t.state == TrialState.COMPLETE and t.params == trial.params:
            trial.set_user_attr("duplicate_of", t.number)
            for key in ("valid", "model_config"):
                if key in t.user_attrs:
                    trial.set_user_attr(key, t.user_attrs[key])
            return float(t.value)
    cfg = TrainConfig(**fixed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    m = build_model(model, data.spec, model_opts)
    trial.set_user_attr("model_config", _jsonable(dataclasses.asdict(m.config)))
    m.fit_statistics(data)
    m = m.to(device)
    v = evaluate(m, data, "valid", cfg.eval_batch_size, cfg.max_len, device)
    trial.set_user_attr("valid", {k: x for k, x in v.items() if "@" in k})
    return float(v[metric])


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _trial_line(t, metric: str, seconds: float, best) -> str:
    value = f"{metric} {t.value:.3f}" if t.value is not None else "no value"
    epochs = f", {len(t.intermediate_values)} epochs" if t.intermediate_values else ""
    params = " ".join(f"{k.split('.', 1)[1]}={_fmt(v)}" for k, v in t.params.items()) or "(no options)"
    state = "failed" if t.state.name == "FAIL" else t.state.name.lower()
    line = f"trial {t.number} {state}: {value} ({seconds:.0f}s{epochs}) {params}"
    if best is not None:
        line += f" | best {metric} {best.value:.3f} (trial {best.number})"
    return line


def _trial_best(t) -> dict:
    model, train = _split_params(t.params)
    return {"number": t.number, "value": t.value, "model_options": model, "train_options": train,
            "best_epoch": t.user_attrs.get("best_epoch"), "valid": t.user_attrs.get("valid")}


def _trial_record(t) -> dict:
    from optuna.trial import TrialState

    model, train = _split_params(t.params)
    rec = {"number": t.number, "state": {TrialState.FAIL: "failed"}.get(t.state, t.state.name.lower()),
           "value": t.value,
           "model_options": model, "train_options": train,
           "epochs": len(t.intermediate_values) or t.user_attrs.get("epochs_run"),
           "valid_by_epoch": {str(k): v for k, v in sorted(t.intermediate_values.items())},
           "started": t.datetime_start.isoformat() if t.datetime_start else None,
           "finished": t.datetime_complete.isoformat() if t.datetime_complete else None,
           **{k: v for k, v in t.user_attrs.items()}}
    if t.state == TrialState.FAIL and not ({"error", "stopped"} & set(t.user_attrs)):
        rec["note"] = ("interrupted: its process ended mid-trial" if t.value is None
                       else "failed: the objective was not a number")
    return rec


def _train_table(fixed: dict, train_opts: dict, seed: int, metric: str) -> dict:
    table = {k: v for k, v in fixed.items() if k not in MACHINE_OPTIONS and k != "eval_test_each_epoch"}
    return {**table, **train_opts, "seed": seed, "select_metric": metric}


def _write_outputs(out: Path, study, model: str, data: PreparedData, metric: str, fixed: dict, seed: int,
                   fixed_model: dict | None = None) -> None:
    """trials.json always; best_config.toml once a trial has completed (both atomically)."""
    trials = study.get_trials(deepcopy=False)
    best = _best(trials)
    doc = {"study": study.study_name, "storage": "study.db", "model": model, "dataset": str(data.path.resolve()),
           "dataset_sha256": data.content_hash, "metric": metric, "direction": "maximize",
           "settings": study.user_attrs.get("settings"),
           "best": _trial_best(best) if best else None,
           "trials": [_trial_record(t) for t in trials]}
    write_json(out / "trials.json", doc)
    if best is None:
        return
    model_opts, train_opts = _split_params(best.params)
    lines = [f"# written by `mkmsr tune`: the best of {len(_finished(trials))} finished trials of study "
             f"{study.study_name}",
             f"# trial {best.number}, validation {metric} = {best.value:.4f}; dataset sha256 {data.content_hash}",
             f"# use: mkmsr train --config {out / 'best_config.toml'} --data DIR --out RUN",
             f"model_name = {toml_value(model)}", "", "[train]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in _train_table(fixed, train_opts, seed, metric).items()
              if v is not None]
    lines += ["", "[model]"] + [f"{k} = {toml_value(v)}" for k, v in {**(fixed_model or {}), **model_opts}.items()
                                if v is not None]
    atomic_write_text(out / "best_config.toml", "\n".join(lines) + "\n")


def toml_value(v: Any) -> str:
    """A TOML literal for a str, bool, int, float or a list of them."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) to TOML")
