"""Serving latency on a 139k-item catalogue: in-process and over HTTP on loopback.

    # 1. once: a synthetic 139k-item dataset -> prepare -> a short real training run
    .venv/bin/python benchmarks/serving.py build --work benchmarks/out/serving
    # 2. measure (hold the shared CPU lock)
    flock /tmp/mkmsr-cpu.lock .venv/bin/python benchmarks/serving.py measure \
        --model benchmarks/out/serving/run --json benchmarks/out/serving/results.json

``build`` writes events in which every one of ``--items`` items occurs (sessions of 2-4
micro-behaviours over a random permutation of the catalogue, plus sessions drawn by a Zipf
popularity), three knowledge triplets per item, prepares them with ``--cold-start keep`` (so
items seen only in the validation or test period stay in the catalogue as cold-start items)
and trains MKM-SR (d = 100, the paper's size) for ``--epochs`` epochs (0 = an untrained model
of the same size; latency does not depend on the weights).

``measure`` reports

* in-process: ``Recommender.recommend(session, k=20)`` one session at a time, p50/p90/p99/max
  over ``--calls`` calls after a warm-up, per (torch threads, scan) config -- one block per
  thread count, in which the scan modes take turns call by call, so both see the same
  background load -- with a breakdown (ids ->
  padded batch, encoder pass, ranking over the catalogue) and the throughput of
  ``recommend_batch`` on 64 sessions;
* HTTP: ``mkmsr serve`` in a subprocess on 127.0.0.1, driven by ``C`` concurrent keep-alive
  clients (closed loop: each sends its next request when the previous one is answered) for
  at most ``--duration`` seconds and ``--max-requests`` requests per level: requests/s,
  p50/p90/p99/max latency and the error count (anything but a 200 with items, or a
  connection error, or no answer within 10 s).

Sessions are random catalogue items (half drawn by training popularity) with 1-10 events
and random operations, fixed by ``--seed``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import polars as pl  # noqa: E402
import torch  # noqa: E402

OPS = ["click", "cart", "order", "favorite"]


# --------------------------------------------------------------------------------------------
# build: a 139k-item checkpoint
# --------------------------------------------------------------------------------------------

def synthetic_catalogue(out: Path, n_items: int, pop_sessions: int, seed: int) -> Path:
    """events.csv + knowledge.csv in which every item occurs at least once."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_items)
    lens = rng.integers(2, 5, size=n_items)  # sessions of 2..4 events covering the permutation
    cuts = np.cumsum(lens)
    cuts = cuts[cuts < n_items]
    cover = np.split(perm, cuts)
    if cover[-1].size < 2:
        cover[-2] = np.concatenate([cover[-2], cover[-1]])
        cover = cover[:-1]
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    p = ranks ** -1.05
    p /= p.sum()
    pop_lens = rng.integers(2, 9, size=pop_sessions)
    pop = np.split(rng.choice(n_items, size=int(pop_lens.sum()), p=p), np.cumsum(pop_lens)[:-1])
    sessions = cover + pop
    order = rng.permutation(len(sessions))  # interleave both kinds in time
    sess_ids = np.repeat(np.arange(len(sessions)), [sessions[i].size for i in order])
    items = np.concatenate([sessions[i] for i in order])
    ops = rng.choice(len(OPS), size=items.size, p=[0.6, 0.2, 0.05, 0.15])
    out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"session_id": sess_ids.astype(str), "item_id": np.char.add("it", items.astype(str)),
                  "operation": np.array(OPS)[ops], "timestamp": np.arange(items.size, dtype=np.int64)}
                 ).write_csv(out / "events.csv")
    rel = {"category": 1000, "brand": 8000, "shop": 3000}
    kg = pl.concat([pl.DataFrame({"item_id": np.char.add("it", np.arange(n_items).astype(str)),
                                  "relation": r, "value": np.char.add(r[0], rng.integers(0, n, n_items).astype(str))})
                    for r, n in rel.items()])
    kg.write_csv(out / "knowledge.csv")
    return out


def cmd_build(a) -> int:
    from mkmsr.checkpoint import save_checkpoint
    from mkmsr.data.dataset import PreparedData
    from mkmsr.data.prepare import PrepareConfig, prepare
    from mkmsr.data.sources import ColumnMap, read_generic
    from mkmsr.models import build_model
    from mkmsr.training.train import TrainConfig, train

    work = Path(a.work)
    t0 = time.perf_counter()
    raw = synthetic_catalogue(work / "raw", a.items, a.pop_sessions, a.seed)
    cols = ColumnMap(item="item_id", op="operation", time="timestamp", session="session_id")
    data = prepare(read_generic(raw / "events.csv", cols, knowledge=raw / "knowledge.csv"), work / "prepared",
                   PrepareConfig(cold_start="keep"), overwrite=True)
    pd = PreparedData(data)
    print(f"prepared {pd.spec.n_items} items ({pd.manifest['counts']['cold_items_in_catalogue']} cold), "
          f"{pd.manifest['splits']['train']['samples']} training samples in {time.perf_counter() - t0:.0f}s")
    run = work / "run"
    if a.epochs > 0:
        t1 = time.perf_counter()
        m = train(pd, "mkmsr", run, TrainConfig(epochs=a.epochs, batch_size=256, seed=a.seed, threads=a.threads,
                                                 eval_test_each_epoch=False), {"dim": a.dim},
                  overwrite=True, progress=False)
        print(f"trained {a.epochs} epoch(s) in {time.perf_counter() - t1:.0f}s: valid MRR@20 {m['valid']['mrr@20']:.2f}")
    else:
        torch.manual_seed(a.seed)
        save_checkpoint(run / "best", build_model("mkmsr", pd.spec, {"dim": a.dim}), "mkmsr", pd, {"epoch": 0})
        print("untrained model saved (--epochs 0)")
    print(f"checkpoint: {run / 'best'}")
    return 0


# --------------------------------------------------------------------------------------------
# measure
# --------------------------------------------------------------------------------------------

def request_sessions(items: pl.DataFrame, n: int, seed: int) -> list[list[tuple[str, str]]]:
    rng = np.random.default_rng(seed)
    ids = items["item_id"].to_numpy()
    cnt = items["train_count"].to_numpy().astype(np.float64) + 1.0
    p = cnt / cnt.sum()
    out = []
    for L in rng.integers(1, 11, n):
        pick = np.where(rng.random(L) < 0.5, rng.choice(ids.size, L, p=p), rng.integers(0, ids.size, L))
        out.append([(str(ids[j]), OPS[o]) for j, o in zip(pick, rng.integers(0, 4, L))])
    return out


def pct(ms: list[float]) -> dict:
    x = np.asarray(ms)
    return {"p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
            "p99": float(np.percentile(x, 99)), "max": float(x.max()), "mean": float(x.mean())}


def in_process(model: str, configs: list[tuple[int, str]], calls: int, sessions, k: int) -> list[dict]:
    """Latency of ``recommend`` per (torch threads, scan) config: a block per thread count, in
    which the scan modes take turns call by call (same background load for both)."""
    from mkmsr.data.batching import batch_from_sequences
    from mkmsr.serving.recommend import Recommender

    recs = {scan: Recommender.load(model, scan=scan) for scan in {c[1] for c in configs}}
    lat = {c: [] for c in configs}
    parts = {c: {"translate": [], "encode": [], "rank": []} for c in configs}
    rates = {c: [] for c in configs}
    for i in range(100):  # warm-up
        for t, scan in configs:
            torch.set_num_threads(t)
            recs[scan].recommend(sessions[i], k=k)
    # one block per thread count (changing torch's thread count costs the next call); within a
    # block the scan modes take turns call by call
    for t in dict.fromkeys(c[0] for c in configs):
        block = [c for c in configs if c[0] == t]
        torch.set_num_threads(t)
        for i in range(20):
            for c in block:
                recs[c[1]].recommend(sessions[i], k=k)
        for i in range(calls):
            s = sessions[i % len(sessions)]
            for c in block:
                t0 = time.perf_counter()
                recs[c[1]].recommend(s, k=k)
                lat[c].append((time.perf_counter() - t0) * 1e3)
    order = [c for t in dict.fromkeys(c[0] for c in configs) for c in configs if c[0] == t]
    with torch.inference_mode():
        for c in order:  # where the time goes: ids -> padded batch, encoder pass, ranking
            torch.set_num_threads(c[0])
            rec = recs[c[1]]
            for s in sessions[:300]:
                t0 = time.perf_counter()
                it, op, _, _ = rec._translate(s, "benchmark")
                b = batch_from_sequences([it], [op])
                t1 = time.perf_counter()
                if rec.item_matrix is None:   # a full-scoring model (per-session scores: mkmsr-rn):
                    x = rec.model.score(b)    # "encode" is then the whole scoring pass
                    t2 = time.perf_counter()
                    torch.topk(x, k, dim=1)
                    t3 = time.perf_counter()
                    for key, dt in zip(parts[c], (t1 - t0, t2 - t1, t3 - t2)):
                        parts[c][key].append(dt * 1e3)
                    continue
                v = rec.model.encode(b)
                t2 = time.perf_counter()
                if c[1] == "bfloat16":
                    rec._scan_top(v, [k], [[]])
                else:
                    torch.topk(v @ rec.item_matrix.T, k, dim=1)
                t3 = time.perf_counter()
                for key, dt in zip(parts[c], (t1 - t0, t2 - t1, t3 - t2)):
                    parts[c][key].append(dt * 1e3)
    batch = sessions[:64]
    for c in order:  # recommend_batch of 64 sessions, first round = warm-up
        torch.set_num_threads(c[0])
        for rep in range(6):
            t0 = time.perf_counter()
            recs[c[1]].recommend_batch(batch, k=k)
            if rep:
                rates[c].append(len(batch) / (time.perf_counter() - t0))
    rec = next(iter(recs.values()))
    return [{"threads": c[0], "scan": c[1], "calls": calls, "latency_ms": pct(lat[c]),
             "breakdown_mean_ms": {key: float(np.mean(v)) for key, v in parts[c].items()},
             "batch64_sessions_per_s": float(np.median(rates[c])), "n_items": rec.n_items,
             "item_matrix": list(rec.item_matrix.shape) if rec.item_matrix is not None else None,
             "item_matrix_contiguous": rec.item_matrix.is_contiguous() if rec.item_matrix is not None else None}
            for c in configs]


async def _client(port, bodies, stop_at, budget, lat, errors, rng):
    reader = writer = None
    while time.perf_counter() < stop_at and budget[0] > 0:
        budget[0] -= 1
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                errors.append("connect")
                await asyncio.sleep(0.01)
                continue
        body = bodies[rng.randrange(len(bodies))]
        req = (b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
        t = time.perf_counter()
        try:
            writer.write(req)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            status = int(head[9:12])
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            payload = await asyncio.wait_for(reader.readexactly(n), 10.0)
            lat.append((time.perf_counter() - t) * 1e3)
            if status != 200 or b'"items":[{' not in payload:
                errors.append(f"status {status}")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            errors.append(type(exc).__name__)
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _load(port, bodies, concurrency, duration, max_requests, seed):
    lat, errors, budget = [], [], [max_requests]
    stop_at = time.perf_counter() + duration
    t = time.perf_counter()
    await asyncio.gather(*(_client(port, bodies, stop_at, budget, lat, errors, random.Random(seed + i))
                           for i in range(concurrency)))
    wall = time.perf_counter() - t
    return {"concurrency": concurrency, "requests": len(lat) + len(errors),
            "answered": len(lat), "seconds": wall, "requests_per_s": len(lat) / wall,
            "latency_ms": pct(lat) if lat else None, "errors": len(errors),
            "error_kinds": sorted(set(errors))[:5]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def over_http(model: str, server_threads: int, levels: list[int], duration: float, max_requests: int,
              sessions, k: int, seed: int, max_inference_batch: int) -> list[dict]:
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"mkmsr-serving-bench-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mkmsr", "-q", "serve", "--model", model, "--host", "127.0.0.1",
                             "--port", str(port), "--threads", str(server_threads),
                             "--max-inference-batch", str(max_inference_batch)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {open(log.name).read()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server not up in 180 s")
                time.sleep(0.3)
        bodies = [json.dumps({"events": [{"item_id": i, "operation": o} for i, o in s], "k": k}).encode()
                  for s in sessions]
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        runner(_load(port, bodies, 4, 2.0, 2000, seed))  # warm-up, not reported
        out = []
        for c in levels:
            r = runner(_load(port, bodies, c, duration, max_requests, seed + c))
            r["server_threads"] = server_threads
            r["max_inference_batch"] = max_inference_batch
            out.append(r)
            lm = r["latency_ms"] or {}
            print(f"  HTTP c={c:3d}: {r['requests_per_s']:7.1f} req/s  p50 {lm.get('p50', float('nan')):6.2f} ms  "
                  f"p99 {lm.get('p99', float('nan')):6.2f} ms  errors {r['errors']}", flush=True)
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def fmt(v: float) -> str:
    return f"{v:.2f}"


def cmd_measure(a) -> int:
    model = Path(a.model)
    from mkmsr.checkpoint import resolve_checkpoint

    ck = resolve_checkpoint(model)
    items = pl.read_parquet(ck / "items.parquet")
    sessions = request_sessions(items, 2000, a.seed)
    load1 = os.getloadavg()[0]
    res = {"command": " ".join(sys.argv), "checkpoint": str(ck), "n_items": items.height,
           "cold_items": int((items["train_count"] == 0).sum()), "k": a.k, "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "loadavg_1min_at_start": load1, "in_process": [], "http": []}
    print(f"catalogue {items.height} items ({res['cold_items']} cold), k={a.k}, load average {load1:.2f}")
    configs = [(t, scan) for t in a.threads for scan in a.scan]
    for r in in_process(str(ck), configs, a.calls, sessions, a.k):
        res["in_process"].append(r)
        lm = r["latency_ms"]
        print(f"  in-process threads={r['threads']} scan={r['scan']}: p50 {lm['p50']:.2f} ms  p90 {lm['p90']:.2f}  "
              f"p99 {lm['p99']:.2f}  max {lm['max']:.2f}; mean ms "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["breakdown_mean_ms"].items())
              + f"; batch of 64: {r['batch64_sessions_per_s']:.0f} sessions/s", flush=True)
    for t in a.server_threads:
        res["http"] += over_http(str(ck), t, a.concurrency, a.duration, a.max_requests, sessions, a.k, a.seed,
                                 a.max_inference_batch)
    res["loadavg_1min_at_end"] = os.getloadavg()[0]

    lines = [f"Catalogue: {items.height} items ({res['cold_items']} cold-start), d = "
             f"{(res['in_process'][0]['item_matrix'] or ['?', 'full scoring'])[1] if res['in_process'] else '?'}, k = {a.k}; "
             f"load average {load1:.2f} at start, {res['loadavg_1min_at_end']:.2f} at end.", "",
             "In-process, one session per call (`Recommender.recommend`):", "",
             "| torch threads | scan | calls | p50 ms | p90 ms | p99 ms | max ms | mean ms: ids | encode | rank | batch of 64, sessions/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["in_process"]:
        lm, b = r["latency_ms"], r["breakdown_mean_ms"]
        lines.append(f"| {r['threads']} | {r['scan']} | {r['calls']} | {fmt(lm['p50'])} | {fmt(lm['p90'])} | "
                     f"{fmt(lm['p99'])} | {fmt(lm['max'])} | {fmt(b['translate'])} | {fmt(b['encode'])} | "
                     f"{fmt(b['rank'])} | {r['batch64_sessions_per_s']:.0f} |")
    lines += ["", "HTTP on 127.0.0.1 (`POST /recommend`, closed-loop keep-alive clients):", "",
              "| server torch threads | clients | answered | req/s | p50 ms | p90 ms | p99 ms | max ms | errors |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in res["http"]:
        lm = r["latency_ms"] or {k: float("nan") for k in ("p50", "p90", "p99", "max")}
        lines.append(f"| {r['server_threads']} | {r['concurrency']} | {r['answered']} | {r['requests_per_s']:.0f} | "
                     f"{fmt(lm['p50'])} | {fmt(lm['p90'])} | {fmt(lm['p99'])} | {fmt(lm['max'])} | {r['errors']} |")
    table = "\n".join(lines)
    print("\n" + table)
    if a.json:
        from mkmsr.fsutil import write_json

        write_json(a.json, {**res, "markdown": table})
        print(f"\nwritten {a.json}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="synthetic 139k-item data -> prepare -> short training run")
    b.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "serving"))
    b.add_argument("--items", type=int, default=139_000)
    b.add_argument("--pop-sessions", type=int, default=5000, help="extra sessions drawn by popularity")
    b.add_argument("--epochs", type=int, default=1, help="training epochs (0 = untrained model of the same size)")
    b.add_argument("--dim", type=int, default=100)
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_build)
    m = sub.add_parser("measure", help="in-process and HTTP latency")
    m.add_argument("--model", required=True, help="checkpoint or run directory")
    m.add_argument("-k", type=int, default=20)
    m.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
                   help="torch thread counts for the in-process runs (default 1,2)")
    m.add_argument("--scan", type=lambda s: s.split(","), default=["bfloat16", "float32"],
                   help="Recommender scan modes for the in-process runs (default bfloat16,float32)")
    m.add_argument("--calls", type=int, default=2000, help="in-process calls per thread count")
    m.add_argument("--server-threads", type=lambda s: [int(x) for x in s.split(",")], default=[1],
                   help="torch threads of the server (default 1)")
    m.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16, 32])
    m.add_argument("--duration", type=float, default=8.0, help="seconds per concurrency level (at most)")
    m.add_argument("--max-requests", type=int, default=20_000, help="requests per concurrency level (at most)")
    m.add_argument("--max-inference-batch", type=int, default=None,
                   help="the server's --max-inference-batch (default: the server's default)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--json", help="write all figures here")
    m.set_defaults(func=cmd_measure)
    a = p.parse_args(argv)
    if getattr(a, "max_inference_batch", 0) is None:
        from mkmsr.serving.serve import ServeConfig
        a.max_inference_batch = ServeConfig().max_inference_batch
    return a.func(a)


if __name__ == "__main__":
    raise SystemExit(main())
