"""How long MKM-SR-RN's calibration takes, with and without the staged memo, on a finished run.

    .venv/bin/python benchmarks/calibration_speed.py --run W/runs/Demo/mkmsr-rn/seed0 --data W/prepared-drop \\
        [--threads 2] [--baseline-src OLD/src] [--json F]

The calibration (``Trainer._calibrate``) evaluates the validation split at some 550 points of the
inference-time options; on the JD data that was 6-10 minutes a run, as long as the mixture's own
training. Inside ``MKMSRRN.calibration_memo`` the option-independent parts of a forward pass were
already computed once per batch; since stop 31 the stages after the mixture are staged too
(``MKMSRRN._staged``: the mixture's distribution is reused along the knowledge prior's and the repeat
hurdle's axes, the prior's output along the hurdle's, with the masses each stage renormalises by),
and the rank counts take one comparison fewer. This script finishes the run again twice on copies
(``Trainer.refinish``: its trained weights, the calibration from the configured values, validation
and test), once as shipped and once with the stages computed afresh each time (the memo of stop 30),
each in a fresh process with the same threads, and prints the seconds, the points searched, the ratio, and whether
both chose the same options with the same validation value at every point (they must: the staged
values are the ones recomputing would give) — and whether those values equal the ones the run
recorded when it finished (the code that trained it). With ``--baseline-src`` it also times the same
refinish under an earlier release's checkout (the peer: what a user of that release waited). Saves
``--json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mkmsr.fsutil import write_json  # noqa: E402

#: one refinish of a copy of a run, in a fresh process, under the checkout ``src`` given
REFINISH = """
import json, shutil, sys, tempfile, time
from pathlib import Path
src, run, data, threads, staged = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
sys.path.insert(0, src)
import torch
from mkmsr.data.dataset import PreparedData
from mkmsr.models.mkmsr_rn import MKMSRRN
from mkmsr.training.train import Trainer, load_train_config
torch.set_num_threads(threads)
# the run's own train config (its threads included) must stay as trained for refinish to accept it, and
# refinish would set the torch threads from it: the threads asked for here hold instead
torch.set_num_threads = lambda n: None
if not staged and hasattr(MKMSRRN, "_staged"):       # the memo of stop 30: every stage afresh
    MKMSRRN._staged = lambda self, batch, stage, after, fn: fn()
with tempfile.TemporaryDirectory() as tmp:
    copy = Path(tmp) / "run"
    shutil.copytree(run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    tc = load_train_config(cfg["train_config"])
    trainer = Trainer(PreparedData(data), cfg["model"], cfg["model_config"], tc, copy)
    t = time.perf_counter()
    m = trainer.refinish()
    seconds = time.perf_counter() - t
tuned = m.get("tuned_on_validation") or {}
curve = next((v for k, v in tuned.items() if k.endswith("_by_calibration")), {})
print(json.dumps({"seconds": round(seconds, 1), "points": len(curve), "curve": curve,
                  "chosen": {k: tuned[k] for k in tuned.get("calibration_grid", {})},
                  "valid_mrr@20": m["valid"]["mrr@20"], "test_mrr@20": m["test"]["mrr@20"]}))
"""


def finish_again(src: Path, run: Path, data: str, threads: int, staged: bool = True) -> dict:
    """Refinish a copy of ``run`` under the checkout ``src`` in a fresh process: the seconds, the
    calibration's points (option values -> validation value), its choice, validation and test."""
    out = subprocess.run([sys.executable, "-c", REFINISH, str(src), str(run), data, str(threads), "1" if staged else "0"],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the refinish under {src} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished mkmsr-rn run folder (benchmarks/lead.py's runs/...)")
    p.add_argument("--data", required=True, help="the prepared data it was trained on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline-src", help="also time the refinish under this checkout's src/ (an earlier release: "
                   "git worktree add /tmp/base COMMIT, then --baseline-src /tmp/base/src)")
    p.add_argument("--json", default=str(ROOT / "docs" / "calibration-speed.json"))
    a = p.parse_args(argv)
    runs = {}
    todo = [("staged", ROOT / "src", True), ("unstaged", ROOT / "src", False)]
    if a.baseline_src:
        todo.append(("baseline", Path(a.baseline_src), True))
    for label, src, staged in todo:
        runs[label] = r = finish_again(src, Path(a.run), a.data, a.threads, staged)
        print(f"{label:9s} {r['seconds']:7.1f} s, {r['points']} points ({r['seconds'] / max(r['points'], 1):.3f} s a point); "
              f"valid MRR@20 {r['valid_mrr@20']:.3f}, test {r['test_mrr@20']:.3f} ({src})")
    same = runs["staged"]["chosen"] == runs["unstaged"]["chosen"] and runs["staged"]["curve"] == runs["unstaged"]["curve"]
    # and against the run's own record (its calibration as the code that trained it computed it)
    recorded = json.loads((Path(a.run) / "metrics.json").read_text()).get("tuned_on_validation") or {}
    rec_curve = next((v for k, v in recorded.items() if k.endswith("_by_calibration")), None)
    as_recorded = None if rec_curve is None else rec_curve == runs["staged"]["curve"]
    ratio = runs["unstaged"]["seconds"] / max(runs["staged"]["seconds"], 1e-9)
    print(f"staged / unstaged speed: {ratio:.2f}x; same choice and the same validation value at every point: {same}; "
          f"the same as the run's record: {as_recorded}")
    if "baseline" in runs:
        base = runs["baseline"]
        print(f"staged / baseline speed: {base['seconds'] / max(runs['staged']['seconds'], 1e-9):.2f}x; "
              f"the same validation value at every point: {base['curve'] == runs['staged']['curve']}")
    out = {"command": "benchmarks/calibration_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": f"{platform.processor() or platform.machine()}, {a.threads} threads",
           "speedup": round(ratio, 2), "identical": same, "as_recorded": as_recorded,
           **({"speedup_vs_baseline": round(runs["baseline"]["seconds"] / max(runs["staged"]["seconds"], 1e-9), 2),
               "identical_to_baseline": runs["baseline"]["curve"] == runs["staged"]["curve"]} if "baseline" in runs else {}),
           **{k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in runs.items()}}
    write_json(Path(a.json), out)
    print(f"saved {a.json}")
    return 0 if same and as_recorded is not False else 1


if __name__ == "__main__":
    sys.exit(main())
