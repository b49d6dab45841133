"""Observability: Prometheus metrics, the /healthz + /metrics HTTP endpoint, per-request logs.

* ``MetricsMiddlewareFactory`` (key ``MIDDLEWARE_KEY`` in the Flight server's middleware dict)
  counts every Flight call by RPC and status, records its duration and emits exactly ONE
  structlog event ``request`` per call (rpc, resource, duration_ms, outcome, status, bytes).
  Endpoints refine the call with ``annotate(context, rpc=..., resource=..., bytes_in=...,
  bytes_out=...)``.
* ``serve_http(host, port, engine, store)`` starts a daemon HTTP server: ``/healthz`` (200 when
  the catalog answers ``SELECT 1`` and the store can be listed, else 503, JSON body either way)
  and ``/metrics`` (Prometheus text format).
* Maintenance routines record their runs in ``CLEANUP_RUNS`` / ``OPTIMIZER_RUNS`` etc.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily

from . import errors, logs
from .catalog import db, repo

log = logs.get("mosaicod.requests")
hlog = logs.get(__name__)

MIDDLEWARE_KEY = "metrics"

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter("mosaicod_requests", "Flight calls by RPC and gRPC status", ["rpc", "status"])
REQUEST_DURATION = Histogram("mosaicod_request_duration_seconds", "Flight call duration by RPC",
                             ["rpc"], buckets=_DURATION_BUCKETS)
UPLOAD_DURATION = Histogram("mosaicod_upload_duration_seconds", "do_put (topic upload) duration",
                            buckets=_DURATION_BUCKETS)
READ_DURATION = Histogram("mosaicod_read_duration_seconds", "do_get (topic read) duration",
                          buckets=_DURATION_BUCKETS)
BYTES_IN = Counter("mosaicod_bytes_received", "Arrow bytes received from clients (do_put)")
BYTES_OUT = Counter("mosaicod_bytes_sent", "Arrow bytes sent to clients (do_get)")
INFLIGHT = Gauge("mosaicod_inflight_requests", "Flight calls in progress in this process")
CLEANUP_RUNS = Counter("mosaicod_cleanup_runs", "cleanup runs by outcome (done, skipped, failed)",
                       ["outcome"])
CLEANUP_FOLDERS = Counter("mosaicod_cleanup_folders", "folders handled by cleanup",
                          ["action"])  # marked, deleted, failed
OPTIMIZER_RUNS = Counter("mosaicod_store_optimizer_runs", "store-optimizer passes by outcome",
                         ["outcome"])
OPTIMIZER_TOPICS = Counter("mosaicod_store_optimizer_topics", "topics handled by the store optimizer",
                           ["outcome"])  # rewritten, skipped, failed

_METHOD_NAMES = {
    flight.FlightMethod.HANDSHAKE: "handshake",
    flight.FlightMethod.LIST_FLIGHTS: "list_flights",
    flight.FlightMethod.GET_FLIGHT_INFO: "get_flight_info",
    flight.FlightMethod.GET_SCHEMA: "get_schema",
    flight.FlightMethod.DO_GET: "do_get",
    flight.FlightMethod.DO_PUT: "do_put",
    flight.FlightMethod.DO_ACTION: "do_action",
    flight.FlightMethod.LIST_ACTIONS: "list_actions",
    flight.FlightMethod.DO_EXCHANGE: "do_exchange",
}

# exception class -> gRPC status name (most specific first)
_STATUS_OF: tuple[tuple[type[BaseException], str], ...] = (
    (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    (flight.FlightUnauthorizedError, "PERMISSION_DENIED"),
    (flight.FlightCancelledError, "CANCELLED"),
    (flight.FlightTimedOutError, "DEADLINE_EXCEEDED"),
    (flight.FlightUnavailableError, "UNAVAILABLE"),
    (flight.FlightInternalError, "INTERNAL"),
    (pa.lib.ArrowKeyError, "NOT_FOUND"),
    (KeyError, "NOT_FOUND"),
    (pa.lib.ArrowInvalid, "INVALID_ARGUMENT"),
    (ValueError, "INVALID_ARGUMENT"),
    (NotImplementedError, "UNIMPLEMENTED"),
    (pa.lib.ArrowNotImplementedError, "UNIMPLEMENTED"),
)


def status_of(exc: BaseException | None) -> str:
    if exc is None:
        return "OK"
    for cls, name in _STATUS_OF:
        if isinstance(exc, cls):
            return name
    return "UNKNOWN"


class MetricsMiddleware(flight.ServerMiddleware):
    """Per-call state; endpoints may set ``rpc``, ``resource`` and add to ``bytes_in/out``."""

    def __init__(self, rpc: str, peer: str | None):
        self.rpc = rpc
        self.peer = peer
        self.resource: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = time.perf_counter()
        INFLIGHT.inc()

    def call_completed(self, exception) -> None:
        duration = time.perf_counter() - self.started
        INFLIGHT.dec()
        status = status_of(exception)
        REQUESTS.labels(self.rpc, status).inc()
        REQUEST_DURATION.labels(self.rpc).observe(duration)
        if self.rpc == "do_put":
            UPLOAD_DURATION.observe(duration)
        elif self.rpc == "do_get":
            READ_DURATION.observe(duration)
        event: dict[str, Any] = {"rpc": self.rpc, "resource": self.resource,
                                 "duration_ms": round(duration * 1000, 3),
                                 "outcome": "ok" if exception is None else "error", "status": status}
        if self.bytes_in:
            event["bytes_in"] = self.bytes_in
        if self.bytes_out:
            event["bytes_out"] = self.bytes_out
        if self.peer:
            event["peer"] = self.peer
        if exception is None:
            log.info("request", **event)
        else:
            log.warning("request", error=errors.first_line(exception), **event)


class MetricsMiddlewareFactory(flight.ServerMiddlewareFactory):
    def start_call(self, info, headers):
        rpc = _METHOD_NAMES.get(info.method, str(info.method).rsplit(".", 1)[-1].lower())
        return MetricsMiddleware(rpc, None)


def middleware(context) -> MetricsMiddleware | None:
    """The call's MetricsMiddleware (None when the server runs without it)."""
    try:
        return context.get_middleware(MIDDLEWARE_KEY)
    except Exception:
        return None


def annotate(context, *, rpc: str | None = None, resource: str | None = None,
             bytes_in: int = 0, bytes_out: int = 0) -> None:
    """Attach what only the endpoint knows (action name, resource locator, bytes moved)."""
    if bytes_in:
        BYTES_IN.inc(bytes_in)
    if bytes_out:
        BYTES_OUT.inc(bytes_out)
    mw = middleware(context) if context is not None else None
    if mw is None:
        return
    if rpc:
        mw.rpc = rpc
    if resource:
        mw.resource = resource if isinstance(resource, str) else json.dumps(resource)[:200]
    mw.bytes_in += bytes_in
    mw.bytes_out += bytes_out


def count_out(context, batches):
    """Pass ``batches`` through, counting their Arrow bytes as sent (for do_get streams).

    Counts the size of the buffers each batch holds (``get_total_buffer_size``): the same as
    ``nbytes`` for the unsliced batches a read mostly sends, and ~20x cheaper per batch (``nbytes``
    cost ~5% of a whole-topic read); a window's edge slices count their whole batch."""
    mw = middleware(context)
    for batch in batches:
        n = batch.get_total_buffer_size()
        BYTES_OUT.inc(n)
        if mw is not None:
            mw.bytes_out += n
        yield batch


# -- catalog-derived gauges -----------------------------------------------------------------
class _CatalogCollector:
    """Open upload sessions (catalog-wide, so correct with several servers on one catalog)."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        g = GaugeMetricFamily("mosaicod_open_sessions",
                              "upload sessions created and not yet finalized (whole catalog)")
        try:
            g.add_metric([], float(repo.count_open_sessions(self.engine)))
        except Exception:
            return  # catalog down: /healthz says so; omit the gauge
        yield g


_collector_lock = threading.Lock()
_collector: _CatalogCollector | None = None


def register_catalog(engine) -> None:
    global _collector
    with _collector_lock:
        if _collector is None:
            _collector = _CatalogCollector(engine)
            REGISTRY.register(_collector)
        else:
            _collector.engine = engine


# -- health ---------------------------------------------------------------------------------
def health(engine, store) -> tuple[bool, dict[str, str]]:
    checks: dict[str, str] = {}
    try:
        db.ping(engine)
        checks["catalog"] = "ok"
    except Exception as exc:
        checks["catalog"] = "unreachable: " + errors.first_line(getattr(exc, "orig", None) or exc, "?")
    try:
        store.check()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = "unreachable: " + errors.first_line(exc, "?")
    return all(v == "ok" for v in checks.values()), checks


class _Handler(BaseHTTPRequestHandler):
    server_version = "mosaicod"
    engine = None
    store = None

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            ok, checks = health(self.engine, self.store)
            body = json.dumps({"status": "ok" if ok else "unhealthy", **checks}).encode()
            self._send(200 if ok else 503, "application/json", body)
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
        else:
            self._send(404, "text/plain", b"not found: try /healthz or /metrics\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args) -> None:  # scrapes are not worth a log line each
        pass


class HttpEndpoint:
    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread):
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_http(host: str, port: int, engine, store) -> HttpEndpoint:
    """Start /healthz and /metrics on host:port in a daemon thread (port 0 = any free port)."""
    handler = type("Handler", (_Handler,), {"engine": engine, "store": store})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    register_catalog(engine)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    hlog.info("metrics endpoint listening", url=f"http://{host}:{server.server_address[1]}",
              paths="/healthz /metrics")
    return HttpEndpoint(server, thread)
