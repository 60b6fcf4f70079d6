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
from mkmsr.dataset import PreparedData  # noqa: E402
from mkmsr.models import build_model  # noqa: E402
from mkmsr.recommend import Recommender  # noqa: E402

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
                "--port", str(self.port), "--admin-token", TOKEN, "--threads", "1"]
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
