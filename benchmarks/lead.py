"""The lead comparison (issue 9): the new model against the field's strongest baselines on every
real dataset in ../shared/data, validation-selected, paired over test samples and seeds.

    .venv/bin/python benchmarks/lead.py --seeds 5                      # everything
    .venv/bin/python benchmarks/lead.py --datasets Taobao --seeds 3 --threads 1
    .venv/bin/python benchmarks/lead.py --report-only                  # docs from finished runs

Datasets: Demo and Demo(N) (JDATA, the paper's; prepared as benchmarks/table2.py does, and
sharing its work folder so no run is trained twice) and Taobao (the UserBehavior head,
``mkmsr prepare --format taobao`` defaults: UTC+8 period, truncated last row dropped, cold test
items dropped), and Taobao-1..4, the same log's earlier test blocks (rolling origin: ``--exclude-latest
0.1 / 0.2 / 0.3 / 0.4``), reported alone and pooled (the first three, four, and all five). Every model is trained on
the train split, its epoch chosen on validation MRR@20;
count-based models are tuned on validation (``mkmsr.benchmark.TUNING_GRIDS``), and an mkmsr-rn
variant with the neighbourhood (``mkmsr-rn-nb``) gets STAN's tuned neighbourhood options. Writes ``WORK/lead.json`` and ``DOCS/results-lead.md``: one
table per dataset (every model: Hit@20 / MRR@20 mean ± std over seeds, the repeat / first-time
split, cold first-time), and the paired verdicts of the lead model against every other row
(bootstrap over test samples and seeds: ``mkmsr.benchmark.paired_bootstrap``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from mkmsr.training import benchmark as bm  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.fsutil import atomic_write_text, read_json, write_json  # noqa: E402
from mkmsr.data.prepare import PrepareConfig, prepare  # noqa: E402
from mkmsr.data.raw_formats import read_taobao  # noqa: E402
from mkmsr.data.read import default_min_item_count  # noqa: E402
from mkmsr.data.sources import read_jdata_demo  # noqa: E402
from mkmsr.training.train import BLIND_TEST_ENV  # noqa: E402
from mkmsr.training.evaluate import repeat_mask  # noqa: E402

from check_runs import check_run  # noqa: E402
from table2 import seed_matrix  # noqa: E402

LEAD = "mkmsr-rn"
MODELS = ["s-pop", "v-sknn", "stan", "v-sknn-remind", "stan-remind", "narm", "stamp", "sasrec", "gcsan",
          "repeatnet", "core", "core-kg", "mgnn-spred", "mkmsr", "mkmsr+", LEAD]
ABLATIONS = ["mkmsr-rn-1x", "mkmsr-rn-2x-core-flat", "mkmsr-rn-no-prior", "mkmsr-rn-no-hurdle", "mkmsr-rn-nb", "mkmsr-rn-no-expert", "mkmsr-rn-core-expert", "mkmsr-rn-one-start", "mkmsr-rn-hit-mrr",
             "mkmsr-rn-no-match", "mkmsr-rn-no-match-prior", "mkmsr-rn-no-repeat", "mkmsr-rn-no-cold", "mkmsr-rn-no-ops"]
#: the Taobao head's test blocks (rolling origin): "Taobao" (the latest tenth of the sessions), "Taobao-1",
#: "Taobao-2", "Taobao-3", "Taobao-4" (the tenths before it); the report pools the first three (stop 27's
#: comparison), four (stop 28's) and all five. Taobao-3 (stop 28) and Taobao-4 (stop 29) were added as
#: confirmations, run blind (``--blind``): their test was read only after every run on them was finished.
#: Taobao-4 is the last block: each block further back trains on less of the head (docs/results.md)
TAOBAO_BLOCKS = 5
POOLS = (3, 4, TAOBAO_BLOCKS)
SPLIT = ("hit@20", "mrr@20", "repeat_hit@20", "repeat_mrr@20", "first_hit@20", "first_mrr@20",
         "cold_first_hit@20", "cold_first_mrr@20")


def say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def prepared(work: Path, shared: Path) -> dict[str, Path]:
    out = {}
    jd, tb = shared / "jdata-demo", shared / "taobao-head"
    for label, policy in (("Demo", "drop"), ("Demo(N)", "keep")):
        d = work / f"prepared-{policy}"
        if jd.exists() and not (d / "manifest.json").exists():
            prepare(read_jdata_demo(jd, policy), d, PrepareConfig(cold_start=policy), overwrite=True)
        if (d / "manifest.json").exists():
            out[label] = d
    d = work / "prepared-taobao"
    if tb.exists() and not (d / "manifest.json").exists():
        # as `mkmsr prepare --format taobao --drop-truncated-last-row` does (its item filter included)
        prepare(read_taobao(tb, drop_truncated_last_row=True), d,
                PrepareConfig(cold_start="drop", min_item_count=default_min_item_count("taobao")), overwrite=True)
    if (d / "manifest.json").exists():
        out["Taobao"] = d
    # rolling origin: the same log with the test block moved k blocks back (exclude_latest = k * 0.1,
    # the latest k tenths of the sessions left out), so the Taobao test blocks are disjoint and
    # adjacent; each trains on the sessions before its block only
    for k in range(1, TAOBAO_BLOCKS):
        d = work / f"prepared-taobao-{k}"
        if tb.exists() and not (d / "manifest.json").exists():
            prepare(read_taobao(tb, drop_truncated_last_row=True), d,
                    PrepareConfig(cold_start="drop", min_item_count=default_min_item_count("taobao"),
                                  exclude_latest=0.1 * k), overwrite=True)
        if (d / "manifest.json").exists():
            out[f"Taobao-{k}"] = d
    return out


def run_dirs(work: Path, label: str, data: PreparedData, model: str, seeds: int) -> list[Path]:
    """The finished runs of a row, seeds 0..seeds-1. A run calibrated on validation by another
    grid or search than today's (``benchmark._calibrated_alike``) is left out, with a message:
    a report never mixes it with the rerun rows (run without --report-only to finish it again)."""
    trainable = bm.MODELS[model][0].trainable
    dirs = [bm.RunSpec(label, data.path, model, s).run_dir(work) for s in range(seeds if trainable else 1)]
    out = []
    for d in dirs:
        if not (d / "metrics.json").exists():
            continue
        saved = read_json(d / "config.json").get("model_config") if (d / "config.json").exists() else None
        cfg = bm.make_config(model, bm.MODELS[model][0].upgrade_config(saved) if saved else None)
        if not bm._calibrated_alike(d, bm.RunSpec(label, data.path, model, 0), data, cfg):
            say(f"left out of the report: {d} (calibrated by an older grid or search; run lead.py without "
                "--report-only to finish it again)")
            continue
        out.append(d)
    return out


def validation_checks(dirs: list[Path]) -> dict:
    """benchmarks/check_runs.py over a row's runs and their explore experts: how many were checked
    (trained runs with a per-epoch log) and which were inconsistent (the selected epoch's logged
    validation is not the one its checkpoint gives: stop 29's bug)."""
    checked, bad = 0, []
    for d in dirs:
        for rd in [d] + [d / e for e in bm.EXPERT_DIRS if (d / e / "metrics.json").exists()]:
            c = check_run(rd)
            if c is None or c["consistent"] is None:
                continue
            checked += 1
            if not c["consistent"]:
                bad.append(str(rd))
    return {"checked": checked, "inconsistent": bad}


def row(dirs: list[Path]) -> dict:
    ms = [read_json(d / "metrics.json") for d in dirs]
    r = {"runs": len(ms)}
    for k in SPLIT:
        r[k] = bm.mean_std([m["test"].get(k, float("nan")) for m in ms])
    for k in ("hit@20", "mrr@20"):   # the optimistic protocol: n/a after inference-time tuning
        r[f"best_{k}"] = bm.mean_std([float("nan") if m["test_best_over_epochs"].get("not_applicable")
                                      else m["test_best_over_epochs"].get(k, float("nan")) for m in ms])
    r["valid_mrr@20"] = bm.mean_std([m["valid"]["mrr@20"] for m in ms])
    r["train_samples_per_s"] = bm.mean_std([m.get("train_samples_per_s") or float("nan") for m in ms])
    return r


def tuning_of(work: Path, label: str, model: str) -> str:
    """How a row's options were chosen (all on validation): an Optuna budget, a grid, or none."""
    rec = work / "optuna" / label / bm.TUNE_AS.get(model, model) / "budget.json"
    if rec.exists():
        b = read_json(rec)["budget"]
        unit = " CPU min" if b.get("clock") == "cpu" else " min"
        return f"optuna {b['trials']} trials" + (f" / {b['minutes']:g}{unit}" if b.get("minutes") else "")
    base = bm.TUNE_AS.get(model, model)
    calibrated = hasattr(bm.MODELS[model][0], "calibration_grid")
    # only an mkmsr-rn variant with the neighbourhood (neighbours=True) takes STAN's options
    nb = model in bm.NEIGHBOURHOOD_OF
    if base in bm.TUNING_GRIDS or nb:
        return "grid" + (" (nb_* from STAN's)" if nb else "") + (" + calibration on validation" if calibrated else "")
    if calibrated:
        return "calibration on validation"
    if len(getattr(bm.make_config(model, None), "repeat_boost_grid", ()) or ()) > 1:
        return "paper defaults + repeat boost on validation"
    return "paper defaults"


def report(work: Path, datasets: dict[str, Path], models: list[str], seeds: int, lead: str = LEAD) -> dict:
    res: dict = {"seeds": seeds, "lead": lead, "datasets": {}}
    for label, path in datasets.items():
        data = PreparedData(path)
        rows, verdicts = {}, {}
        dirs = {m: run_dirs(work, label, data, m, seeds) for m in models}
        for m, ds in dirs.items():
            if ds:
                rows[m] = row(ds)
                rows[m]["tuning"] = tuning_of(work, label, m)
                rows[m]["validation_check"] = validation_checks(ds)
        if dirs.get(lead):
            for m, ds in dirs.items():
                if m == lead or not ds:
                    continue
                v = {}
                for metric in ("hit@20", "mrr@20"):
                    a, b = seed_matrix(dirs[lead], data, metric), seed_matrix(ds, data, metric)
                    if a is not None and b is not None:
                        v[metric] = bm.paired_bootstrap(a, b)
                verdicts[m] = v
        res["datasets"][label] = {"test_samples": int(data.split("test").samples()[0].size), "rows": rows,
                                  "lead_vs": verdicts}
    blocks = ["Taobao"] + [f"Taobao-{k}" for k in range(1, TAOBAO_BLOCKS)]
    for n in sorted(set(POOLS)):
        if all(b in datasets for b in blocks[:n]):
            res.setdefault("pooled", {})[f"Taobao, {n} blocks"] = pooled(
                work, {b: datasets[b] for b in blocks[:n]}, models, seeds, lead)
    write_json(work / ("lead.json" if lead == LEAD else f"lead-{lead}.json"), res)
    return res


def repeat_targets(data: PreparedData) -> np.ndarray:
    """(n_test,) bool: the test target repeats an item of its own session prefix."""
    arr = data.split("test")
    sess, prefix = arr.samples()
    return repeat_mask(arr.items, arr.offsets, sess, prefix)


def pooled(work: Path, datasets: dict[str, Path], models: list[str], seeds: int, lead: str) -> dict:
    """One comparison over the test samples of several test blocks of one log (rolling origin):
    each row's per-sample metric of seed k on every block, side by side (a row is pooled only when
    it has runs on every block; seeds cut to the fewest any block has), so the paired bootstrap
    draws from all the blocks' samples at once."""
    data = {b: PreparedData(p) for b, p in datasets.items()}
    mats: dict[str, dict[str, np.ndarray]] = {}
    for m in models:
        per = {b: run_dirs(work, b, data[b], m, seeds) for b in datasets}
        if not all(per.values()):
            continue
        mats[m] = {}
        for metric in ("hit@20", "mrr@20"):
            ms = [seed_matrix(per[b], data[b], metric) for b in datasets]
            if any(x is None for x in ms):
                break
            s = min(x.shape[0] for x in ms)
            mats[m][metric] = np.hstack([x[:s] for x in ms])
        else:
            continue
        del mats[m]
    rep = np.concatenate([repeat_targets(data[b]) for b in datasets])

    def ms(x: np.ndarray) -> tuple[float, float]:   # per seed, then mean / std over seeds
        per_seed = x.mean(axis=1) if x.shape[1] else np.full(x.shape[0], np.nan)
        return float(per_seed.mean()), float(per_seed.std())
    rows = {m: {"runs": int(v["hit@20"].shape[0]), **{k: ms(v[k]) for k in v},
                **{f"{part}_{k}": ms(v[k][:, sel]) for part, sel in (("repeat", rep), ("first", ~rep)) for k in v}}
            for m, v in mats.items()}
    verdicts = {}
    if lead in mats:
        for m in mats:
            if m != lead:
                verdicts[m] = {k: bm.paired_bootstrap(mats[lead][k], mats[m][k]) for k in ("hit@20", "mrr@20")}
    return {"blocks": list(datasets), "test_samples": int(sum(x.split("test").samples()[0].size for x in data.values())),
            "rows": rows, "lead_vs": verdicts}


def f(t, det=False) -> str:
    if t is None or t[0] != t[0]:
        return "–"
    return f"{t[0]:.2f}" if det or t[1] == 0 else f"{t[0]:.2f} ± {t[1]:.2f}"


def verdict(x: dict | None) -> str:
    """A paired difference as the report prints it: mean ± se and the 2-standard-error verdict."""
    if not x:
        return "–"
    tag = "**ahead**" if x["mean"] > 2 * x["se"] else ("behind" if x["mean"] < -2 * x["se"] else "within noise")
    return f"{x['mean']:+.2f} ± {x['se']:.2f} {tag}"


def markdown(res: dict, seconds: float) -> str:
    L = ["# The lead comparison (generated by benchmarks/lead.py)", "",
         f"`.venv/bin/python benchmarks/lead.py --seeds {res['seeds']}"
         + (f" --lead {res['lead']}" if res["lead"] != LEAD else "") + f"`; this report took {seconds / 60:.1f} min "
         "(runs finished earlier are reused). Test figures at the epoch chosen on validation MRR@20, "
         "pessimistic ties, full ranking over the catalogue; mean ± std over seeds (count-based models are "
         "deterministic: one run). \"best over epochs\" is the optimistic protocol of the MKM-SR authors' code "
         "(the best test value of each metric over epochs; n/a for models with a term chosen on validation "
         "after training). \"tuning\": how the row's options were chosen, always on validation (\"grid\": "
         "coordinate ascent over session-rec's ranges; \"optuna N trials\": `mkmsr tune` with that budget, the same "
         "for every row so tuned; \"paper defaults\": the model's paper's settings). Verdicts: the lead model minus the row, paired bootstrap over test "
         "samples and seeds (2,000 replicates); **ahead** = difference > 2 standard errors.", ""]
    for label, d in res["datasets"].items():
        L += [f"## {label}", "", f"Test samples: {d['test_samples']}.", "",
              "| model | runs | tuning | Hit@20 | MRR@20 | best over epochs Hit@20 / MRR@20 | repeat Hit@20 | "
              "repeat MRR@20 | first-time Hit@20 | first-time MRR@20 | cold first-time Hit@20 | "
              "lead − row Hit@20 (± se) | lead − row MRR@20 (± se) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m, r in d["rows"].items():
            det = not bm.MODELS[m][0].trainable
            v = d["lead_vs"].get(m, {})

            def vd(k):
                return verdict(v.get(k))
            best = ("n/a" if r["best_hit@20"][0] != r["best_hit@20"][0]
                    else f"{f(r['best_hit@20'], det)} / {f(r['best_mrr@20'], det)}")
            L.append("| " + " | ".join([f"**{m}**" if m == res["lead"] else m, str(r["runs"]), r["tuning"],
                                        f(r["hit@20"], det), f(r["mrr@20"], det), best, f(r["repeat_hit@20"], det), f(r["repeat_mrr@20"], det),
                                        f(r["first_hit@20"], det), f(r["first_mrr@20"], det),
                                        f(r["cold_first_hit@20"], det), vd("hit@20"), vd("mrr@20")]) + " |")
        checks = [r["validation_check"] for r in d["rows"].values() if r.get("validation_check")]
        n, bad = sum(c["checked"] for c in checks), [b for c in checks for b in c["inconsistent"]]
        L += ["", f"Validation check (benchmarks/check_runs.py: the selected epoch's logged validation MRR@20 against "
                  f"the one its checkpoint gives): {n - len(bad)} of {n} trained runs and experts consistent"
              + (f"; **inconsistent**: {', '.join(bad)}" if bad else "") + "."]
        L.append("")
    for label, d in res.get("pooled", {}).items():
        L += [f"## {label} (pooled)", "", f"The test samples of {', '.join(d['blocks'])} together: {d['test_samples']} "
              "(rolling origin: each block's models trained on the sessions before it). Per row: the mean over "
              "seeds of the pooled Hit@20 / MRR@20 (± std over seeds); verdicts paired over the pooled samples "
              "and seeds.", "",
              "| model | runs | Hit@20 | MRR@20 | repeat MRR@20 | first-time Hit@20 | first-time MRR@20 | "
              "lead − row Hit@20 (± se) | lead − row MRR@20 (± se) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m, r in d["rows"].items():
            det = not bm.MODELS[m][0].trainable
            v = d["lead_vs"].get(m, {})

            L.append("| " + " | ".join([f"**{m}**" if m == res["lead"] else m, str(r["runs"]),
                                        *(f(tuple(r[k]), det) for k in ("hit@20", "mrr@20", "repeat_mrr@20",
                                                                         "first_hit@20", "first_mrr@20")),
                                        verdict(v.get("hit@20")),
                                        verdict(v.get("mrr@20"))]) + " |")
        L.append("")
    return "\n".join(L)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "table2"))
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument("--datasets", default=",".join(["Demo", "Demo(N)", "Taobao"] + [f"Taobao-{k}" for k in range(1, TAOBAO_BLOCKS)]))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--ablations", default=",".join(ABLATIONS), help="run with --ablation-seeds seeds")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--ablation-seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--blind", action="store_true", help="keep test figures out of the training progress log "
                   "(a confirmatory block's test is then first seen in the report; MKMSR_BLIND_TEST)")
    p.add_argument("--lead", default=LEAD, help="the model every row's paired verdict is taken against")
    p.add_argument("--out-name", default="results-lead.md", help="file name of the report in --docs")
    p.add_argument("--tune-trials", type=int, help="search every model with mkmsr tune (Optuna) for N trials "
                   "on validation before its seeds (the same budget for every model; use a fresh --work: runs "
                   "with other options are retrained)")
    p.add_argument("--tune-minutes", type=float, help="and at most M minutes of search per model")
    p.add_argument("--tune-clock", choices=("wall", "cpu"), default="wall",
                   help="what --tune-minutes measures: wall time, or CPU time (the same search however many "
                   "processes share the cores)")
    a = p.parse_args(argv)
    if a.blind:
        os.environ[BLIND_TEST_ENV] = "1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    work = Path(a.work)
    allsets = prepared(work, Path(a.shared))
    if not allsets:
        print(f"no dataset found under {a.shared}", file=sys.stderr)
        return 1
    want = [x for x in a.datasets.split(",") if x]
    train = {"epochs": a.epochs, "patience": a.patience, **({"threads": a.threads} if a.threads else {})}
    models = [m for m in a.models.split(",") if m]
    abl = [m for m in a.ablations.split(",") if m]
    if not a.report_only:
        sets = {k: v for k, v in allsets.items() if k in want}
        optuna = ({"trials": a.tune_trials, "minutes": a.tune_minutes,
                   **({"clock": a.tune_clock} if a.tune_clock != "wall" else {})} if a.tune_trials else None)
        if models:   # (run_benchmark reads an empty list as every registered model)
            bm.run_benchmark(work, sets, models, 1, train, on_progress=say, optuna=optuna)   # every row once first
            bm.run_benchmark(work, sets, models, a.seeds, train, on_progress=say, optuna=optuna)
        if abl:
            bm.run_benchmark(work, sets, abl, a.ablation_seeds, train, on_progress=say, optuna=optuna)
    res = report(work, allsets, models + abl, a.seeds, a.lead)
    atomic_write_text(Path(a.docs) / a.out_name, markdown(res, time.perf_counter() - t0))
    if a.blind:   # the report holds the test figures: read it when the block's decisions are made
        say(f"report written to {Path(a.docs) / a.out_name} (not printed: --blind)")
    else:
        print(markdown(res, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
