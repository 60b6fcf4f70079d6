"""What the HTTP server tells its operator: Prometheus metrics (``GET /metrics``) and one JSON
access-log line per request (``mkmsr serve --access-log json``).

Every request, answered or refused, passes through :class:`Observe`, the outermost ASGI
middleware (outside the body-size limit and FastAPI's validation), so a 400, 413 or 422 is
counted and timed exactly like a 200. Metrics (each server has its own
``prometheus_client.CollectorRegistry``, so several apps in one process do not collide):

========================================  ===========  ==========================================
``mkmsr_http_requests_total``             counter      by ``method``, ``endpoint`` (the route
                                                       template, ``unmatched`` for unknown
                                                       paths) and ``status`` (499: the client
                                                       went away before an answer)
``mkmsr_http_request_duration_seconds``   histogram    by ``endpoint``, first byte received to
                                                       last byte sent, 0.5 ms .. 10 s buckets
``mkmsr_http_requests_in_flight``         gauge        requests being handled now
``mkmsr_inference_queue_depth``           gauge        requests waiting for the inference thread
``mkmsr_inference_batch_sessions``        histogram    sessions scored together in one pass
``mkmsr_inference_batch_duration_seconds`` histogram   time of one scoring pass
``mkmsr_model_generation``                gauge        the serving generation (+1 per hot swap)
``mkmsr_model_reloads_total``             counter      by ``outcome`` (ok / refused) and
                                                       ``trigger`` (http / sighup)
``process_*``                             gauges       resident memory, CPU seconds, open fds
========================================  ===========  ==========================================

The access log goes to the ``mkmsr.access`` logger at INFO, one JSON object per line (the CLI
sends it to stdout unformatted): ``time`` (UTC, ISO 8601), ``method``, ``path``, ``endpoint``,
``status``, ``duration_ms``, ``client`` (``host:port``), ``request_bytes`` (the declared
Content-Length, else the bytes read), ``response_bytes``, and ``n_items`` (items returned; with
``n_sessions`` for a batch) and ``generation`` on a scored answer or ``error`` on a refused one.
"""
import contextvars
import json
import logging
import time
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Callable

log = logging.getLogger(__name__)
access_log = logging.getLogger("mkmsr.access")

# seconds; a scored request takes milliseconds, a reload under load or an overloaded queue seconds
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# a client may send any method token; anything else is counted as "other" (bounded label values)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED = "unmatched"
CLIENT_GONE = 499  # no answer was sent: the client disconnected first (nginx's code for it)

_notes: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mkmsr_request_notes", default=None)


def note(**fields) -> None:
    """Attach fields (``n_items``, ``error``, ...) to the current request's access-log line.

    A no-op outside a request (the handlers run in the task :class:`Observe` set the notes in).
    """
    notes = _notes.get()
    if notes is not None:
        notes.update(fields)


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of their own.

    ``queue_depth`` and ``generation`` are read at every scrape (callables, not copies).
    """

    def __init__(self, queue_depth: Callable[[], float], generation: Callable[[], float]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = r = CollectorRegistry()
        self.requests = Counter("mkmsr_http_requests", "HTTP requests answered, by method, route template and status",
                                ["method", "endpoint", "status"], registry=r)
        self.latency = Histogram("mkmsr_http_request_duration_seconds",
                                 "time from a request's arrival to the last byte of its answer, by route template",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("mkmsr_http_requests_in_flight", "requests being handled now", registry=r)
        self.queue_depth = Gauge("mkmsr_inference_queue_depth", "requests waiting for the inference thread",
                                 registry=r)
        self.queue_depth.set_function(queue_depth)
        self.batch_sessions = Histogram("mkmsr_inference_batch_sessions", "sessions scored together in one pass",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("mkmsr_inference_batch_duration_seconds", "time of one scoring pass",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.generation = Gauge("mkmsr_model_generation", "generation of the serving model (+1 per hot swap)",
                                registry=r)
        self.generation.set_function(generation)
        self.reloads = Counter("mkmsr_model_reloads", "hot-swap attempts by outcome (ok, refused) and trigger "
                                                      "(http: POST /admin/reload, sighup)",
                               ["outcome", "trigger"], registry=r)
        for outcome in ("ok", "refused"):  # shown as 0 before the first reload
            for trigger in ("http", "sighup"):
                self.reloads.labels(outcome, trigger)
        ProcessCollector(registry=r)

    def observe_batch(self, sessions: int, seconds: float) -> None:
        self.batch_sessions.observe(sessions)
        self.batch_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_template(routes, scope) -> str:
    """The template of the route ``scope`` goes to (``/recommend``), else ``unmatched``.

    A path whose route exists for another method (a 405) keeps that route's template.
    """
    from starlette.routing import Match

    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route.path
        if match is Match.PARTIAL and partial is None:
            partial = route.path
    return partial or UNMATCHED


class Observe:
    """ASGI middleware: count and time every HTTP request; optionally log it as one JSON line.

    ``routes`` (the FastAPI app's) name the endpoint label; ``app`` is everything inside (the
    body-size limit, then FastAPI), so refused requests are observed like answered ones.
    """

    def __init__(self, app, routes, metrics: ServerMetrics, access_json: bool = False):
        self.app, self.routes, self.metrics, self.access_json = app, routes, metrics, access_json

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        endpoint = route_template(self.routes, scope)
        method = scope["method"] if scope["method"] in METHODS else "other"
        seen = {"status": None, "in": 0, "out": 0}
        notes: dict = {}
        token = _notes.set(notes)

        async def receive_counted():
            msg = await receive()
            if msg["type"] == "http.request":
                seen["in"] += len(msg.get("body", b""))
            return msg

        async def send_counted(msg):
            if msg["type"] == "http.response.start":
                seen["status"] = msg["status"]
            elif msg["type"] == "http.response.body":
                seen["out"] += len(msg.get("body", b""))
            await send(msg)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive_counted, send_counted)
        except BaseException:
            if seen["status"] is None:
                seen["status"] = 500  # uvicorn answers 500 for an exception before the response
            raise
        finally:
            _notes.reset(token)
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - t0
            status = seen["status"] or CLIENT_GONE
            self.metrics.requests.labels(method, endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            if self.access_json:
                self._log(scope, endpoint, status, seconds, seen, notes)

    @staticmethod
    def _log(scope, endpoint: str, status: int, seconds: float, seen: dict, notes: dict) -> None:
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        client = scope.get("client")
        line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "method": scope["method"], "path": scope["path"], "endpoint": endpoint, "status": status,
                "duration_ms": round(seconds * 1e3, 3),
                "client": f"{client[0]}:{client[1]}" if client else None,
                "request_bytes": int(declared) if declared and declared.isdigit() else seen["in"],
                "response_bytes": seen["out"], **notes}
        if status >= 400 and "error" not in notes:  # answered by the framework (404, 405) or never answered
            try:
                line["error"] = HTTPStatus(status).phrase
            except ValueError:
                line["error"] = "no answer: the client went away"
        access_log.info(json.dumps(line, ensure_ascii=False))
