"""The HTTP server: next-item recommendations for live sessions over JSON, with hot model swap.

``mkmsr serve --model DIR`` (needs the ``serve`` extra: FastAPI + uvicorn) serves

=======================  ===================================================================
``POST /recommend``      one session: ``{"events": [{"item_id", "operation"}], "k", "exclude",
                         "candidates", "exclude_seen"}`` -> ranked ``items`` + what was ignored
``POST /recommend/batch`` ``{"sessions": [<a /recommend body>, ...]}`` -> ``{"results": [...]}``
``GET /health``          liveness, the serving model and its generation
``GET /model``           model name and config, the dataset manifest, the metrics
``POST /admin/reload``   ``{"model": DIR}`` (optional; default: the current path) -> swap models
``GET /metrics``         Prometheus metrics: requests, latency, queue, batch sizes, reloads
                         (:mod:`mkmsr.serve_observe`)
``GET /openapi.json``    the schema (``/docs`` renders it)
=======================  ===================================================================

Bad requests get a 4xx whose ``error`` names the field (``events[0].item_id: Field
required``): 400 for a body that is not JSON, 413 for one over ``max_body_bytes``, 422 for
a missing, mistyped, unknown or out-of-bounds field (bounds in :class:`ServeConfig`). A body
whose declared Content-Length is over the limit is refused before any of it is read, one sent
without a length (chunked) as soon as it passes the limit; both answers close the connection,
so an oversized body is never read to its end.

How a request is scored. The event loop only parses and validates; scoring runs on one
inference thread (``threads`` torch threads) that takes every request queued at that moment
(up to ``max_inference_batch`` sessions) and scores them together with
:meth:`Recommender.recommend_batch`: one padded encoder pass and one matrix product with the
item matrix (float32 by default; optionally a bfloat16 scan with exact float32 rescoring, see
:class:`Recommender`). Under load this turns many memory-bound matrix-vector products over the
catalogue into one matrix product.

Large catalogues. ``--index`` (``auto`` by default) serves one-session requests from an
approximate nearest-neighbour index over the item vectors from ``--index-threshold`` items up,
with exact rescoring of what it retrieves (:mod:`mkmsr.serving.ann`); the index is built (or read
back from its cache, ``CHECKPOINT/index-cache`` unless ``--index-cache DIR`` / ``--no-index-cache``,
when the vectors and settings match) when a model loads, before the server listens or, on a hot
swap, before the swap.

Hot swap. ``POST /admin/reload`` (or ``SIGHUP``, which reloads the current path) loads the
new checkpoint beside the old one (building its index, if it gets one, on a worker thread of the
event loop's pool, so the inference thread keeps serving the old model meanwhile), runs
:meth:`Recommender.self_check` on it, and only then
replaces the reference the inference thread reads at the start of each micro-batch. A
micro-batch is scored wholly by one model; requests in flight finish on the model they
started with, so no request fails during a swap. A checkpoint that does not load or check is
refused (HTTP 422) and the old model keeps serving.
"""
import asyncio
import dataclasses
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .ann import KINDS as INDEX_KINDS
from .ann import IndexConfig
from .serve_observe import note

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations, whose
# request models are built per server config inside create_app.
if TYPE_CHECKING:  # torch and the model load only when a server starts (the CLI parser imports this)
    from .recommend import Recommendation, Recommender
    from .serve_observe import ServerMetrics

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Request bounds and serving knobs (``mkmsr serve --help`` lists the flags)."""

    max_k: int = 1000                  # largest k a request may ask for
    max_events: int = 500              # events in one session
    max_batch: int = 256               # sessions in one /recommend/batch request
    max_filter: int = 100_000          # ids in one exclude or candidates list
    max_body_bytes: int = 8 * 2 ** 20  # request body size (413 above)
    max_id_length: int = 256           # characters of one item id or operation
    max_inference_batch: int = 64      # sessions scored together in one pass
    batch_window_ms: float = 0.0       # wait up to this long for more requests to join a pass
    max_queue: int = 2048              # queued requests before answering 503 (overload)
    request_timeout_s: float = 30.0    # a request still unscored after this gets 503
    threads: int = 0                   # torch CPU threads (0 = all cores but one, left to the event loop)
    admin_token: str | None = None     # if set, /admin/reload needs header X-Admin-Token
    scan: str | None = None            # one-session ranking: float32 (default) | bfloat16, see Recommender
    index: str = "auto"                # auto | exact | hnsw | faiss-hnsw | flat, see mkmsr.serving.ann
    index_threshold: int = IndexConfig.threshold  # auto: an index from this many catalogue items up
    index_ef: int = IndexConfig.ef_search         # HNSW search list (recall vs latency)
    index_cache: bool = True                      # reuse a saved index of the same vectors and settings
    index_cache_dir: str | None = None            # where (None: CHECKPOINT/index-cache)
    model_options: dict = field(default_factory=dict)  # inference-time model options changed at every load

    def index_config(self) -> IndexConfig:
        """The Recommender's index settings; the build uses the scoring threads (0 = every core)."""
        return IndexConfig(kind=self.index, threshold=self.index_threshold, ef_search=self.index_ef,
                           build_threads=self.threads, cache=self.index_cache, cache_dir=self.index_cache_dir)

    def validate(self) -> None:
        for name in ("max_k", "max_events", "max_batch", "max_filter", "max_body_bytes", "max_id_length",
                     "max_inference_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve option {name} must be >= 1, got {getattr(self, name)}")
        if self.scan not in (None, "bfloat16", "float32"):
            raise ConfigError(f"scan must be bfloat16 or float32, got {self.scan!r}")
        if self.index not in INDEX_KINDS:
            raise ConfigError(f"index must be one of {', '.join(INDEX_KINDS)}, got {self.index!r}")
        self.index_config().validate()
        if self.batch_window_ms < 0 or self.request_timeout_s <= 0 or self.threads < 0:
            raise ConfigError("batch_window_ms must be >= 0, request_timeout_s > 0 and threads >= 0")


# --------------------------------------------------------------------------------------------
# the served model and its swap
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Served:
    """One loaded model generation. Immutable: swapping replaces the whole object."""

    rec: "Recommender"
    generation: int
    path: str
    loaded_at: float
    description: dict

    def tag(self) -> dict:
        return {"name": self.rec.model_name, "generation": self.generation}


class ModelHolder:
    """Holds the served :class:`Served`; ``reload`` swaps it atomically or not at all."""

    def __init__(self, path: str | Path, device: str = "cpu", scan: str | None = None,
                 index: "str | IndexConfig | None" = None, overrides: dict | None = None):
        self.device, self.scan, self.index, self.overrides = device, scan, index, dict(overrides or {})
        self._lock = threading.Lock()  # one reload at a time
        self._current = self._load(path, 1)

    def _load(self, path: str | Path, generation: int) -> Served:
        from .recommend import Recommender

        rec = Recommender.load(path, self.device, scan=self.scan, index=self.index,  # builds its index, if any
                               overrides=self.overrides)
        rec.self_check()
        ck = str(Path(rec.meta["path"]).resolve())
        return Served(rec, generation, ck, time.time(), rec.describe())

    @property
    def current(self) -> Served:
        return self._current

    def reload(self, path: str | Path | None = None) -> Served:
        """Load ``path`` (default: the current checkpoint path again) and swap it in.

        Raises whatever loading or the self-check raised; the old model then stays.
        """
        with self._lock:
            old = self._current
            new = self._load(path if path is not None else old.path, old.generation + 1)
            self._current = new  # a single reference assignment: atomic for every reader
        log.info("serving %s (generation %d) from %s", new.rec.model_name, new.generation, new.path)
        return new


# --------------------------------------------------------------------------------------------
# the inference thread (micro-batching)
# --------------------------------------------------------------------------------------------

class Overloaded(Exception):
    """The request queue is full."""


@dataclass
class _Job:
    sessions: list[tuple]  # (events, k, exclude, candidates, exclude_seen) per session
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


def _resolve(fut: asyncio.Future, value: Any, exc: BaseException | None) -> None:
    if fut.done():  # the request timed out or its client went away
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class InferenceWorker:
    """One thread scoring queued requests in micro-batches with the holder's current model."""

    def __init__(self, holder: ModelHolder, config: ServeConfig, metrics: "ServerMetrics | None" = None):
        self.holder = holder
        self.config = config
        self.metrics = metrics  # batch sizes and pass times go here
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.sessions = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mkmsr-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def queued(self) -> int:
        return self._queue.qsize()

    async def submit(self, sessions: list[tuple]) -> "tuple[list[Recommendation], Served]":
        if self._queue.qsize() >= self.config.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests queued")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put(_Job(sessions, loop, fut))
        return await asyncio.wait_for(fut, self.config.request_timeout_s)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, n = [first], len(first.sessions)
        deadline = time.monotonic() + self.config.batch_window_ms / 1000.0
        while n < self.config.max_inference_batch:
            wait = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            n += len(job.sessions)
        return jobs, False

    def _run(self) -> None:
        import torch

        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            t0 = time.perf_counter()
            served = self.holder.current  # one model for the whole micro-batch
            try:
                results = self._score(served, [s for j in jobs for s in j.sessions])
                pos = 0
                for j in jobs:
                    part = results[pos:pos + len(j.sessions)]
                    pos += len(j.sessions)
                    j.loop.call_soon_threadsafe(_resolve, j.future, (part, served), None)
            except Exception:  # noqa: BLE001 - isolate: one bad request must not fail the others
                for j in jobs:
                    try:
                        value, exc = (self._score(served, j.sessions), served), None
                    except Exception as e:  # noqa: BLE001
                        log.exception("scoring a request failed")
                        value, exc = None, e
                    j.loop.call_soon_threadsafe(_resolve, j.future, value, exc)
            n = sum(len(j.sessions) for j in jobs)
            self.batches += 1
            self.sessions += n
            if self.metrics is not None:
                self.metrics.observe_batch(n, time.perf_counter() - t0)
            if stop:
                return

    def _score(self, served: Served, sessions: list[tuple]) -> "list[Recommendation]":
        events, ks, exclude, candidates, seen = zip(*sessions)
        return served.rec.recommend_batch(list(events), list(ks), list(exclude), list(candidates), list(seen),
                                          chunk_size=self.config.max_inference_batch)


# --------------------------------------------------------------------------------------------
# the ASGI app
# --------------------------------------------------------------------------------------------

class BodyLimit:
    """ASGI middleware: read the request body up to ``limit`` bytes, else answer 413; bodies are
    always read as JSON.

    A declared Content-Length over the limit is refused before a byte of the body is read; a body
    without one (chunked) is refused as soon as it passes the limit. A 413 says
    ``Connection: close``, so the server never reads the rest of an oversized body.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _too_large(self, send, declared: int | None = None):
        size = f"{declared} bytes declared, " if declared is not None else ""
        msg = f"body: request body over {self.limit} bytes ({size}raise --max-body-bytes to accept it)"
        note(error=msg)
        return _send_json(send, 413, {"error": msg}, close=True)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send, int(declared))
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            total += len(body)
            if total > self.limit:
                return await self._too_large(send)
            chunks.append(body)
            if not msg.get("more_body"):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        # a JSON-only API: read the body as JSON whatever Content-Type the client sent (curl -d
        # sends a form type), so the answer is about the JSON, not the header
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        given = False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return whole
            return await receive()

        return await self.app(scope, replay, send)


async def _send_json(send, status: int, obj: dict, close: bool = False) -> None:
    import json

    body = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the server closes the connection after this answer (the rest of the body is not read)
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _field(loc: tuple) -> str:
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "body"


def _request_models(cfg: ServeConfig):
    """Pydantic request/response models with this server's bounds (they show in the OpenAPI schema)."""
    from typing import Annotated, Optional, Union

    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

    Id = Union[Annotated[str, StringConstraints(min_length=1, max_length=cfg.max_id_length)], StrictInt]

    class EventIn(BaseModel):
        """One micro-behaviour: an item and the operation on it, in the data's external ids."""
        model_config = ConfigDict(extra="forbid")
        item_id: Id = Field(description="external item id (strings; integers are read as their decimal string)")
        operation: Optional[Id] = Field(None, description="external operation id; null = none given")

    class RecommendIn(BaseModel):
        """A live session, oldest event first."""
        model_config = ConfigDict(extra="forbid")
        events: list[EventIn] = Field(max_length=cfg.max_events,
                                      description=f"the session's micro-behaviours, oldest first (at most {cfg.max_events}); "
                                                  "an empty list gets the popularity ranking")
        k: int = Field(20, ge=1, le=cfg.max_k, description=f"number of items to return (1..{cfg.max_k})")
        exclude: Optional[list[Id]] = Field(None, max_length=cfg.max_filter, description="item ids never to return")
        candidates: Optional[list[Id]] = Field(None, max_length=cfg.max_filter,
                                               description="rank only these item ids (default: the whole catalogue)")
        exclude_seen: bool = Field(False, description="also exclude the items of the session itself")

    class BatchIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        sessions: list[RecommendIn] = Field(min_length=1, max_length=cfg.max_batch,
                                            description=f"1..{cfg.max_batch} sessions")

    class ReloadIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: Optional[str] = Field(None, description="checkpoint or run directory; default: reload the current path")

    class ScoredItem(BaseModel):
        item_id: str
        score: float

    class ModelTag(BaseModel):
        name: str
        generation: int

    class RecommendOut(BaseModel):
        items: list[ScoredItem]
        ignored_items: list[str] = Field(description="item ids the model has never seen (their events were dropped)")
        ignored_operations: list[str] = Field(description="unknown operations (replaced by the padding operation)")
        ignored_candidates: list[str] = Field(description="candidates the model has never seen")
        fallback: Optional[str] = Field(description="'popularity' when no event was usable, else null")
        model: ModelTag

    class BatchResult(BaseModel):
        items: list[ScoredItem]
        ignored_items: list[str]
        ignored_operations: list[str]
        ignored_candidates: list[str]
        fallback: Optional[str]

    class BatchOut(BaseModel):
        results: list[BatchResult]
        model: ModelTag

    return EventIn, RecommendIn, BatchIn, ReloadIn, RecommendOut, BatchOut


def _as_session(r) -> tuple:
    return ([(e.item_id, e.operation) for e in r.events], r.k, r.exclude, r.candidates, r.exclude_seen)


def _error(status: int, msg: str, **extra):
    """A JSON error answer ``{"error": msg}``; ``msg`` also goes to the request's access-log line."""
    from fastapi.responses import JSONResponse

    note(error=msg)
    return JSONResponse(status_code=status, content={"error": msg, **extra})


def create_app(holder: ModelHolder, config: ServeConfig | None = None, access_log: str | None = None):
    """The ASGI application for ``holder``'s model: FastAPI behind the body-size limit, behind
    :class:`~mkmsr.serve_observe.Observe` (metrics for ``GET /metrics``; with
    ``access_log="json"`` one JSON line per request on the ``mkmsr.access`` logger)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Header, Request, Response
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from .. import __version__
    from .serve_observe import Observe, ServerMetrics

    if access_log not in (None, "json"):
        raise ConfigError(f"access_log must be None or 'json', got {access_log!r}")
    cfg = config or ServeConfig()
    cfg.validate()
    _, RecommendIn, BatchIn, ReloadIn, RecommendOut, BatchOut = _request_models(cfg)
    metrics = ServerMetrics(queue_depth=lambda: worker.queued(), generation=lambda: holder.current.generation)
    worker = InferenceWorker(holder, cfg, metrics)

    async def reload_on_signal() -> None:
        try:
            await run_in_threadpool(holder.reload)
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint must not stop the server
            metrics.reloads.labels("refused", "sighup").inc()
            log.error("SIGHUP reload refused, still serving generation %d: %s", holder.current.generation, exc)
        else:
            metrics.reloads.labels("ok", "sighup").inc()

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_on_signal()))
        except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
            log.info("no SIGHUP reload here (%s); use POST /admin/reload", exc)
        yield
        try:
            loop.remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass
        worker.stop()

    app = FastAPI(title="mkmsr", version=__version__, lifespan=lifespan,
                  description="Next-item recommendations for live sessions of (item, operation) micro-behaviours "
                              "(MKM-SR). Ids are the external ids of the prepared data.")
    app.state.holder, app.state.worker, app.state.config, app.state.metrics = holder, worker, cfg, metrics

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            e = next(e for e in errs if e.get("type") == "json_invalid")
            detail = (e.get("ctx") or {}).get("error", "")
            return _error(400, f"body: not valid JSON ({e.get('msg')}, {detail})".strip())
        msg = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in errs[:5])
        if len(errs) > 5:
            msg += f"; and {len(errs) - 5} more"
        return _error(422, msg, detail=jsonable_encoder(errs))

    async def run(sessions: list[tuple]):
        try:
            return await worker.submit(sessions)
        except Overloaded as exc:
            return _error(503, f"overloaded: {exc}; retry later")
        except asyncio.TimeoutError:
            return _error(503, f"not scored within {cfg.request_timeout_s}s")
        except ValueError as exc:
            return _error(422, str(exc))

    @app.post("/recommend", response_model=RecommendOut, summary="top-k next items for one live session")
    async def recommend(req: RecommendIn):
        res = await run([_as_session(req)])
        if isinstance(res, JSONResponse):
            return res
        recs, served = res
        note(n_items=len(recs[0].items), generation=served.generation)
        return {**recs[0].to_dict(), "model": served.tag()}

    @app.post("/recommend/batch", response_model=BatchOut, summary="top-k next items for many sessions")
    async def recommend_batch(req: BatchIn):
        res = await run([_as_session(r) for r in req.sessions])
        if isinstance(res, JSONResponse):
            return res
        recs, served = res
        note(n_items=sum(len(r.items) for r in recs), n_sessions=len(recs), generation=served.generation)
        return {"results": [r.to_dict() for r in recs], "model": served.tag()}

    @app.get("/health", summary="liveness and the serving model generation")
    async def health():
        s = holder.current
        return {"status": "ok", "model": s.rec.model_name, "generation": s.generation, "checkpoint": s.path,
                "queued": worker.queued()}

    @app.get("/model", summary="the serving model: name, config, dataset manifest, metrics")
    async def model_info():
        s = holder.current
        return {**s.description, "generation": s.generation, "loaded_at": s.loaded_at,
                "limits": dataclasses.asdict(cfg) | {"admin_token": None}}

    @app.post("/admin/reload", summary="load a checkpoint and swap it in atomically (a bad one is refused)")
    async def reload(req: ReloadIn | None = None, x_admin_token: str | None = Header(None)):
        if cfg.admin_token and x_admin_token != cfg.admin_token:
            return _error(403, "x-admin-token: missing or wrong")
        old = holder.current
        try:
            new = await run_in_threadpool(holder.reload, req.model if req else None)
        except Exception as exc:  # noqa: BLE001 - any failure to load means: keep the old model
            log.warning("reload refused: %s", exc)
            metrics.reloads.labels("refused", "http").inc()
            return _error(422, f"model: checkpoint refused ({type(exc).__name__}: {exc}); still serving generation "
                               f"{old.generation} from {old.path}")
        metrics.reloads.labels("ok", "http").inc()
        note(generation=new.generation)
        return {"status": "reloaded", "model": new.rec.model_name, "generation": new.generation,
                "checkpoint": new.path, "previous": {"generation": old.generation, "checkpoint": old.path}}

    @app.get("/metrics", summary="Prometheus metrics: requests by endpoint and status, latency, queue depth, "
                                 "batch sizes, model generation and reloads")
    async def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return Observe(BodyLimit(app, cfg.max_body_bytes), app.router.routes, metrics, access_json=access_log == "json")


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          access_log: bool | str = False, log_level: str = "info", device: str = "cpu") -> None:
    """Load ``model`` (checkpoint or run directory) and serve it with uvicorn until stopped.

    ``device``: cpu | cuda | cuda:N | auto (cuda when available) -- where the model scores.

    ``access_log``: False (none), True or ``"text"`` (uvicorn's access log), ``"json"`` (one JSON
    line per request on the ``mkmsr.access`` logger; uvicorn's own access log off).
    """
    try:
        import prometheus_client  # noqa: F401 - GET /metrics
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("mkmsr serve needs the 'serve' extra: pip install 'mkmsr[serve]'") from exc
    if access_log not in (False, True, "text", "json"):
        raise ConfigError(f"access_log must be False, True, 'text' or 'json', got {access_log!r}")
    import os

    import torch

    cfg = config or ServeConfig()
    cfg.validate()
    if not cfg.threads:
        cfg = dataclasses.replace(cfg, threads=max(1, (os.cpu_count() or 2) - 1))
    torch.set_num_threads(cfg.threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    holder = ModelHolder(model, device, scan=cfg.scan, index=cfg.index_config(), overrides=cfg.model_options)
    s = holder.current
    log.info("loaded %s from %s (%d items, index %s); listening on http://%s:%d", s.rec.model_name, s.path,
             s.rec.n_items, s.rec.index_info["kind"], host, port)
    app = create_app(holder, cfg, access_log="json" if access_log == "json" else None)
    uvicorn.run(app, host=host, port=port, access_log=access_log in (True, "text"), log_level=log_level)
