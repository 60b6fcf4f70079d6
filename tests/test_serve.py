"""The HTTP server, for real: ``mkmsr serve`` in a subprocess on a free loopback port, spoken
to over HTTP. Happy path, every kind of malformed request, unknown and cold-start items,
hot swap under concurrent requests with zero failures, bad checkpoints refused, SIGHUP."""
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import polars as pl
import pytest
import torch

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (scripts/setup.sh installs it)")
pytest.importorskip("uvicorn", reason="the server needs the 'serve' extra (scripts/setup.sh installs it)")

from mkmsr.checkpoint import save_checkpoint  # noqa: E402
from mkmsr.data.dataset import PreparedData  # noqa: E402
from mkmsr.models import build_model  # noqa: E402
from mkmsr.serving.recommend import Recommender  # noqa: E402

from .checkpoints import trained_run, untrained_checkpoint  # noqa: E402

TOKEN = "s3cret"
LIMITS = {"max_k": 50, "max_events": 30, "max_batch": 8, "max_body_bytes": 20_000}
HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, log_path):
        self.port = free_port()
        self.log = open(log_path, "w")
        args = [sys.executable, "-m", "mkmsr", "serve", "--model", str(model), "--host", HOST,
                "--port", str(self.port), "--admin-token", TOKEN, "--threads", "1", "--access-log", "json"]
        for k, v in LIMITS.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.log_path = log_path

    def wait_ready(self, timeout=120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}): {open(self.log_path).read()}")
            try:
                if call(self.port, "GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout}s: {open(self.log_path).read()}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def call(port, method, path, body=None, raw=None, headers=None, conn=None):
    """One request; returns (status, parsed JSON body)."""
    c = conn or http.client.HTTPConnection(HOST, port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json", **(headers or {})}
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    payload = r.read()
    if conn is None:
        c.close()
    return r.status, (json.loads(payload) if payload else None)


def admin(port, body=None, token=TOKEN):
    return call(port, "POST", "/admin/reload", body, headers={"X-Admin-Token": token} if token else {})


@pytest.fixture(scope="module")
def world(synthetic_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    run_a = trained_run(synthetic_data, d / "run-a", seed=0)
    ck_b = untrained_checkpoint(synthetic_data, d / "ck-b", seed=7)
    served = d / "served"  # the path SIGHUP reloads; starts as a copy of A
    shutil.copytree(run_a / "best", served)
    server = Server(served, d / "server.log")
    try:
        server.wait_ready()
        yield {"port": server.port, "server": server, "a": run_a / "best", "b": ck_b, "served": served,
               "rec_a": Recommender.load(run_a), "rec_b": Recommender.load(ck_b), "data": synthetic_data,
               "items": pl.read_parquet(ck_b / "items.parquet"), "dir": d}
    finally:
        server.stop()


def ids(res):
    return [i["item_id"] for i in res["items"]]


def body(events, **kw):
    return {"events": [{"item_id": i, "operation": o} for i, o in events], **kw}


def test_health_model_and_openapi(world):
    st, h = call(world["port"], "GET", "/health")
    assert st == 200 and h["status"] == "ok" and h["model"] == "mkmsr" and h["generation"] >= 1
    st, m = call(world["port"], "GET", "/model")
    assert st == 200 and m["model"] == "mkmsr" and m["config"]["dim"] == 16
    assert m["dataset"]["manifest"]["counts"]["items"] == world["rec_a"].n_items
    assert m["metrics"]["valid_at_checkpoint"]["mrr@20"] > 0
    assert m["limits"]["max_k"] == LIMITS["max_k"] and m["limits"]["admin_token"] is None
    st, api = call(world["port"], "GET", "/openapi.json")
    assert st == 200 and {"/recommend", "/recommend/batch", "/health", "/model", "/admin/reload"} <= set(api["paths"])
    k = api["components"]["schemas"]["RecommendIn"]["properties"]["k"]
    assert k["maximum"] == LIMITS["max_k"] and k["minimum"] == 1


def test_recommend_matches_the_library(world):
    rec = world["rec_a"]
    items = world["items"]
    cold = items.filter(pl.col("train_count") == 0)["item_id"].to_list()
    warm = items.filter(pl.col("train_count") > 0)["item_id"].to_list()
    sessions = [[(warm[0], "click")], [(warm[3], "cart"), (warm[1], "click"), (warm[2], "order")],
                [(warm[5], "click"), (cold[0], "favorite")]]  # a cold-start item as input
    st, h = call(world["port"], "GET", "/health")
    for s in sessions:
        st, res = call(world["port"], "POST", "/recommend", body(s, k=7))
        assert st == 200, res
        assert res["model"] == {"name": "mkmsr", "generation": h["generation"]}
        assert ids(res) == [i for i, _ in rec.recommend(s, k=7).items]
        assert res["ignored_items"] == [] and res["fallback"] is None
    # cold-start items as outputs: recommend among new items only
    st, res = call(world["port"], "POST", "/recommend", body(sessions[0], k=5, candidates=cold + ["never"]))
    assert st == 200 and len(res["items"]) == 5 and all(rec.is_cold(i) for i in ids(res))
    assert res["ignored_candidates"] == ["never"]
    # unknown items and operations are reported, never an error; integer ids are accepted
    st, res = call(world["port"], "POST", "/recommend",
                   {"events": [{"item_id": warm[0], "operation": "click"}, {"item_id": 123456789, "operation": "click"},
                               {"item_id": warm[1], "operation": "levitate"}], "k": 3})
    assert st == 200 and res["ignored_items"] == ["123456789"] and res["ignored_operations"] == ["levitate"]
    # nothing usable left: popularity, and the response says so
    st, res = call(world["port"], "POST", "/recommend", body([("ghost", "click")], k=4, exclude=[warm[0]]))
    assert st == 200 and res["fallback"] == "popularity" and len(res["items"]) == 4 and warm[0] not in ids(res)
    st, res = call(world["port"], "POST", "/recommend", {"events": []})
    assert st == 200 and res["fallback"] == "popularity" and len(res["items"]) == 20


def test_batch(world):
    rec = world["rec_a"]
    warm = world["items"]["item_id"].to_list()
    sessions = [body([(warm[i], "click"), (warm[i + 1], "cart")], k=3 + i) for i in range(5)] + [body([("x", "y")])]
    st, res = call(world["port"], "POST", "/recommend/batch", {"sessions": sessions})
    assert st == 200 and len(res["results"]) == 6
    for i in range(5):
        assert ids(res["results"][i]) == [x for x, _ in rec.recommend([(warm[i], "click"), (warm[i + 1], "cart")], 3 + i).items]
    assert res["results"][5]["fallback"] == "popularity"


GOOD = {"events": [{"item_id": "i1", "operation": "click"}]}


@pytest.mark.parametrize("path,payload,status,names", [
    ("/recommend", b'{"events": [', 400, "not valid JSON"),
    ("/recommend", b"", 422, "body: Field required"),
    ("/recommend", b"[]", 422, "body:"),
    ("/recommend", {"k": 3}, 422, "events: Field required"),
    ("/recommend", {"events": "i1:click"}, 422, "events:"),
    ("/recommend", {"events": [{"operation": "click"}]}, 422, "events[0].item_id: Field required"),
    ("/recommend", {"events": [{"item_id": ["a"]}]}, 422, "events[0].item_id"),
    ("/recommend", {"events": [{"item_id": ""}]}, 422, "events[0].item_id"),
    ("/recommend", {"events": [{"item_id": "i1", "op": "click"}]}, 422, "events[0].op: Extra inputs"),
    ("/recommend", {**GOOD, "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("/recommend", {**GOOD, "k": LIMITS["max_k"] + 1}, 422, f"k: Input should be less than or equal to {LIMITS['max_k']}"),
    ("/recommend", {**GOOD, "k": "many"}, 422, "k: Input should be a valid integer"),
    ("/recommend", {"events": [{"item_id": "i1"}] * (LIMITS["max_events"] + 1)}, 422, "events: List should have at most"),
    ("/recommend", {**GOOD, "candidates": "i1"}, 422, "candidates: Input should be a valid list"),
    ("/recommend", {**GOOD, "exclude_seen": "perhaps"}, 422, "exclude_seen"),
    ("/recommend", {**GOOD, "kk": 3}, 422, "kk: Extra inputs are not permitted"),
    ("/recommend/batch", {"sessions": []}, 422, "sessions: List should have at least 1"),
    ("/recommend/batch", {"sessions": [GOOD] * (LIMITS["max_batch"] + 1)}, 422, "sessions: List should have at most"),
    ("/recommend/batch", {"sessions": [GOOD, {"events": [{}]}]}, 422, "sessions[1].events[0].item_id: Field required"),
    ("/recommend", b'{"events": [], "candidates": ["' + b"x" * 30_000 + b'"]}', 413, "body: request body over"),
])
def test_malformed_requests_get_4xx_naming_the_field(world, path, payload, status, names):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    st, res = call(world["port"], "POST", path, raw=raw)
    assert st == status, res
    assert names in res["error"], res["error"]
    assert call(world["port"], "POST", "/recommend", GOOD)[0] == 200  # the server is fine afterwards


def test_json_without_content_type_header_is_read(world):
    c = http.client.HTTPConnection(HOST, world["port"], timeout=30)
    c.request("POST", "/recommend", body=json.dumps(GOOD), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert c.getresponse().status == 200
    c.close()


def test_admin_needs_the_token(world):
    st, res = admin(world["port"], token=None)
    assert st == 403 and "x-admin-token" in res["error"]
    assert admin(world["port"], token="wrong")[0] == 403


def expected_top(rec, session, k=5):
    return [i for i, _ in rec.recommend(session, k=k).items]


def test_hot_swap_under_concurrent_requests_has_zero_failures(world):
    port = world["port"]
    items = world["items"]["item_id"].to_list()
    session = [(items[3], "click"), (items[10], "cart"), (items[20], "click")]
    want = {"a": expected_top(world["rec_a"], session), "b": expected_top(world["rec_b"], session)}
    assert want["a"] != want["b"]
    st, res = admin(port, {"model": str(world["a"])})
    assert st == 200
    gen_model = {res["generation"]: "a"}
    payload = json.dumps(body(session, k=5)).encode()
    stop = threading.Event()
    deadline = time.monotonic() + 60  # bounded in time ...
    results: list = []  # (status, body, sent at, answered at)
    swaps: list = []  # (reload sent at, reload answered at)

    def hammer():
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        for _ in range(3000):  # ... and in count
            if stop.is_set() or time.monotonic() > deadline:
                break
            t0 = time.monotonic()
            try:
                results.append((*call(port, "POST", "/recommend", raw=payload, conn=conn), t0, time.monotonic()))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                results.append((None, repr(exc), t0, time.monotonic()))
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
        conn.close()

    def wait_for(n):
        t = time.monotonic() + 20
        while len(results) < n and time.monotonic() < t:
            time.sleep(0.02)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(20)
        for name in ("b", "a", "b", "a", "b", "a"):
            before = len(results)
            t0 = time.monotonic()
            st, res = admin(port, {"model": str(world[name])})
            swaps.append((t0, time.monotonic()))
            assert st == 200, res
            gen_model[res["generation"]] = name
            wait_for(before + 40)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failures = [r for r in results if r[0] != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests failed during the swaps: {failures[:3]}"
    during = sum(any(r[2] < s1 and r[3] > s0 for s0, s1 in swaps) for r in results)
    assert during > 0, "no request was in flight during a reload"
    seen = {}
    for _, res, _, _ in results:
        name = gen_model.get(res["model"]["generation"])
        if name is None:
            continue  # answered by the generation before the first reload of this test
        seen[name] = seen.get(name, 0) + 1
        assert ids(res) == want[name], f"generation {res['model']['generation']} ({name}) answered {ids(res)}"
    assert seen.get("a", 0) > 0 and seen.get("b", 0) > 0, seen
    assert len(results) >= 100
    print(f"hot swap: {len(results)} requests, {during} in flight during a reload, answered per model {seen}")


def corrupt_copies(world):
    d = world["dir"]
    out = {}
    p = d / "truncated"
    shutil.copytree(world["b"], p, dirs_exist_ok=True)
    raw = (p / "model.pt").read_bytes()
    (p / "model.pt").write_bytes(raw[: len(raw) // 2])
    out["truncated model.pt"] = p
    p = d / "nan"
    shutil.copytree(world["b"], p, dirs_exist_ok=True)
    state = torch.load(p / "model.pt", weights_only=True)
    state["item_embedding.weight"][3] = float("nan")
    torch.save(state, p / "model.pt")
    out["NaN weights"] = p
    p = d / "garbage-json"
    shutil.copytree(world["b"], p, dirs_exist_ok=True)
    (p / "model.json").write_text("{not json")
    out["garbage model.json"] = p
    p = d / "wrong-shape"
    shutil.copytree(world["b"], p, dirs_exist_ok=True)
    meta = json.loads((p / "model.json").read_text())
    meta["config"]["dim"] = 8
    (p / "model.json").write_text(json.dumps(meta))
    out["weights of another shape"] = p
    out["missing directory"] = d / "does-not-exist"
    return out


def test_bad_checkpoint_is_refused_and_the_old_model_keeps_serving(world):
    port = world["port"]
    st, res = admin(port, {"model": str(world["a"])})
    assert st == 200
    gen = res["generation"]
    session = [(world["items"]["item_id"][4], "click")]
    want = expected_top(world["rec_a"], session)
    for what, path in corrupt_copies(world).items():
        st, res = admin(port, {"model": str(path)})
        assert st == 422, (what, res)
        assert "checkpoint refused" in res["error"] and f"still serving generation {gen}" in res["error"], what
        st, h = call(port, "GET", "/health")
        assert h["generation"] == gen and h["checkpoint"] == str(world["a"].resolve())
        st, res = call(port, "POST", "/recommend", body(session, k=5))
        assert st == 200 and ids(res) == want and res["model"]["generation"] == gen


def test_sighup_reloads_the_current_path(world):
    port, served = world["port"], world["served"]
    st, res = admin(port, {"model": str(served)})
    assert st == 200
    gen = res["generation"]
    session = [(world["items"]["item_id"][6], "cart")]
    # a new model lands at the served path (atomically, as training writes best/)
    pd = PreparedData(world["data"])
    torch.manual_seed(7)
    save_checkpoint(served, build_model("mkmsr", pd.spec, {"dim": 16}), "mkmsr", pd)
    world["server"].proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while call(port, "GET", "/health")[1]["generation"] == gen and time.monotonic() < deadline:
        time.sleep(0.1)
    assert call(port, "GET", "/health")[1]["generation"] == gen + 1
    st, res = call(port, "POST", "/recommend", body(session, k=5))
    assert st == 200 and ids(res) == expected_top(world["rec_b"], session)
    assert world["server"].proc.poll() is None  # SIGHUP did not stop the server
    assert scrape(port)[("mkmsr_model_reloads_total", (("outcome", "ok"), ("trigger", "sighup")))] == 1


# --------------------------------------------------------------------------------------------
# observability: GET /metrics, the JSON access log, the body-size limit
# --------------------------------------------------------------------------------------------

def scrape(port) -> dict:
    """/metrics parsed with prometheus_client's own parser: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    c = http.client.HTTPConnection(HOST, port, timeout=30)
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    assert r.status == 200 and r.getheader("content-type").startswith("text/plain; version=")  # the text format
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def requests_by(samples, endpoint, status, method="POST") -> float:
    key = ("mkmsr_http_requests_total", (("endpoint", endpoint), ("method", method), ("status", str(status))))
    return samples.get(key, 0.0)


def test_metrics_count_every_request_by_route_and_status(world):
    port = world["port"]
    before = scrape(port)
    sent = {("/recommend", 200, "POST"): 2, ("/recommend", 422, "POST"): 3, ("/recommend", 400, "POST"): 2,
            ("/recommend", 413, "POST"): 1, ("/recommend/batch", 200, "POST"): 1, ("/recommend", 405, "GET"): 1,
            ("unmatched", 404, "GET"): 2}
    for _ in range(2):
        assert call(port, "POST", "/recommend", GOOD)[0] == 200
    for _ in range(3):
        assert call(port, "POST", "/recommend", {**GOOD, "k": 0})[0] == 422
    for _ in range(2):
        assert call(port, "POST", "/recommend", raw=b'{"events": [')[0] == 400
    assert call(port, "POST", "/recommend", raw=b"[" + b" " * LIMITS["max_body_bytes"] + b"]")[0] == 413
    assert call(port, "POST", "/recommend/batch", {"sessions": [GOOD, GOOD, GOOD]})[0] == 200
    assert call(port, "GET", "/recommend")[0] == 405
    assert call(port, "GET", "/no/such/path")[0] == 404
    assert call(port, "GET", "/recommendations/42")[0] == 404
    after = scrape(port)
    for (endpoint, status, method), n in sent.items():
        assert requests_by(after, endpoint, status, method) - requests_by(before, endpoint, status, method) == n, \
            (endpoint, status, method)
    # no raw path becomes a label: unknown paths are all 'unmatched'
    assert not any(dict(labels).get("endpoint", "").startswith(("/no", "/recommendations"))
                   for _, labels in after)
    # latency: one observation per request, cumulative buckets ending in +Inf == count
    lat = "mkmsr_http_request_duration_seconds"
    rec = (("endpoint", "/recommend"),)
    n_rec = sum(n for (e, _, _), n in sent.items() if e == "/recommend")
    assert after[(f"{lat}_count", rec)] - before.get((f"{lat}_count", rec), 0) == n_rec
    buckets = sorted((float(dict(lb)["le"]), v) for (name, lb), v in after.items()
                     if name == f"{lat}_bucket" and dict(lb)["endpoint"] == "/recommend")
    assert [b for b, _ in buckets][-1] == float("inf") and buckets[-1][1] == after[(f"{lat}_count", rec)]
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    # the encoder saw the batch request's 3 sessions in a pass of >= 3 sessions
    bs = "mkmsr_inference_batch_sessions"
    assert after[(f"{bs}_count", ())] - before[(f"{bs}_count", ())] >= 1
    assert after[(f"{bs}_sum", ())] - before[(f"{bs}_sum", ())] == 2 + 3  # 2 single requests + one batch of 3
    assert after[("mkmsr_inference_queue_depth", ())] >= 0 and after[("mkmsr_http_requests_in_flight", ())] >= 1
    assert after[("process_resident_memory_bytes", ())] > 10 * 2 ** 20


def test_metrics_follow_the_model_generation_and_reloads(world):
    port = world["port"]
    before = scrape(port)
    gen = call(port, "GET", "/health")[1]["generation"]
    assert before[("mkmsr_model_generation", ())] == gen
    ok = ("mkmsr_model_reloads_total", (("outcome", "ok"), ("trigger", "http")))
    refused = ("mkmsr_model_reloads_total", (("outcome", "refused"), ("trigger", "http")))
    assert admin(port, {"model": str(world["a"])})[0] == 200
    assert admin(port, {"model": str(world["dir"] / "no-such-checkpoint")})[0] == 422
    assert admin(port, token="wrong")[0] == 403  # not a reload attempt
    after = scrape(port)
    assert after[("mkmsr_model_generation", ())] == gen + 1
    assert after[ok] - before[ok] == 1 and after[refused] - before[refused] == 1
    assert requests_by(after, "/admin/reload", 403) - requests_by(before, "/admin/reload", 403) == 1


def access_lines(world, n=1, timeout=10.0, **match) -> list[dict]:
    """The server's JSON access-log lines whose fields equal ``match`` (waits for ``n`` of them)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = []
        for line in open(world["server"].log_path, encoding="utf-8"):
            if line.startswith("{"):
                rec = json.loads(line)
                if all(rec.get(k) == v for k, v in match.items()):
                    lines.append(rec)
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_access_log_is_one_json_line_per_request(world):
    port = world["port"]
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.connect()
    client = f"{HOST}:{conn.sock.getsockname()[1]}"
    good = json.dumps(body([(world["items"]["item_id"][4], "click")], k=7)).encode()
    assert call(port, "POST", "/recommend", raw=good, conn=conn)[0] == 200
    assert call(port, "POST", "/recommend", {**GOOD, "k": 0}, conn=conn)[0] == 422
    assert call(port, "POST", "/recommend/batch", {"sessions": [GOOD, {**GOOD, "k": 3}]}, conn=conn)[0] == 200
    assert call(port, "GET", "/probe-access-log", conn=conn)[0] == 404
    conn.close()
    lines = access_lines(world, n=4, client=client)
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/recommend", 200), ("POST", "/recommend", 422), ("POST", "/recommend/batch", 200),
        ("GET", "/probe-access-log", 404)]
    ok, bad, batch, missing = lines
    assert ok["n_items"] == 7 and "error" not in ok and ok["request_bytes"] == len(good)
    assert ok["generation"] == call(port, "GET", "/health")[1]["generation"] and ok["response_bytes"] > 0
    assert ok["duration_ms"] > 0 and ok["time"].endswith("Z") and ok["endpoint"] == "/recommend"
    assert "k: Input should be greater than or equal to 1" in bad["error"] and "n_items" not in bad
    assert batch["n_items"] == 20 + 3 and batch["n_sessions"] == 2
    assert missing["error"] == "Not Found" and missing["endpoint"] == "unmatched"
    # uvicorn's own access line is off in JSON mode
    assert '"POST /recommend HTTP/1.1"' not in open(world["server"].log_path, encoding="utf-8").read()


def raw_exchange(port, head: bytes, chunks=(), timeout=10.0) -> tuple[int, dict, bytes, bool]:
    """Send ``head`` then ``chunks`` on a bare socket (ignoring a peer that stops reading);
    return (status, headers, body, closed by the server)."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s.sendall(head)
        for c in chunks:
            try:
                s.sendall(c)
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head_end = data.index(b"\r\n\r\n")
        lines = data[:head_end].decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        payload = data[head_end + 4:]
        while len(payload) < int(headers["content-length"]):
            payload += s.recv(65536)
        try:
            closed = s.recv(1) == b""
        except ConnectionResetError:
            closed = True
        return int(lines[0].split()[1]), headers, payload, closed
    finally:
        s.close()


def test_body_limit_refuses_a_declared_oversized_body_without_reading_it(world):
    # a client declares 1 GB and sends nothing: the answer comes at once and the connection closes
    t0 = time.monotonic()
    status, headers, payload, closed = raw_exchange(
        world["port"], b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 1000000000\r\n\r\n")
    assert status == 413 and headers["connection"] == "close" and closed
    assert time.monotonic() - t0 < 5
    err = json.loads(payload)["error"]
    assert f"over {LIMITS['max_body_bytes']} bytes" in err and "1000000000 bytes declared" in err
    assert access_lines(world, status=413, request_bytes=1_000_000_000)


def test_body_limit_stops_a_chunked_body_at_the_limit(world):
    chunk = b"x" * 8192
    frames = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 64  # 512 KB offered, 20 KB allowed
    status, headers, payload, closed = raw_exchange(
        world["port"], b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n", frames)
    assert status == 413 and headers["connection"] == "close" and closed
    assert "raise --max-body-bytes" in json.loads(payload)["error"]
    # exactly at the limit is read (and judged on its JSON)
    padded = json.dumps(GOOD).encode()
    padded = padded[:-1] + b" " * (LIMITS["max_body_bytes"] - len(padded)) + b"}"
    assert len(padded) == LIMITS["max_body_bytes"]
    assert call(world["port"], "POST", "/recommend", raw=padded)[0] == 200


def test_two_apps_in_one_process_have_their_own_metrics(world):
    from mkmsr.serving.serve import ModelHolder, create_app

    holder = ModelHolder(world["b"])
    a, b = create_app(holder), create_app(holder, access_log="json")  # no duplicate-timeseries error
    assert a.metrics.registry is not b.metrics.registry
    a.metrics.requests.labels("GET", "/health", "200").inc()
    assert b"/health" in a.metrics.exposition()[0] and b'endpoint="/health"' not in b.metrics.exposition()[0]


def test_access_log_flag():
    from mkmsr.cli import build_parser

    def parsed(*extra):
        return build_parser().parse_args(["serve", "--model", "m", *extra]).access_log

    assert parsed() is None and parsed("--access-log") == "text" and parsed("--access-log", "json") == "json"
    assert parsed("--access-log", "--port", "9") == "text"
    with pytest.raises(SystemExit):
        parsed("--access-log", "yaml")


def test_observe_counts_crashes_and_abandoned_requests():
    """Observe on bare ASGI apps: an exception before the answer is a 500, no answer at all a 499."""
    import asyncio

    from starlette.routing import Route

    from mkmsr.serving.serve_observe import UNMATCHED, Observe, ServerMetrics

    async def crash(scope, receive, send):
        raise RuntimeError("boom")

    async def gone(scope, receive, send):
        await receive()  # the client disconnected; nothing is sent

    def scope(path):
        return {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": [], "query_string": b""}

    async def receive():
        return {"type": "http.disconnect"}

    async def send(msg):
        raise AssertionError(f"nothing should be sent: {msg}")

    metrics = ServerMetrics(queue_depth=lambda: 0, generation=lambda: 1)
    routes = [Route("/recommend", lambda r: None, methods=["POST"])]
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(Observe(crash, routes, metrics)(scope("/recommend"), receive, send))
    asyncio.run(Observe(gone, routes, metrics)(scope("/elsewhere"), receive, send))
    from prometheus_client.parser import text_string_to_metric_families

    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for fam in text_string_to_metric_families(metrics.exposition()[0].decode()) for s in fam.samples}
    assert requests_by(got, "/recommend", 500) == 1 and requests_by(got, UNMATCHED, 499) == 1
    assert sum(v for (name, _), v in got.items() if name == "mkmsr_http_requests_total") == 2
    assert got[("mkmsr_http_requests_in_flight", ())] == 0
