"""The ``mkmsr`` command line: each subcommand is a thin wrapper over a public function.

Configuration has three layers, resolved here and only here: the dataclass defaults, an
optional TOML file (``--config``, tables ``[train]`` and ``[model]``), then flags.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import ConfigError, MkmsrError
from .tables import METRIC_COLUMNS, format_table


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """'3600', '30m', '1h', '90s' -> seconds."""
    t = str(text).strip().lower()
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if t and t[-1] in mult:
        return float(t[:-1]) * mult[t[-1]]
    return float(t)


def _parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _kv_pairs(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep:
            raise ConfigError(f"{flag} expects key=value, got {it!r}")
        out[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return out


def show_progress(a: argparse.Namespace) -> bool:
    """Progress bars: ``--no-progress`` wins, then ``--progress``; otherwise only when stderr is a
    terminal (a log file gets the one INFO line per epoch instead of bar frames)."""
    if getattr(a, "no_progress", False):
        return False
    if getattr(a, "progress", False):
        return True
    return sys.stderr.isatty()


def _tensorboard_dir(a: argparse.Namespace) -> str | None:
    """``--tensorboard DIR``, checked before any training starts (the extra may be missing)."""
    if not getattr(a, "tensorboard", None):
        return None
    from .training.tensorboard_log import summary_writer_class

    summary_writer_class()  # raises ConfigError naming the extra when it is missing
    return a.tensorboard


# --------------------------------------------------------------------------------------------
# subcommands
# --------------------------------------------------------------------------------------------

def cmd_prepare(a: argparse.Namespace) -> int:
    from .data.prepare import PrepareConfig, prepare
    from .data.read import default_min_item_count, read_raw

    # the paper's item filter (>= 3) is the default of the raw public formats, 1 elsewhere
    default_min = default_min_item_count(a.format)  # an unknown --format fails here, first
    min_item_count = a.min_item_count if a.min_item_count is not None else default_min
    cfg = PrepareConfig(cold_start=a.cold_start, min_session_length=a.min_session_length,
                        min_item_count=min_item_count, valid_fraction=a.valid_fraction,
                        test_fraction=a.test_fraction, test_filter=a.test_filter,
                        exclude_latest=a.exclude_latest)
    cfg.validate()
    gap = parse_duration(a.session_gap) if a.session_gap is not None else None
    options = {k: True for k in ("drop_truncated_last_row", "keep_out_of_period") if getattr(a, k)}
    raw = read_raw(a.format, source=a.source, dataset=a.dataset, events=a.events, knowledge=a.knowledge,
                   valid_events=a.valid_events, test_events=a.test_events, item_col=a.item_col, op_col=a.op_col,
                   time_col=a.time_col, session_col=a.session_col, user_col=a.user_col, time_format=a.time_format,
                   kg_cols=(a.kg_item_col, a.kg_relation_col, a.kg_value_col),
                   relations=[r.strip() for r in a.relations.split(",")] if a.relations else None,
                   separator=a.separator, session_gap=gap, cold_start=a.cold_start, **options)
    out = prepare(raw, a.out, cfg, overwrite=a.overwrite)
    from .fsutil import read_json

    m = read_json(Path(out) / "manifest.json")
    rows = [{"split": s, **v} for s, v in m["splits"].items()]
    print(format_table(rows, [("split", "split"), ("sessions", "sessions"), ("events", "events"),
                              ("samples", "samples"), ("mean_session_length", "mean len"), ("items", "items"),
                              ("cold_target_samples", "cold targets"), ("repeat_target_share", "repeat share")]))
    c = m["counts"]
    print(f"\n{c['items']} items ({c['cold_items_in_catalogue']} cold), {c['operations']} operations, "
          f"{c['relations']} relations, {c['triplets']} triplets -> {out}  (sha256 {m['content_sha256'][:12]})")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .data.recbole_files import export_recbole

    out = export_recbole(a.data, a.out, a.dataset, splits=not a.no_splits, max_len=a.max_len,
                         overwrite=a.overwrite)
    from .fsutil import read_json

    m = read_json(out / "export.json")
    rows = [{"split": s, **v} for s, v in m["splits"].items()]
    print(format_table(rows, [("split", "split"), ("sessions", "sessions"), ("events", "events"),
                              ("samples", "samples")]))
    print(f"\n{m['items']} items, relations {m['relations'] or 'none'} -> {out}/{m['dataset']}.* "
          f"({', '.join(m['files'])})")
    return 0


def _train_config(a: argparse.Namespace, toml_train: dict) -> "TrainConfig":
    from .training.train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(toml_train) - names)
    if bad:
        raise ConfigError(f"unknown [train] option {bad[0]!r} in --config; options: {', '.join(sorted(names))}")
    merged = dict(toml_train)
    for name in names:
        v = getattr(a, name, None)
        if v is not None:
            merged[name] = v
    if getattr(a, "no_progress", False):
        pass
    cfg = TrainConfig(**merged)
    cfg.validate()
    return cfg


def _load_toml(path: str | None) -> dict:
    if not path:
        return {}
    with open(path, "rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def cmd_train(a: argparse.Namespace) -> int:
    from .training.train import train

    toml = _load_toml(a.config)
    cfg = _train_config(a, toml.get("train", {}))
    model_over = {**toml.get("model", {}), **_kv_pairs(a.model_opt, "--model-opt")}
    model = a.model or toml.get("model_name", "mkmsr")
    # launched by torchrun with several processes: one DDP rank (see mkmsr.distributed)
    import os

    from .training.distributed import from_env, shutdown
    dist = from_env(os.environ, cfg.device)
    try:
        m = train(a.data, model, a.out, cfg, model_over, resume=a.resume, overwrite=a.overwrite,
                  progress=show_progress(a), dist=dist,
                  tensorboard_dir=_tensorboard_dir(a) if dist is None or dist.is_main else None)
        if dist is not None:
            # every rank done with its collectives (rank 0 writes the run's files last) before any
            # tears the group down: a gloo peer that exits first can abort the other in its
            # destructor ("terminate called without an active exception", seen once in CI)
            dist.barrier()
    finally:
        shutdown()
    if dist is not None and not dist.is_main:
        return 0
    rows = [{"what": "valid (selected epoch)", **m["valid"]}, {"what": "test (selected epoch)", **m["test"]},
            {"what": "test best-over-epochs*", **{k: v for k, v in m["test_best_over_epochs"].items() if "@" in k}}]
    print(format_table(rows, [("what", "")] + METRIC_COLUMNS[:-1]))
    print(f"\nbest epoch {m['best_epoch']} of {m['epochs_run']}; cold-target test samples: {m['test']['cold_samples']}"
          f" (Hit@20 {m['test']['cold_hit@20']:.2f}); {m['train_samples_per_s']} train samples/s")
    print("* optimistic: best test value per metric over epochs (paper-style), not for model selection")
    print(f"metrics: {Path(a.out) / 'metrics.json'}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .training.evaluate_run import evaluate_checkpoint

    report, out = evaluate_checkpoint(a.run, a.data, a.split, a.batch_size, a.device, a.threads, a.json,
                                      overrides=_kv_pairs(a.model_opt, "--model-opt"))
    res = report["results"]
    rows = [{"what": s, **r} for s, r in res.items()] + \
           [{"what": f"{s} (cold targets)", **{k[5:]: v for k, v in r.items() if k.startswith("cold_")}}
            for s, r in res.items()]
    print(format_table(rows, [("what", "")] + METRIC_COLUMNS))
    print(f"\nwritten {out}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from .fsutil import write_json
    from .training.compare import compare_runs, compare_table

    metrics = [m.strip() for m in a.metrics.split(",") if m.strip()]
    res = compare_runs(a.a, a.b, metrics, n_boot=a.boot)
    print(compare_table(res))
    if a.json:
        write_json(Path(a.json), res)  # (written to a temporary file, renamed when complete)
        print(f"\nwritten {a.json}")
    return 0


def cmd_recommend(a: argparse.Namespace) -> int:
    from .fsutil import atomic_write_lines
    from .serving.recommend import Recommender, SessionRequest, parse_session, read_sessions, recommend_requests

    if bool(a.session) == bool(a.input):
        raise ConfigError("give either --session item:op,item:op,... or --input FILE (jsonl, csv or text)")
    if a.k < 1 or a.batch_size < 1:
        raise ConfigError("-k and --batch-size must be >= 1")
    from .serving.ann import IndexConfig

    device = ("cuda" if _torch_cuda() else "cpu") if a.device == "auto" else a.device
    rec = Recommender.load(a.run, device, index=IndexConfig(kind=a.index, threshold=a.index_threshold,
                                                            ef_search=a.index_ef, **_index_cache(a)),
                          overrides=_kv_pairs(a.model_opt, "--model-opt"))
    if a.session:
        try:
            requests = [SessionRequest("1", parse_session(a.session))]
        except ValueError as exc:
            raise ConfigError(f"--session: {exc}") from None
    else:
        requests = read_sessions(a.input, a.input_format, a.session_col, a.item_col, a.op_col or None, a.separator)
    lines = (json.dumps(r) + "\n" for r in recommend_requests(rec, requests, a.k, a.exclude_seen, a.batch_size))
    if not a.output:
        for line in lines:
            sys.stdout.write(line)
        return 0
    out = Path(a.output)
    n = atomic_write_lines(out, lines)  # written to a temporary file, renamed when complete
    print(f"{n} sessions -> {out}", file=sys.stderr)
    return 0


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _inference_opt_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model-opt", action="append", metavar="KEY=VALUE",
                   help="change an inference-time option of the model at load, e.g. hurdle_shift=40 (MKM-SR-RN: "
                        "every session item above every new item, S-POP's placement); only options that leave "
                        "the trained weights as they are (repeatable)")


def _serving_flags(s: argparse.ArgumentParser, d) -> None:
    """--device and the nearest-neighbour index flags, shared by serve and recommend."""
    from .serving.ann import KINDS

    s.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N | auto (cuda when available)")
    s.add_argument("--index", choices=list(KINDS), default=d.index,
                   help="how a session is ranked over the whole catalogue: 'auto' (default: an hnsw index on the "
                        f"CPU from --index-threshold items up, else the exact scan), 'exact', 'hnsw' (hnswlib), "
                        "'faiss-hnsw', 'flat' (faiss, exact); retrieved items are rescored exactly. Needs the 'ann' "
                        "extra for anything but exact")
    s.add_argument("--index-threshold", type=int, default=d.index_threshold,
                   help=f"--index auto: build the index from this many catalogue items up (default {d.index_threshold})")
    s.add_argument("--index-ef", type=int, default=d.index_ef,
                   help=f"HNSW search list: higher = better recall, slower (default {d.index_ef})")
    cache = s.add_mutually_exclusive_group()
    cache.add_argument("--index-cache", metavar="DIR",
                       help="save a built index in DIR and read it back at the next load with the same item vectors "
                            "and index parameters (default: CHECKPOINT/index-cache; when that cannot be written, "
                            "the index is built in memory at every load)")
    cache.add_argument("--no-index-cache", action="store_true",
                       help="build the index at every load and save nothing")


def _index_cache(a: argparse.Namespace) -> dict:
    """The IndexConfig cache fields from --index-cache / --no-index-cache."""
    return {"cache": not a.no_index_cache, "cache_dir": a.index_cache}


def _serve_config(a: argparse.Namespace):
    """The ServeConfig of the serve flags."""
    from .serving.serve import ServeConfig

    cache = _index_cache(a)
    return ServeConfig(max_k=a.max_k, max_events=a.max_events, max_batch=a.max_batch, max_filter=a.max_filter,
                       max_body_bytes=a.max_body_bytes, max_inference_batch=a.max_inference_batch,
                       batch_window_ms=a.batch_window_ms, max_queue=a.max_queue, threads=a.threads,
                       admin_token=a.admin_token, scan=a.scan, index=a.index, index_threshold=a.index_threshold,
                       index_ef=a.index_ef, index_cache=cache["cache"], index_cache_dir=cache["cache_dir"],
                       model_options=_kv_pairs(a.model_opt, "--model-opt"))


def cmd_serve(a: argparse.Namespace) -> int:
    from .serving.serve import serve

    cfg = _serve_config(a)
    if a.access_log == "json":  # one bare JSON object per line on stdout, whatever -q/-v say
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access = logging.getLogger("mkmsr.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    serve(a.model, a.host, a.port, cfg, access_log=a.access_log or False,
          log_level="warning" if a.quiet else "debug" if a.verbose > 1 else "info", device=a.device)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=a.out, models=a.models.split(","), epochs=a.epochs, seed=a.seed, progress=show_progress(a),
             threads=a.threads)
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    from .data.synthetic import SyntheticConfig, write_synthetic

    cfg = SyntheticConfig(n_sessions=a.sessions, n_items=a.items, n_cold_items=a.cold_items, seed=a.seed)
    out = write_synthetic(a.out, cfg)
    print(f"wrote {out}/events.csv and {out}/knowledge.csv")
    return 0


def cmd_benchmark(a: argparse.Namespace) -> int:
    from .training.benchmark import (embedding_map, make_figures, parse_datasets, run_benchmark, run_lambda_sweep,
                            run_strategies)
    from .models import model_names

    datasets = parse_datasets(a.data)
    models = [m.strip() for m in a.models.split(",") if m.strip()] if a.models is not None else model_names()
    train_over = {k: v for k, v in (("epochs", a.epochs), ("patience", a.patience), ("threads", a.threads),
                                    ("max_len", a.max_len)) if v is not None}
    say = (lambda msg: print(msg, flush=True)) if not a.no_progress else None
    out = Path(a.out)
    if models:
        optuna = ({"trials": a.tune_trials, "minutes": a.tune_minutes,
                   **({"clock": a.tune_clock} if a.tune_clock != "wall" else {})} if a.tune_trials else None)
        if a.tune_minutes is not None and not a.tune_trials:
            raise ConfigError("--tune-minutes needs --tune-trials (the same Optuna budget for every model)")
        if a.tune_clock != "wall" and a.tune_minutes is None:
            raise ConfigError("--tune-clock needs --tune-minutes (the budget it measures)")
        res = run_benchmark(out, datasets, models, a.seeds, train_over, tune=not a.no_tune, lock=a.lock,
                            progress=a.progress, on_progress=say, tensorboard_dir=_tensorboard_dir(a),
                            optuna=optuna)
        print((out / "results.md").read_text())
        if not res["datasets"]:
            return 1
    curve_label = a.curve_data or list(datasets)[-1]
    if curve_label not in datasets:
        raise ConfigError(f"--curve-data {curve_label!r} is not one of the --data labels {list(datasets)}")
    if a.strategies:
        run_strategies(out, curve_label, datasets[curve_label], a.strategy_model, a.strategies.split(","),
                       a.curve_seeds, train_over, a.lock, say)
    if a.lambdas:
        run_lambda_sweep(out, curve_label, datasets[curve_label], a.lambda_model,
                         [float(x) for x in a.lambdas.split(",")], a.curve_seeds, train_over, a.lock, say)
    if a.embedding_map:
        from .training.benchmark import RunSpec
        run = RunSpec(curve_label, datasets[curve_label], "mkmsr", 0).run_dir(out)
        if not (run / "best" / "model.json").exists():
            raise ConfigError(f"--embedding-map needs the mkmsr seed-0 run on {curve_label} ({run}): "
                              "include mkmsr in --models")
        embedding_map(out, datasets[curve_label], run, a.map_relation, lock=a.lock)
    if not a.no_figures:
        for f in make_figures(out, a.figures):
            print(f"figure: {f}")
    print(f"results: {out / 'results.json'}")
    return 0


def cmd_tune(a: argparse.Namespace) -> int:
    try:
        import optuna
    except ImportError:
        raise ConfigError("mkmsr tune needs Optuna: pip install 'mkmsr[tune]'") from None
    from tqdm.auto import tqdm

    from .training.tune import tune

    def say(line: str) -> None:  # above the progress bar, when there is one
        tqdm.write(line)
        sys.stdout.flush()

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    if not a.verbose:  # the trials' per-epoch lines only with -v
        logging.getLogger("mkmsr.training.train").setLevel(logging.WARNING)
    train_over = {k: v for k, v in (("epochs", a.epochs), ("patience", a.patience), ("threads", a.threads),
                                    ("max_len", a.max_len), ("batch_size", a.batch_size), ("device", a.device))
                  if v is not None}
    if a.clock != "wall" and a.minutes is None:
        raise ConfigError("--clock needs --minutes (the budget it measures)")
    res = tune(a.data, a.model, a.out, trials=a.trials, minutes=a.minutes, seed=a.seed, train_overrides=train_over,
               metric=a.metric, progress=not a.no_progress and sys.stderr.isatty(),
               on_progress=say, clock=a.clock)
    c = res["trials"]
    print(f"\n{c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed trials in {a.out} "
          f"(stopped by the {('CPU-time' if a.clock == 'cpu' else 'time') if res['stopped'] == 'minutes' else res['stopped']} budget"
          f"{'' if res['stopped'] != 'space' else ': every point of the space was tried'})")
    best = res["best"]
    if best is None:
        print("no trial completed: no best configuration yet")
        return 1
    opts = {**best["model_options"], **best["train_options"]}
    print(f"best: trial {best['number']}, validation {res['metric']} {best['value']:.3f}; "
          + (" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in opts.items()) or "defaults"))
    print(f"best configuration: {res['files']['best_config']}  (mkmsr train --config it --data DIR --out RUN)")
    print(f"trials: {res['files']['trials']}")
    return 0


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------

def _add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: paper §4.1.4; see mkmsr.training.train.TrainConfig)")
    g.add_argument("--epochs", type=int, help="maximum epochs (default 30)")
    g.add_argument("--batch-size", dest="batch_size", type=int, help="samples per SR step (default 128)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    g.add_argument("--weight-decay", "--lambda2", dest="weight_decay", type=float, help="lambda_2, L2 penalty (default 1e-5)")
    g.add_argument("--kg-weight", "--lambda1", dest="kg_weight", type=float, help="lambda_1, weight of L_K (default 1e-4)")
    g.add_argument("--strategy", choices=["alternate", "joint", "pretrain"], help="knowledge-task strategy (default alternate)")
    g.add_argument("--alternate-every", dest="alternate_every", type=int, help="SR steps between KG steps (default 1)")
    g.add_argument("--kg-batch-size", dest="kg_batch_size", type=int, help="triplets per KG step (default: one pass per epoch)")
    g.add_argument("--kg-optimizer", dest="kg_optimizer", choices=["sparse", "shared", "separate"],
                   help="optimiser of KG steps: shared = the SR Adam, so lambda_1 weighs the knowledge task (default); sparse = own row-wise Adam (lambda_1 then inert: Adam is scale-invariant); separate = own dense Adam")
    g.add_argument("--pretrain-epochs", dest="pretrain_epochs", type=int, help="TransH passes for --strategy pretrain")
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 5)")
    g.add_argument("--select-metric", dest="select_metric", help="validation metric selecting the epoch (default mrr@20)")
    g.add_argument("--max-len", dest="max_len", type=int, help="keep only the latest N micro-behaviours of a prefix")
    g.add_argument("--eval-batch-size", dest="eval_batch_size", type=int)
    g.add_argument("--lr-decay-step", dest="lr_decay_step", type=int, help="decay lr every N epochs (0 = never)")
    g.add_argument("--lr-decay", dest="lr_decay", type=float)
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    g = p.add_argument_group("large catalogues (opt-in; evaluation always ranks the full catalogue in float32)")
    g.add_argument("--precision", choices=["float32", "bf16"],
                   help="bf16: bfloat16 scoring GEMMs with float32 weights and log-softmax; needs a CUDA GPU or a "
                        "CPU with AMX / AVX-512 BF16 (default float32)")
    g.add_argument("--loss", choices=["full", "sampled"],
                   help="full: softmax over the whole catalogue (the paper's, default); sampled: in-batch + "
                        "--negatives drawn items, each logit corrected by log of its sampling probability")
    g.add_argument("--negatives", type=int, help="--loss sampled: items drawn per batch besides the in-batch "
                                                  "targets (default 2048; 0 = in-batch only)")
    g.add_argument("--sampler", choices=["uniform", "popularity"],
                   help="--loss sampled: draw negatives uniformly (default) or by frequency as a training target")
    g.add_argument("--optimizer", choices=["adam", "lazy-adam"],
                   help="adam: dense Adam over every parameter (the paper's, default); lazy-adam (--loss sampled, "
                        "mkmsr with item_repr=id, scoring=dot): row-sparse item-table gradients, and moments and L2 "
                        "of the rows a step touches only -- the step no longer scales with the catalogue")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mkmsr", description="MKM-SR session-based recommendation: prepare data, "
                                "train, evaluate, recommend.")
    p.add_argument("--version", action="version", version=f"mkmsr {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("prepare", help="raw logs + item knowledge -> a prepared dataset directory")
    s.add_argument("--format", required=True,
                   help="jdata-demo | csv | parquet | recbole (atomic files DIR/NAME.inter + NAME.item: --source, "
                        "--dataset) | raw public datasets: jdata2018 (= jdata2019), jdata2017, kkbox, taobao "
                        "(read from --source DIR in their published layout; see mkmsr.data.raw_formats)")
    s.add_argument("--source", help="directory of a dataset in a fixed layout (jdata-demo, recbole, raw formats)")
    s.add_argument("--dataset", help="recbole: the dataset name NAME of DIR/NAME.inter and DIR/NAME.item")
    s.add_argument("--events", help="events file (csv/parquet): one micro-behaviour per row")
    s.add_argument("--knowledge", help="knowledge file: item, relation, value per row")
    s.add_argument("--valid-events", help="validation events (default: latest --valid-fraction of training sessions)")
    s.add_argument("--test-events", help="test events (default: latest --test-fraction of sessions)")
    s.add_argument("--item-col", default="item_id", help="events column (recbole: field) with the item id "
                   "(default item_id)")
    s.add_argument("--op-col", "--op-field", dest="op_col",
                   help="events column (recbole: field) with the operation (default operation; '' = none; "
                        "recbole: used when the field is present, required when named)")
    s.add_argument("--time-col", default="timestamp", help="events column (recbole: field) with the time "
                   "('' = row order)")
    s.add_argument("--session-col", help="events column (recbole: field) with the session key (recbole default: "
                   "session_id when present, else user_id)")
    s.add_argument("--user-col", help="events column (recbole: field) with the user id (sessions cut by "
                   "--session-gap)")
    s.add_argument("--time-format", help="strftime format of the time column (default: seconds or auto)")
    s.add_argument("--session-gap", help="inactivity that starts a new session (default 1h; jdata2017 and taobao "
                   "30m; kkbox counts rows: 2000)")
    s.add_argument("--drop-truncated-last-row", action="store_true",
                   help="taobao: drop a malformed last row (a download cut mid-row) with a warning instead of "
                        "stopping; a malformed row elsewhere is always an error")
    s.add_argument("--keep-out-of-period", action="store_true",
                   help="taobao: keep rows timed outside the official period 2017-11-25 .. 2017-12-03 (UTC+8); "
                        "by default they are dropped and counted")
    s.add_argument("--kg-item-col", default="item_id")
    s.add_argument("--kg-relation-col", default="relation")
    s.add_argument("--kg-value-col", default="value")
    s.add_argument("--relations", help="comma-separated allowed relations (others are an error; recbole: the "
                   "NAME.item fields to use, default every token / token_seq field)")
    s.add_argument("--separator", default=",", help="CSV field separator (default ,)")
    s.add_argument("--cold-start", choices=["drop", "keep"], default="drop",
                   help="test items unseen in training: drop them, or keep those with knowledge (default drop)")
    s.add_argument("--test-filter", choices=["fit", "period"], default="fit",
                   help="with --cold-start drop, test items must occur in the train split models fit "
                        "(fit, default: the same rule as validation) or anywhere in train + valid (period)")
    s.add_argument("--min-session-length", type=int, default=2)
    s.add_argument("--min-item-count", type=int,
                   help="items seen fewer times in the training period are removed (default 1; raw formats 3)")
    s.add_argument("--valid-fraction", type=float, default=0.1)
    s.add_argument("--test-fraction", type=float, default=0.1)
    s.add_argument("--exclude-latest", type=float, default=0.0,
                   help="rolling-origin evaluation: leave out the latest share of sessions before the split, "
                        "so the test block moves back (k * --test-fraction: k blocks back, disjoint from the "
                        "others; default 0)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("export", help="a prepared dataset -> RecBole atomic files (NAME.inter, NAME.item, "
                       "NAME.{train,valid,test}.inter)")
    s.add_argument("--format", required=True, choices=["recbole"], help="recbole: RecBole 1.2.1 atomic files")
    s.add_argument("--data", required=True, help="prepared dataset directory")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--dataset", help="dataset name NAME of the files (default: the --out directory's name)")
    s.add_argument("--no-splits", action="store_true", help="skip the per-split prefix -> next-item sample files")
    s.add_argument("--max-len", dest="max_len", type=int, help="per-split files: keep only the latest N items "
                   "of each prefix")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("train", help="train a model on a prepared dataset, select the epoch on validation")
    s.add_argument("--data", required=True, help="prepared dataset directory")
    s.add_argument("--model", help="model name (default mkmsr); see `mkmsr models`")
    s.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl, metrics.json)")
    s.add_argument("--config", help="TOML file with [train] and [model] tables")
    s.add_argument("--model-opt", action="append", metavar="KEY=VALUE", help="model option, e.g. gnn_mode=concat")
    s.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    s.add_argument("--overwrite", action="store_true", help="start again even if --out holds a run")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--progress", action="store_true",
                   help="progress bars even when stderr is not a terminal (default: only on a terminal)")
    s.add_argument("--tensorboard", metavar="DIR", help="write per-epoch losses, learning rate, item-embedding "
                   "norm and validation / test metrics as TensorBoard event files to DIR (the 'tensorboard' extra)")
    _add_train_flags(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="evaluate a checkpoint on a prepared dataset (full ranking)")
    s.add_argument("--run", required=True, help="run directory or checkpoint directory")
    s.add_argument("--data", required=True, help="prepared dataset directory")
    s.add_argument("--split", nargs="+", default=["test"], choices=["train", "valid", "test"])
    s.add_argument("--batch-size", type=int, default=512)
    _inference_opt_flag(s)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--json", help="write results here (default RUN/evaluation.json; with --model-opt "
                   "RUN/evaluation-KEY=VALUE….json)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("compare", help="paired comparison of two groups of finished runs on the same test "
                       "samples (difference, standard error over samples and seeds, verdict)")
    s.add_argument("--a", nargs="+", required=True, metavar="RUN", help="run directories of side A (e.g. its seeds)")
    s.add_argument("--b", nargs="+", required=True, metavar="RUN", help="run directories of side B")
    s.add_argument("--metrics", default="hit@20,mrr@20", help="hit@k / mrr@k, comma-separated (default hit@20,mrr@20)")
    s.add_argument("--boot", type=int, default=2000, help="bootstrap draws (default 2000)")
    s.add_argument("--json", help="also write the comparison here")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("recommend", help="top-k next items for a session, or a file of sessions (JSONL out)")
    s.add_argument("--run", "--model", dest="run", required=True, help="run directory or checkpoint directory")
    s.add_argument("--session", help="one session, e.g. 123:click,456:cart (item id, colon, operation)")
    s.add_argument("--input", help="file of sessions: .jsonl (one session object per line), .csv (one event "
                   "per row: session, item, operation) or text (one --session string per line); see the README")
    s.add_argument("--input-format", choices=["jsonl", "csv", "text"], help="override the format read from the extension")
    s.add_argument("--output", help="write the JSONL results here (default: stdout)")
    s.add_argument("-k", type=int, default=20, help="items per session (default 20; a JSONL line's k wins)")
    s.add_argument("--exclude-seen", action="store_true", help="never recommend an item already in the session")
    s.add_argument("--batch-size", type=int, default=256, help="sessions scored together (default 256)")
    s.add_argument("--session-col", default="session_id", help="CSV input: session column (default session_id)")
    s.add_argument("--item-col", default="item_id", help="CSV input: item column (default item_id)")
    s.add_argument("--op-col", default="operation", help="CSV input: operation column ('' = none; default operation)")
    s.add_argument("--separator", default=",", help="CSV input: field separator (default ,)")
    from .serving.serve import ServeConfig as _SC  # light: the server's own imports happen in serve()
    d = _SC()
    _serving_flags(s, d)
    _inference_opt_flag(s)
    s.set_defaults(func=cmd_recommend)

    s = sub.add_parser("serve", help="serve recommendations over HTTP (needs the 'serve' extra)")
    s.add_argument("--model", required=True, help="checkpoint or run directory to serve")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--max-k", type=int, default=d.max_k, help=f"largest k a request may ask for (default {d.max_k})")
    s.add_argument("--max-events", type=int, default=d.max_events, help=f"events per session (default {d.max_events})")
    s.add_argument("--max-batch", type=int, default=d.max_batch, help=f"sessions per /recommend/batch (default {d.max_batch})")
    s.add_argument("--max-filter", type=int, default=d.max_filter,
                   help=f"ids in one exclude or candidates list (default {d.max_filter})")
    s.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help=f"request body size (default {d.max_body_bytes})")
    s.add_argument("--max-inference-batch", type=int, default=d.max_inference_batch,
                   help=f"sessions scored together in one pass (default {d.max_inference_batch})")
    s.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms,
                   help="wait up to this long for more requests to score together (default 0: take what is queued)")
    s.add_argument("--max-queue", type=int, default=d.max_queue, help=f"queued requests before 503 (default {d.max_queue})")
    s.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads for scoring (default: all cores but one, which the event loop keeps)")
    s.add_argument("--admin-token", help="require this X-Admin-Token header on /admin/reload")
    s.add_argument("--scan", choices=["bfloat16", "float32"],
                   help="how one session is ranked over the catalogue: one float32 product (default) or a bfloat16 "
                        "scan + exact float32 rescoring (same ranking, lower median, higher p99)")
    _serving_flags(s, d)
    _inference_opt_flag(s)
    s.add_argument("--access-log", nargs="?", const="text", choices=["text", "json"],
                   help="log every request (off by default: it costs throughput): 'text' (the default when the flag "
                        "has no value) is uvicorn's line; 'json' writes one JSON object per request to stdout "
                        "(time, method, path, endpoint, status, duration_ms, client, request_bytes, response_bytes, "
                        "n_items or error) and turns uvicorn's off")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("demo", help="synthetic data -> prepare -> train MKM-SR and variants -> results table")
    s.add_argument("--out", help="working directory (default: a temporary one)")
    s.add_argument("--models", default="mkmsr,mkmsr+,m-sr,km-sr")
    s.add_argument("--epochs", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--progress", action="store_true",
                   help="progress bars even when stderr is not a terminal (default: only on a terminal)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("synth", help="write a synthetic events.csv + knowledge.csv")
    s.add_argument("--out", required=True)
    s.add_argument("--sessions", type=int, default=4000)
    s.add_argument("--items", type=int, default=1500)
    s.add_argument("--cold-items", type=int, default=150)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("benchmark", help="models x prepared datasets x seeds -> results table (+ the paper's "
                       "strategy / lambda_1 / embedding-map experiments and figures)")
    s.add_argument("--data", nargs="+", required=True, metavar="DIR[=LABEL]", help="prepared dataset directories")
    s.add_argument("--models", help="comma-separated models (default: every registered one; '' = none)")
    s.add_argument("--seeds", type=int, default=5, help="seeds per trainable model (count-based models run once)")
    s.add_argument("--out", required=True, help="benchmark directory (runs, tuning, results, figures); "
                   "finished runs in it are not redone")
    s.add_argument("--epochs", type=int, help="maximum epochs per run (default 30)")
    s.add_argument("--patience", type=int, help="early-stopping patience (default 5)")
    s.add_argument("--max-len", dest="max_len", type=int, help="keep only the latest N micro-behaviours")
    s.add_argument("--threads", type=int, help="torch CPU threads per run")
    s.add_argument("--no-tune", action="store_true", help="count-based models keep their defaults "
                   "(default: a small grid chosen on validation MRR@20)")
    s.add_argument("--tune-trials", type=int, metavar="N", help="search every model, neural and count-based, "
                   "with `mkmsr tune` (Optuna, validation only) for N trials each, then train the seeds with the "
                   "best configuration (the 'tune' extra; default: count-based grids, neural models at their "
                   "papers' settings)")
    s.add_argument("--tune-minutes", type=float, metavar="M", help="and at most M minutes of search per model")
    s.add_argument("--tune-clock", choices=("wall", "cpu"), default="wall",
                   help="what --tune-minutes measures: wall time (default) or the search's CPU time, "
                   "the same budget however busy the machine is")
    s.add_argument("--strategies", help="e.g. alternate,joint,pretrain: Fig. 3 learning curves")
    s.add_argument("--strategy-model", default="km-sr")
    s.add_argument("--lambdas", help="e.g. 1e-5,1e-4,1e-3,1e-2,1e-1: Fig. 5 lambda_1 sweep")
    s.add_argument("--lambda-model", default="mkmsr")
    s.add_argument("--curve-data", help="label of the dataset for strategies / lambdas / map (default: the last)")
    s.add_argument("--curve-seeds", type=int, default=1, help="seeds per strategy / lambda_1 value (default 1)")
    s.add_argument("--embedding-map", action="store_true", help="Fig. 4: t-SNE of item embeddings by category")
    s.add_argument("--map-relation", help="relation that colours the map (default: the one named like 'cat*')")
    s.add_argument("--lock", help="flock this file around every run (shared machines)")
    s.add_argument("--figures", help="figure directory (default OUT/figures)")
    s.add_argument("--no-figures", action="store_true")
    s.add_argument("--no-progress", action="store_true", help="no per-run progress lines")
    s.add_argument("--progress", action="store_true", help="per-epoch progress bars (default: none)")
    s.add_argument("--tensorboard", metavar="DIR", help="per-epoch scalars of every run trained now as "
                   "TensorBoard event files in DIR/<dataset>/<model>/seed<N> (the 'tensorboard' extra)")
    s.set_defaults(func=cmd_benchmark)

    s = sub.add_parser("tune", help="hyper-parameter search with Optuna on validation (needs the 'tune' extra); "
                       "writes a best configuration for `mkmsr train --config`")
    s.add_argument("--model", required=True, help="model name; see `mkmsr models`")
    s.add_argument("--data", required=True, help="prepared dataset directory")
    s.add_argument("--out", required=True, help="study folder: study.db (rerun to resume), trials.json, "
                   "best_config.toml")
    s.add_argument("--trials", type=int, default=20,
                   help="finished (complete + pruned) trials the study should hold, earlier runs included (default 20)")
    s.add_argument("--minutes", type=float, help="time budget of this run (default: none)")
    s.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what --minutes measures: wall time (default) or this run's CPU time, all threads "
                   "summed (the same search however busy the machine is; CPU devices only)")
    s.add_argument("--metric", default="mrr@20", help="validation metric maximised (default mrr@20)")
    s.add_argument("--seed", type=int, default=0, help="sampler seed and every trial's training seed (default 0)")
    s.add_argument("--epochs", type=int, help="maximum epochs per trial (default 30)")
    s.add_argument("--patience", type=int, help="early-stopping patience per trial (default 5)")
    s.add_argument("--batch-size", dest="batch_size", type=int, help="samples per SR step (default 128)")
    s.add_argument("--max-len", dest="max_len", type=int, help="keep only the latest N micro-behaviours")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    s.set_defaults(func=cmd_tune)

    s = sub.add_parser("models", help="list the registered models")
    s.set_defaults(func=lambda a: (print("\n".join(__import__("mkmsr.models", fromlist=["x"]).model_names())), 0)[1])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    level = logging.WARNING if a.quiet else (logging.DEBUG if a.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    try:
        return int(a.func(a) or 0)
    except (MkmsrError, FileExistsError, FileNotFoundError) as exc:
        print(f"mkmsr {a.command}: error: {exc}", file=sys.stderr)
        return 2
