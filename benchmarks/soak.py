"""Soak test of ``mkmsr serve``: many requests, malformed ones mixed in, a hot reload mid-way.

    .venv/bin/python benchmarks/soak.py                       # 10,000 requests, 8 clients, 10% malformed
    .venv/bin/python benchmarks/soak.py --requests 300 --clients 4 --model CK --reload-model CK2   # short

What it does, on loopback (127.0.0.1, a free port) only:

1. models: without ``--model``, writes a synthetic dataset (``mkmsr.data.synthetic``), prepares it and
   trains MKM-SR for one epoch (model A), and saves a second, differently seeded model B (both
   in ``--work``; well under a minute on an idle 2-core machine);
2. starts ``mkmsr serve --model A --access-log json --max-body-bytes 65536`` in a subprocess;
3. warm-up (``--warmup`` requests of the same mix), then reads the server's resident memory
   (VmRSS in /proc/PID/status) and scrapes ``/metrics`` (the baseline);
4. ``--requests`` requests from ``--clients`` closed-loop keep-alive clients (threads; each sends
   its next request when the previous one is answered), ``--malformed`` of them malformed (wrong
   types, huge k, unknown ids, truncated JSON, oversized bodies with and without a declared
   length, wrong content types, extra fields, bad UTF-8, unknown paths, wrong methods); when half
   of them have been sent, ``POST /admin/reload`` swaps in model B while traffic flows (then a
   reload of a missing checkpoint, which must be refused); ``/metrics`` is scraped every second;
5. stops at ``--requests`` or after ``--max-seconds``, whichever comes first, reads the memory
   again, scrapes ``/metrics`` and compares its request counter (per method, route and status)
   with what the clients sent and received, and counts the JSON access-log lines.

Every request has an expected answer: a well-formed one a 200 with k items (``min(k, len(
candidates))``) from the serving generation; a malformed one its 4xx (``unknown ids`` are
legal: a 200 that lists them in ``ignored_items``). Printed and written to ``--json``
(default benchmarks/out/soak.json): counts by status, the 5xx count, failed well-formed
requests, p50/p99 latency of well-formed requests, resident memory at start and end, the
reload's outcome, whether /metrics matched the clients, and the targets. Exit code 1 when a
target is missed: 0 5xx, 0 failed well-formed requests, every malformed request answered as
expected, memory growth < 10%, the reload swapped and the bad one was refused, no request
answered by the old model after the swap was answered, /metrics equal to the clients' counts,
and every request sent before the deadline.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

HOST = "127.0.0.1"  # loopback only
MAX_BODY = 65_536  # the server's --max-body-bytes here: oversized bodies stay cheap to send
MAX_K = 1000  # the server's default --max-k
MAX_BATCH = 256  # the server's default --max-batch


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

def build_models(work: Path, seed: int) -> tuple[Path, Path]:
    """Synthetic data -> prepare -> MKM-SR trained one epoch (A) and a second seed untrained (B)."""
    import torch

    from mkmsr.checkpoint import save_checkpoint
    from mkmsr.data.dataset import PreparedData
    from mkmsr.data.prepare import PrepareConfig, prepare
    from mkmsr.data.sources import ColumnMap, read_generic
    from mkmsr.data.synthetic import SyntheticConfig, write_synthetic
    from mkmsr.models import build_model
    from mkmsr.training.train import TrainConfig, train

    t0 = time.perf_counter()
    raw = write_synthetic(work / "raw", SyntheticConfig(n_sessions=2000, n_items=1500, n_cold_items=150, seed=seed))
    cols = ColumnMap(item="item_id", op="operation", time="timestamp", session="session_id")
    data = prepare(read_generic(raw / "events.csv", cols, knowledge=raw / "knowledge.csv"), work / "prepared",
                   PrepareConfig(cold_start="keep"), overwrite=True)
    run = work / "run-a"
    train(data, "mkmsr", run, TrainConfig(epochs=1, batch_size=128, seed=seed, eval_test_each_epoch=False),
          {"dim": 32}, overwrite=True, progress=False)
    pd = PreparedData(data)
    torch.manual_seed(seed + 1)
    b = save_checkpoint(work / "model-b", build_model("mkmsr", pd.spec, {"dim": 32}), "mkmsr", pd, {"epoch": 0})
    print(f"models: {pd.spec.n_items} items; A = {run / 'best'} (1 epoch), B = {b} (untrained) "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    return run / "best", Path(b)


# --------------------------------------------------------------------------------------------
# the request mix
# --------------------------------------------------------------------------------------------

@dataclass
class Req:
    kind: str                     # "recommend", "batch" (well-formed) or the malformed kind
    method: str
    path: str
    body: bytes | None
    expect: int                   # the status it must get
    well_formed: bool
    headers: dict = field(default_factory=dict)
    chunked: bool = False         # send the body with Transfer-Encoding: chunked (no length)
    n_items: list[int] | None = None  # items each answered session must hold (200s)
    ignored: list[str] | None = None  # unknown ids the answer must list

    @property
    def endpoint(self) -> str:  # the route template the server's metrics use
        return self.path if self.path in ("/recommend", "/recommend/batch", "/admin/reload", "/metrics",
                                          "/health") else "unmatched"


class Mix:
    """Draws requests: well-formed sessions over the catalogue, and each malformed kind in turn."""

    def __init__(self, items: list[str], ops: list[str], rng: random.Random):
        self.items, self.ops, self.rng = items, ops, rng
        self.malformed = itertools.cycle(self.MALFORMED)

    def events(self, n: int | None = None) -> list[dict]:
        n = n or self.rng.randint(1, 10)
        return [{"item_id": self.rng.choice(self.items), "operation": self.rng.choice(self.ops)} for _ in range(n)]

    def session(self) -> tuple[dict, int]:
        """A well-formed /recommend body and the number of items its answer must hold."""
        r, k = self.rng.random(), self.rng.randint(1, 50)
        body = {"events": self.events(), "k": k}
        if r < 0.15:
            body["exclude"] = self.rng.sample(self.items, self.rng.randint(1, 5))
        elif r < 0.25:
            body["candidates"] = self.rng.sample(self.items, self.rng.randint(2, 30))
            return body, min(k, len(body["candidates"]))
        elif r < 0.35:
            body["exclude_seen"] = True
        return body, k

    def well_formed(self) -> Req:
        if self.rng.random() < 0.8:
            body, n = self.session()
            return Req("recommend", "POST", "/recommend", json.dumps(body).encode(), 200, True,
                       {"Content-Type": "application/json"}, n_items=[n])
        sessions = [self.session() for _ in range(self.rng.randint(2, 8))]
        return Req("batch", "POST", "/recommend/batch", json.dumps({"sessions": [s for s, _ in sessions]}).encode(),
                   200, True, {"Content-Type": "application/json"}, n_items=[n for _, n in sessions])

    def bad(self) -> Req:
        return getattr(self, "_" + next(self.malformed))()

    MALFORMED = ["wrong_type_k", "wrong_type_events", "wrong_type_item_id", "huge_k", "huge_k_in_batch",
                 "unknown_ids", "truncated_json", "oversized_declared", "oversized_chunked",
                 "wrong_content_type_json", "wrong_content_type_form", "extra_field", "empty_body",
                 "too_many_sessions", "bad_utf8", "unknown_path", "wrong_method"]

    def _json(self, kind, obj, expect, path="/recommend", **kw) -> Req:
        return Req(kind, "POST", path, json.dumps(obj).encode(), expect, False,
                   {"Content-Type": "application/json"}, **kw)

    def _wrong_type_k(self):
        return self._json("wrong_type_k", {"events": self.events(), "k": self.rng.choice(["many", 2.5, [3], None])},
                          422)

    def _wrong_type_events(self):
        return self._json("wrong_type_events", {"events": self.rng.choice(["i1:click", 7, {"item_id": "x"}])}, 422)

    def _wrong_type_item_id(self):
        return self._json("wrong_type_item_id", {"events": [{"item_id": self.rng.choice([["a"], {"x": 1}, 1.5, True]),
                                                             "operation": "click"}]}, 422)

    def _huge_k(self):
        return self._json("huge_k", {"events": self.events(), "k": self.rng.choice([MAX_K + 1, 10 ** 9, 10 ** 30])},
                          422)

    def _huge_k_in_batch(self):
        s, _ = self.session()
        return self._json("huge_k_in_batch", {"sessions": [s, {"events": self.events(), "k": 10 ** 6}]}, 422,
                          path="/recommend/batch")

    def _unknown_ids(self):
        unknown = [f"no-such-item-{self.rng.randrange(10 ** 9)}" for _ in range(self.rng.randint(1, 3))]
        events = self.events() + [{"item_id": u, "operation": "click"} for u in unknown]
        self.rng.shuffle(events)
        return self._json("unknown_ids", {"events": events, "k": 10}, 200, n_items=[10], ignored=unknown)

    def _truncated_json(self):
        whole = json.dumps({"events": self.events(), "k": 5}).encode()
        return Req("truncated_json", "POST", "/recommend", whole[: self.rng.randint(1, len(whole) - 1)], 400, False,
                   {"Content-Type": "application/json"})

    def _oversized(self):
        # a valid body padded past the limit: it must be refused for its size, not its content
        body = json.dumps({"events": self.events(), "k": 5}).encode()
        return body[:-1] + b" " * self.rng.randint(MAX_BODY, 4 * MAX_BODY) + b"}"

    def _oversized_declared(self):
        return Req("oversized_declared", "POST", "/recommend", self._oversized(), 413, False,
                   {"Content-Type": "application/json"})

    def _oversized_chunked(self):
        return Req("oversized_chunked", "POST", "/recommend", self._oversized(), 413, False,
                   {"Content-Type": "application/json"}, chunked=True)

    def _wrong_content_type_json(self):  # the API reads every body as JSON, whatever the header says
        return Req("wrong_content_type_json", "POST", "/recommend",
                   json.dumps({"events": self.events(), "k": 4}).encode(), 200, False,
                   {"Content-Type": "text/plain"}, n_items=[4])

    def _wrong_content_type_form(self):
        return Req("wrong_content_type_form", "POST", "/recommend", b"events=i1&k=5", 400, False,
                   {"Content-Type": "application/x-www-form-urlencoded"})

    def _extra_field(self):
        return self._json("extra_field", {"events": self.events(), "kk": 3}, 422)

    def _empty_body(self):
        return Req("empty_body", "POST", "/recommend", b"", 422, False, {"Content-Type": "application/json"})

    def _too_many_sessions(self):
        return self._json("too_many_sessions", {"sessions": [{"events": []}] * (MAX_BATCH + 1)}, 422,
                          path="/recommend/batch")

    def _bad_utf8(self):
        return Req("bad_utf8", "POST", "/recommend", b'{"events": [{"item_id": "\xff\xfe"}]}', 400, False,
                   {"Content-Type": "application/json"})

    def _unknown_path(self):
        return self._json("unknown_path", {"events": self.events()}, 404, path=self.rng.choice(
            ["/recommendations", "/v1/recommend", "/admin"]))

    def _wrong_method(self):
        return Req("wrong_method", "GET", "/recommend", None, 405, False)


# --------------------------------------------------------------------------------------------
# the server and its clients
# --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> dict:
    """VmRSS and VmHWM (KiB) from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def send(conn: http.client.HTTPConnection, r: Req) -> tuple[int, bytes]:
    """One request on ``conn``; an oversized body the server stopped reading still gets its answer."""
    headers = dict(r.headers)
    try:
        if r.chunked:
            step = 16_384
            conn.request(r.method, r.path, body=(r.body[i:i + step] for i in range(0, len(r.body), step)),
                         headers=headers, encode_chunked=True)
        else:
            conn.request(r.method, r.path, body=r.body, headers=headers)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered (413) and closed before the whole body was sent: read the answer
    resp = conn.getresponse()
    payload = resp.read()
    if resp.will_close:
        conn.close()  # http.client opens a new connection for the next request
    return resp.status, payload


def check(r: Req, status: int, payload: bytes) -> str | None:
    """Why the answer is not the expected one, or None."""
    if status != r.expect:
        return f"status {status}, expected {r.expect}: {payload[:200]!r}"
    try:
        res = json.loads(payload) if payload else None
    except ValueError:
        return f"not JSON: {payload[:200]!r}"
    if status >= 400:
        return None if isinstance(res, dict) and (res.get("error") or res.get("detail")) else f"no error field: {res}"
    results = res["results"] if r.kind == "batch" else [res]
    if [len(x["items"]) for x in results] != r.n_items:
        return f"items per session {[len(x['items']) for x in results]}, expected {r.n_items}"
    if r.ignored is not None and sorted(res["ignored_items"]) != sorted(set(r.ignored)):
        return f"ignored_items {res['ignored_items']}, expected {r.ignored}"
    return None


@dataclass
class Record:
    kind: str
    method: str
    endpoint: str
    well_formed: bool
    status: int | None            # None: no answer (connection error)
    ms: float
    sent_at: float
    generation: int | None
    problem: str | None


def client(port: int, todo: list[Req], next_i, deadline: float, records: list, reload_at: int, halfway):
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    while time.monotonic() < deadline:
        i = next(next_i)
        if i >= len(todo):
            break
        if i == reload_at:
            halfway.set()
        r = todo[i]
        t0 = time.monotonic()
        gen = None
        try:
            status, payload = send(conn, r)
            problem = check(r, status, payload)
            if status == 200 and r.well_formed:
                gen = json.loads(payload)["model"]["generation"]
        except (OSError, http.client.HTTPException) as exc:
            status, problem = None, f"no answer: {type(exc).__name__}: {exc}"
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
        records.append(Record(r.kind, r.method, r.endpoint, r.well_formed, status, (time.monotonic() - t0) * 1e3,
                              t0, gen, problem))
    conn.close()


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    c = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        text = r.read().decode()
    finally:
        c.close()
    if r.status != 200:
        raise RuntimeError(f"/metrics answered {r.status}")
    out = {"requests": Counter(), "generation": None, "queue_depth": None, "rss": None, "batch_count": 0.0,
           "batch_sum": 0.0, "reloads": Counter()}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "mkmsr_http_requests_total":
                out["requests"][(s.labels["method"], s.labels["endpoint"], int(s.labels["status"]))] += s.value
            elif s.name == "mkmsr_model_generation":
                out["generation"] = s.value
            elif s.name == "mkmsr_inference_queue_depth":
                out["queue_depth"] = s.value
            elif s.name == "process_resident_memory_bytes":
                out["rss"] = s.value
            elif s.name == "mkmsr_inference_batch_sessions_count":
                out["batch_count"] = s.value
            elif s.name == "mkmsr_inference_batch_sessions_sum":
                out["batch_sum"] = s.value
            elif s.name == "mkmsr_model_reloads_total":
                out["reloads"][(s.labels["outcome"], s.labels["trigger"])] += s.value
    return out


def post_json(port: int, path: str, obj) -> tuple[int, dict]:
    c = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        c.request("POST", path, body=json.dumps(obj).encode(), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def pct(ms: list[float]) -> dict | None:
    if not ms:
        return None
    x = np.asarray(ms)
    return {"p50": round(float(np.percentile(x, 50)), 3), "p90": round(float(np.percentile(x, 90)), 3),
            "p99": round(float(np.percentile(x, 99)), 3), "max": round(float(x.max()), 3), "n": int(x.size)}


def soak(model_a: Path, model_b: Path, work: Path, requests: int, clients: int, malformed: float, warmup: int,
         max_seconds: float, seed: int, server_threads: int) -> dict:
    import polars as pl

    from mkmsr.checkpoint import resolve_checkpoint

    ck = resolve_checkpoint(model_a)
    items = pl.read_parquet(ck / "items.parquet")["item_id"].to_list()
    ops = pl.read_parquet(ck / "operations.parquet")["op"].to_list()
    rng = random.Random(seed)
    mix = Mix(items, ops, rng)

    def plan(n):
        return [mix.bad() if rng.random() < malformed else mix.well_formed() for _ in range(n)]

    warm, todo = plan(warmup), plan(requests)
    load_start = os.getloadavg()  # the machine may be shared: say how busy it was
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "server.log"
    access_path = work / "access.jsonl"
    with open(log_path, "w") as err, open(access_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mkmsr", "serve", "--model", str(model_a), "--host", HOST,
                                 "--port", str(port), "--threads", str(server_threads), "--access-log", "json",
                                 "--max-body-bytes", str(MAX_BODY)],
                                stdout=out, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        t_start = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {log_path.read_text()[-3000:]}")
            try:
                c = http.client.HTTPConnection(HOST, port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() - t_start > 180:
                    raise RuntimeError(f"server not up in 180 s: {log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            finally:
                c.close()
        print(f"server pid {proc.pid} on {HOST}:{port}, up in {time.monotonic() - t_start:.1f} s; warm-up: "
              f"{len(warm)} requests", flush=True)
        # warm-up: the same mix, not reported (allocator pools, lazy imports, first batches)
        wrec: list[Record] = []
        warm_i = itertools.count()  # one counter shared by the clients: each request is sent once
        ws = [threading.Thread(target=client, args=(port, warm, warm_i, time.monotonic() + max_seconds,
                                                    wrec, -1, threading.Event())) for _ in range(clients)]
        for t in ws:
            t.start()
        for t in ws:
            t.join()
        time.sleep(0.5)
        rss_start = rss_kib(proc.pid)
        base = scrape(port)

        records: list[Record] = []
        next_i = itertools.count()
        halfway, done = threading.Event(), threading.Event()
        scrapes: list[dict] = []
        reload_info: dict = {}
        rss_peak = [rss_start["VmRSS"]]

        def scraper():
            while not done.wait(1.0):
                s = scrape(port)
                scrapes.append({"t": time.monotonic() - t0, "generation": s["generation"],
                                "queue_depth": s["queue_depth"], "requests": sum(s["requests"].values())})
                rss_peak[0] = max(rss_peak[0], rss_kib(proc.pid)["VmRSS"])

        def reloader():
            halfway.wait()
            if done.is_set():
                return
            reload_info["sent_at"] = time.monotonic()
            reload_info["sent_after_requests"] = len(records)
            st, res = post_json(port, "/admin/reload", {"model": str(model_b)})
            reload_info["answered_at"] = time.monotonic()
            reload_info.update(status=st, response=res, seconds=round(reload_info["answered_at"]
                                                                        - reload_info["sent_at"], 3))
            st2, res2 = post_json(port, "/admin/reload", {"model": str(work / "no-such-checkpoint")})
            reload_info["bad"] = {"status": st2, "error": res2.get("error")}

        deadline = time.monotonic() + max_seconds
        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(port, todo, next_i, deadline, records, requests // 2, halfway))
                   for _ in range(clients)]
        aux = [threading.Thread(target=scraper), threading.Thread(target=reloader)]
        for t in aux + threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        done.set()
        halfway.set()
        for t in aux:
            t.join()
        time.sleep(0.5)
        rss_end = rss_kib(proc.pid)
        final = scrape(port)
        time.sleep(0.5)
        access_lines = sum(1 for line in open(access_path) if line.startswith("{"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    # ---- what the clients saw
    by_status = Counter(str(r.status) for r in records)
    fivexx = sum(1 for r in records if r.status is not None and r.status >= 500)
    wf = [r for r in records if r.well_formed]
    bad = [r for r in records if not r.well_formed]
    failed_wf = [r for r in wf if r.problem]
    unexpected_bad = [r for r in bad if r.problem]
    new_gen = (reload_info.get("response") or {}).get("generation")
    stale = [r for r in wf if new_gen and r.generation is not None and r.generation < new_gen
             and r.sent_at > reload_info["answered_at"]]
    # ---- /metrics against the clients: every request of the measured phase, plus the scrapes and reloads
    sent = Counter((r.method, r.endpoint, r.status) for r in records if r.status is not None)
    sent[("GET", "/metrics", 200)] += 1 + len(scrapes)  # the baseline scrape and those during the run
    if "status" in reload_info:
        sent[("POST", "/admin/reload", reload_info["status"])] += 1
        sent[("POST", "/admin/reload", reload_info["bad"]["status"])] += 1
    delta = final["requests"] - base["requests"]
    keys = sorted(set(sent) | set(delta), key=str)
    mismatch = {f"{m} {e} {s}": {"clients": sent.get((m, e, s), 0), "metrics": delta.get((m, e, s), 0)}
                for m, e, s in keys if sent.get((m, e, s), 0) != delta.get((m, e, s), 0)}
    metrics_counts = {f"{m} {e} {s}": int(delta.get((m, e, s), 0)) for m, e, s in keys}
    growth = (rss_end["VmRSS"] - rss_start["VmRSS"]) / rss_start["VmRSS"] * 100
    total_requests_in_metrics = sum(final["requests"].values()) + 1  # + the final scrape, logged after its answer
    result = {
        "requests_planned": requests, "requests_sent": len(records), "clients": clients,
        "malformed_share_planned": malformed, "well_formed": len(wf), "malformed": len(bad),
        "malformed_by_kind": dict(sorted(Counter(r.kind for r in bad).items())),
        "wall_s": round(wall, 2), "requests_per_s": round(len(records) / wall, 1),
        "by_status": dict(sorted(by_status.items())), "5xx": fivexx,
        "no_answer": sum(r.status is None for r in records),
        "failed_well_formed": len(failed_wf), "failed_well_formed_examples": [r.problem for r in failed_wf[:5]],
        "malformed_unexpected": len(unexpected_bad),
        "malformed_unexpected_examples": [f"{r.kind}: {r.problem}" for r in unexpected_bad[:5]],
        "latency_ms": {"well_formed": pct([r.ms for r in wf]),
                       "recommend": pct([r.ms for r in wf if r.kind == "recommend"]),
                       "batch": pct([r.ms for r in wf if r.kind == "batch"]),
                       "malformed": pct([r.ms for r in bad])},
        "rss_kib": {"start": rss_start["VmRSS"], "end": rss_end["VmRSS"], "peak_sampled": rss_peak[0],
                    "hwm_end": rss_end["VmHWM"], "growth_pct": round(growth, 2),
                    "metrics_process_resident_end": int(final["rss"] / 1024) if final["rss"] else None},
        "reload": {k: v for k, v in reload_info.items() if k not in ("sent_at", "answered_at")},
        "answered_by_generation": dict(sorted(Counter(str(r.generation) for r in wf if r.generation).items())),
        "stale_after_reload": len(stale),
        "metrics": {"scrapes_during": len(scrapes), "generation_end": final["generation"],
                    "reloads": {f"{o}/{t}": v for (o, t), v in sorted((final["reloads"] - base["reloads"]).items())},
                    "batches": final["batch_count"] - base["batch_count"],
                    "mean_batch_sessions": round((final["batch_sum"] - base["batch_sum"])
                                                 / max(1.0, final["batch_count"] - base["batch_count"]), 2),
                    "max_queue_depth_scraped": max((s["queue_depth"] for s in scrapes), default=None),
                    "requests_delta_by_method_endpoint_status": metrics_counts,
                    "mismatch_with_clients": mismatch},
        "access_log_lines": access_lines, "requests_counted_in_metrics": int(total_requests_in_metrics),
        "server": {"threads": server_threads, "max_body_bytes": MAX_BODY, "model_a": str(model_a),
                   "model_b": str(model_b), "load_average_start": load_start,
                   "load_average_end": os.getloadavg()},
    }
    result["targets"] = {
        "no_5xx": fivexx == 0,
        "no_failed_well_formed": not failed_wf,
        "malformed_answered_as_expected": not unexpected_bad,
        "rss_growth_under_10pct": growth < 10,
        "reload_swapped": reload_info.get("status") == 200 and final["generation"] == new_gen,
        "bad_reload_refused": (reload_info.get("bad") or {}).get("status") == 422,
        "no_stale_answers_after_reload": not stale,
        "metrics_match_clients": not mismatch,
        "access_log_line_per_request": access_lines == total_requests_in_metrics,
        "all_requests_sent": len(records) == requests,
    }
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "soak"), help="models and server logs")
    p.add_argument("--model", help="checkpoint to serve (default: build one in --work)")
    p.add_argument("--reload-model", help="checkpoint swapped in mid-way (needed with --model)")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--malformed", type=float, default=0.10, help="share of malformed requests (default 0.10)")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this long (default 300)")
    p.add_argument("--server-threads", type=int, default=1, help="the server's torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "soak.json"))
    a = p.parse_args(argv)
    if not 0 <= a.malformed <= 1 or a.requests < 2 or a.clients < 1:
        p.error("--malformed must be in [0, 1], --requests >= 2, --clients >= 1")
    if bool(a.model) != bool(a.reload_model):
        p.error("--model and --reload-model go together")
    work = Path(a.work)
    if a.model:
        model_a, model_b = Path(a.model), Path(a.reload_model)
    else:
        model_a, model_b = build_models(work, a.seed)
    res = soak(model_a, model_b, work, a.requests, a.clients, a.malformed, a.warmup, a.max_seconds, a.seed,
               a.server_threads)
    res["command"] = " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv)))
    from mkmsr.fsutil import write_json

    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    write_json(a.json, res)
    lw, rss = res["latency_ms"]["well_formed"] or {}, res["rss_kib"]
    print(f"{res['requests_sent']} requests ({res['malformed']} malformed) from {a.clients} clients in "
          f"{res['wall_s']} s ({res['requests_per_s']} req/s)")
    print(f"by status: {res['by_status']}; 5xx: {res['5xx']}; failed well-formed: {res['failed_well_formed']}; "
          f"malformed answered unexpectedly: {res['malformed_unexpected']}")
    print(f"well-formed latency: p50 {lw.get('p50')} ms, p99 {lw.get('p99')} ms (n = {lw.get('n')})")
    print(f"server RSS: {rss['start'] / 1024:.1f} MiB after warm-up -> {rss['end'] / 1024:.1f} MiB at the end "
          f"({rss['growth_pct']:+.2f}%), peak sampled {rss['peak_sampled'] / 1024:.1f} MiB")
    rl = res["reload"]
    print(f"reload after {rl.get('sent_after_requests')} requests: {rl.get('status')} in {rl.get('seconds')} s "
          f"-> generation {(rl.get('response') or {}).get('generation')}; bad checkpoint: "
          f"{(rl.get('bad') or {}).get('status')}; answered by generation {res['answered_by_generation']}")
    print(f"/metrics: {res['metrics']['scrapes_during']} scrapes during the run; request counts "
          f"{'equal' if not res['metrics']['mismatch_with_clients'] else 'DIFFER from'} the clients' "
          f"({len(res['metrics']['requests_delta_by_method_endpoint_status'])} method/route/status series)")
    missed = [k for k, ok in res["targets"].items() if not ok]
    print("targets: " + ("all met" if not missed else "MISSED " + ", ".join(missed)) + f"; written to {a.json}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
