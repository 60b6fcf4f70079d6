"""How much of the Demo's validation / test disagreement is a stale training period? A check on
finished benchmark runs (not a protocol of the benchmark).

    .venv/bin/python benchmarks/refit_check.py --work W [--dataset Demo] [--seeds 0,1]

Every model here is selected on validation with the fit split as its training data, then tested
on a later period. Validation prefixes see a neighbourhood memory (STAN, V-SKNN, MKM-SR-RN's
neighbourhood evidence) and trained weights that end right before them; test prefixes see both
end hours earlier, before the validation period. This script measures, on the finished runs of a
benchmark work folder (``benchmarks/table2.py`` / ``lead.py``), what the test figures become when
the validation sessions join the training data *after* selection:

* ``memory``: the count-based models and MKM-SR-RN re-read their neighbourhood memory (and its
  statistics) from fit + validation; nothing is retrained, every option stays as validation chose;
* ``retrain``: CORE is trained again on fit + validation, same seed and options, for exactly the
  number of epochs validation selected, and tested after its last epoch;
* ``memory + retrained expert``: MKM-SR-RN with the new memory and that retrained CORE as its
  explore expert (its own mixture weights and calibrated options unchanged).

Test samples are the same in both columns. Prints a table and saves ``--json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mkmsr.checkpoint import load_checkpoint  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.fsutil import write_json  # noqa: E402
from mkmsr.training.evaluate import evaluate  # noqa: E402
from mkmsr.training.train import TrainConfig, Trainer  # noqa: E402

PREPARED = {"Demo": "prepared-drop", "Demo(N)": "prepared-keep", "Taobao": "prepared-taobao"}


class _LiveTrainer(Trainer):
    """A Trainer that exposes the model it is training (``live``), so the script can keep the
    weights of the last epoch: on fit + valid, "the best epoch on validation" means nothing."""

    def _build(self):
        self.live = super()._build()
        return self.live


def fit_plus_valid(src: Path, dst: Path) -> Path:
    """A copy of the prepared dataset ``src`` whose train split is train + valid (valid and test
    unchanged; test samples are therefore the same)."""
    if (dst / "manifest.json").exists():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for part in ("items", "ops"):
        np.save(tmp / f"train.{part}.npy", np.concatenate([np.load(src / f"train.{part}.npy"),
                                                            np.load(src / f"valid.{part}.npy")]))
    a, b = np.load(src / "train.offsets.npy"), np.load(src / "valid.offsets.npy")
    np.save(tmp / "train.offsets.npy", np.concatenate([a, b[1:] + a[-1]]))
    pl.concat([pl.read_parquet(src / "train.sessions.parquet"),
               pl.read_parquet(src / "valid.sessions.parquet")]).write_parquet(tmp / "train.sessions.parquet")
    m = json.loads((tmp / "manifest.json").read_text())
    m["note"] = "benchmarks/refit_check.py: train = train + valid of " + str(src)
    (tmp / "manifest.json").write_text(json.dumps(m, indent=1))
    tmp.rename(dst)
    return dst


def test_metrics(model, data: PreparedData) -> tuple[float, float]:
    model.fit_statistics(data)
    r = evaluate(model, data, "test", 512)
    return round(r["hit@20"], 2), round(r["mrr@20"], 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="a benchmark work folder (runs/, prepared-*/)")
    p.add_argument("--dataset", default="Demo", choices=sorted(PREPARED))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--memory-models", default="stan,stan-remind,v-sknn,v-sknn-remind,mkmsr-rn")
    p.add_argument("--retrain-models", default="core")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "docs" / "refit-check.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    src = work / PREPARED[a.dataset]
    fit, both = PreparedData(src), PreparedData(fit_plus_valid(src, work / (PREPARED[a.dataset] + "-fit+valid")))
    rows = []
    seeds = [int(s) for s in a.seeds.split(",")]
    for name in [m for m in a.memory_models.split(",") if m]:
        for seed in seeds:
            rd = work / "runs" / a.dataset / name / f"seed{seed}"
            if not (rd / "best").exists():
                if not (seed > 0 and (rd.parent / "seed0" / "best").exists()):   # count-based: seed 0 only
                    print(f"{name} seed {seed}: no finished run in {rd}, skipped")
                continue
            before = test_metrics(load_checkpoint(rd / "best")[0].eval(), fit)
            after = test_metrics(load_checkpoint(rd / "best")[0].eval(), both)
            rows.append({"model": name, "seed": seed, "kind": "memory", "test_fit": before, "test_fit_valid": after})
            print(f"{name:14s} seed {seed}  memory   test Hit@20 / MRR@20 {before[0]:6.2f} / {before[1]:6.2f}"
                  f"  ->  {after[0]:6.2f} / {after[1]:6.2f}", flush=True)
    retrained: dict = {}
    for name in [m for m in a.retrain_models.split(",") if m]:
        for seed in seeds:
            rd = work / "runs" / a.dataset / name / f"seed{seed}"
            if not (rd / "metrics.json").exists():
                print(f"{name} seed {seed}: no finished run in {rd}, skipped")
                continue
            met = json.loads((rd / "metrics.json").read_text())
            cfg = json.loads((rd / "config.json").read_text())
            tc = {k: v for k, v in cfg["train_config"].items() if k in TrainConfig.__dataclass_fields__}
            epochs = int(met["best_epoch"])
            tc.update(epochs=epochs, patience=epochs, eval_test_each_epoch=True, threads=a.threads)
            last_state: dict = {}
            tr = _LiveTrainer(both, name, cfg["model_config"], TrainConfig(**tc), None, progress=False,
                              on_epoch_end=lambda e, _v: last_state.update(
                                  {k: v.detach().clone() for k, v in tr.live.state_dict().items()}) if e == epochs else None)
            tr.fit()                                       # (restores the epoch "best" on the leaked validation)
            retrained[(name, seed)] = last_state
            last = tr.history[-1]["test"]                  # after the last epoch, not "best on valid"
            before = (round(met["test"]["hit@20"], 2), round(met["test"]["mrr@20"], 2))
            after = (round(last["hit@20"], 2), round(last["mrr@20"], 2))
            rows.append({"model": name, "seed": seed, "kind": f"retrain {epochs} epochs", "test_fit": before,
                         "test_fit_valid": after})
            print(f"{name:14s} seed {seed}  retrain  test Hit@20 / MRR@20 {before[0]:6.2f} / {before[1]:6.2f}"
                  f"  ->  {after[0]:6.2f} / {after[1]:6.2f}  ({epochs} epochs)", flush=True)
    # MKM-SR-RN with both: the memory of fit + valid and its explore expert replaced by the retrained
    # run of the same seed (its own mixture weights and every calibrated option unchanged)
    for (name, seed), state in retrained.items():
        rd = work / "runs" / a.dataset / "mkmsr-rn" / f"seed{seed}"
        if not (rd / "best").exists():
            continue
        m = load_checkpoint(rd / "best")[0].eval()
        if m.expert is None or m.config.explore_expert != name:
            continue
        before = test_metrics(load_checkpoint(rd / "best")[0].eval(), fit)
        m.expert.load_state_dict(state)
        after = test_metrics(m, both)
        rows.append({"model": "mkmsr-rn", "seed": seed, "kind": f"memory + retrained {name} expert",
                     "test_fit": before, "test_fit_valid": after})
        print(f"{'mkmsr-rn':14s} seed {seed}  memory + retrained expert  {before[0]:6.2f} / {before[1]:6.2f}"
              f"  ->  {after[0]:6.2f} / {after[1]:6.2f}", flush=True)
    write_json(a.json, {"command": "benchmarks/refit_check.py " + " ".join(argv or sys.argv[1:]),
                        "dataset": a.dataset, "test_samples": int(fit.manifest["splits"]["test"]["samples"]),
                        "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
