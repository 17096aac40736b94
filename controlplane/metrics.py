"""Prometheus figures for the control plane: the request middleware, the counters other apps record, scrape-time gauges.

It owns the metric names and the `/metrics` view (bearer token, constant-time compare). It must never label a metric
with unbounded values (raw paths, ids, emails) and never import another app's models: apps push gauge sources in.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Multiprocess mode is chosen by prometheus_client itself when this variable is set before it is imported: each
# gunicorn worker (or Celery pool process) then writes its samples to mmap files in that directory, and a scrape
# aggregates them. The directory must be empty when the server starts (the chart's gunicorn config wipes it).
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"

REQUEST_LATENCY = Histogram(
    "controlplane_http_request_duration_seconds",
    "Time spent answering an HTTP request, by URL pattern (never the raw path), method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RECONCILE_DURATION = Histogram(
    "controlplane_reconcile_duration_seconds",
    "Time one reconcile of one deployment took, by outcome (e.g. converged, retry, failed).",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
NOTIFICATION_FAILURES = Counter(
    "controlplane_notification_failures",
    "Alert notifications that could not be delivered, by channel type (email, webhook, ...).",
    ["channel_type"],
)

# Redis outages: the API keeps answering on per-process rate-limit buckets, and work that could not be published is
# left to the sweeps. In multiprocess mode the gauges read 1 when any live process is in fallback.
RATELIMIT_FALLBACK = Gauge(
    "controlplane_ratelimit_fallback",
    "1 while rate limits are counted per process because Redis is unreachable, 0 while they are shared in Redis.",
    multiprocess_mode="livemax",
)
RATELIMIT_FALLBACK_DECISIONS = Counter(
    "controlplane_ratelimit_fallback_decisions",
    "Rate-limit decisions taken on per-process buckets because Redis was unreachable.",
)
TASK_BROKER_UNREACHABLE = Gauge(
    "controlplane_task_broker_unreachable",
    "1 while this process cannot publish Celery tasks (the broker failed and is being retried), else 0.",
    multiprocess_mode="livemax",
)
TASK_PUBLISH_FAILURES = Counter(
    "controlplane_task_publish_failures",
    "Celery tasks that could not be published (left to their sweep), by task name and reason (error, broker_down).",
    ["task", "reason"],
)
RATELIMIT_FALLBACK.set(0)
TASK_BROKER_UNREACHABLE.set(0)

# A gauge source returns its current samples at scrape time: a mapping or an iterable of (label values, value).
GaugeSamples = Mapping[tuple[str, ...], float] | Iterable[tuple[Sequence[str], float]]
GaugeSourceFn = Callable[[], GaugeSamples]


class _GaugeSource:
    __slots__ = ("name", "help", "labels", "fn")

    def __init__(self, name: str, help: str, labels: Sequence[str], fn: GaugeSourceFn) -> None:
        self.name, self.help, self.labels, self.fn = name, help, tuple(labels), fn


class GaugeSourceCollector(Collector):
    """Calls every registered source on each scrape; a failing source is reported as down, never fails the scrape."""

    def __init__(self) -> None:
        self._sources: dict[str, _GaugeSource] = {}
        self._lock = threading.Lock()

    def register(self, source: _GaugeSource) -> None:
        with self._lock:
            # Replacing rather than refusing: Django's autoreloader and tests import AppConfig.ready() more than once.
            self._sources[source.name] = source

    def unregister(self, name: str) -> None:
        with self._lock:
            self._sources.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._sources)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            sources = list(self._sources.values())
        up = GaugeMetricFamily(
            "controlplane_gauge_source_up",
            "1 when the named scrape-time gauge source answered, 0 when it raised.",
            labels=["source"],
        )
        for source in sources:
            family = GaugeMetricFamily(source.name, source.help, labels=list(source.labels))
            try:
                samples = source.fn()
                items = samples.items() if isinstance(samples, Mapping) else samples
                for label_values, value in items:
                    label_values = tuple(str(v) for v in label_values)
                    if len(label_values) != len(source.labels):
                        raise ValueError(
                            f"{source.name}: expected {len(source.labels)} label values, got {label_values!r}"
                        )
                    family.add_metric(list(label_values), float(value))
            except Exception:
                logger.exception("metrics gauge source failed", extra={"source": source.name})
                up.add_metric([source.name], 0.0)
                continue
            up.add_metric([source.name], 1.0)
            yield family
        yield up


GAUGE_SOURCES = GaugeSourceCollector()
REGISTRY.register(GAUGE_SOURCES)


def register_gauge_source(name: str, help: str, labels: Sequence[str], fn: GaugeSourceFn) -> None:
    """Add a gauge computed on every scrape, e.g. deployments by status or metering lag; call from AppConfig.ready().

    `fn` takes no arguments and returns `{(label, ...): value}` or an iterable of `((label, ...), value)`; it runs in
    the scraping process on each scrape, so it must be cheap (one aggregate query, a few Redis calls).
    """
    GAUGE_SOURCES.register(_GaugeSource(name, help, labels, fn))


def unregister_gauge_source(name: str) -> None:
    GAUGE_SOURCES.unregister(name)


# --- Celery queue depth, read from the Redis broker -------------------------------------------------------------

# kombu's Redis transport keeps one list per priority step: the bare name for priority 0, `name\x06\x16<step>` else.
_KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)


def celery_queue_depths(*, broker_url: str, queues: Sequence[str], client: Any = None) -> dict[tuple[str, ...], float]:
    """Messages waiting in each Celery queue on a Redis broker (all priority lists summed); not those being run."""
    if client is None:
        import redis

        client = redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=2)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for step in _KOMBU_PRIORITY_STEPS:
            pipe.llen(queue if step == 0 else f"{queue}{_KOMBU_PRIORITY_SEPARATOR}{step}")
    lengths = pipe.execute()
    per_queue = len(_KOMBU_PRIORITY_STEPS)
    return {(queue,): float(sum(lengths[i * per_queue : (i + 1) * per_queue])) for i, queue in enumerate(queues)}


def register_celery_queue_depth_source(*, broker_url: str, queues: Sequence[str]) -> bool:
    """Expose `controlplane_celery_queue_depth{queue}`; a no-op (False) unless the broker is Redis."""
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return False
    import redis

    client = redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=2)
    register_gauge_source(
        "controlplane_celery_queue_depth",
        "Messages waiting in each Celery queue on the broker.",
        ["queue"],
        lambda: celery_queue_depths(broker_url=broker_url, queues=queues, client=client),
    )
    return True


# --- Request latency ---------------------------------------------------------------------------------------------


def route_label(request: Any) -> str:
    """The URL pattern that answered (`api/v1/deployments/<str:pk>`), never the raw path, so cardinality is bounded."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED_ROUTE
    return match.route or match.view_name or UNMATCHED_ROUTE


class PrometheusMiddleware:
    """Observes request latency by route, method and status. Put it first so the whole middleware stack is timed."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        started = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in _KNOWN_METHODS else "other"
        REQUEST_LATENCY.labels(route_label(request), method, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response


# --- Exposition --------------------------------------------------------------------------------------------------


def scrape_registry() -> CollectorRegistry:
    """The registry a scrape reads: the process's own, or every process's samples in multiprocess mode."""
    if not os.environ.get(MULTIPROC_DIR_ENV):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    # Gauge sources read shared state (database, Redis), so the answering process computes them for everyone.
    registry.register(GAUGE_SOURCES)
    return registry


def token_matches(*, authorization: str, token: str) -> bool:
    """True when the header is `Bearer <token>`; constant-time so the comparison leaks nothing about the token."""
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def _problem(status: int, title: str, detail: str) -> Any:
    from django.http import HttpResponse

    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    response = HttpResponse(json.dumps(body), status=status, content_type="application/problem+json")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


_queue_source_lock = threading.Lock()
_queue_source_checked = False


def _ensure_queue_depth_source(settings: Any) -> None:
    global _queue_source_checked
    with _queue_source_lock:
        if _queue_source_checked:
            return
        _queue_source_checked = True
        queues = getattr(settings, "CELERY_ALL_QUEUES", None)
        broker_url = getattr(settings, "CELERY_BROKER_URL", "") or ""
        if queues and not getattr(settings, "CELERY_TASK_ALWAYS_EAGER", False):
            register_celery_queue_depth_source(broker_url=broker_url, queues=list(queues))


def metrics_view(request: Any) -> Any:
    """GET /metrics: Prometheus text, only for `Authorization: Bearer <METRICS_TOKEN>`.

    Without a token configured it answers 404 in production (metrics are never public there by accident) and
    serves openly in development and test.
    """
    from django.conf import settings
    from django.http import HttpResponse, HttpResponseNotAllowed

    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    token = getattr(settings, "METRICS_TOKEN", "") or ""
    if not token:
        if getattr(settings, "ENVIRONMENT", "production") == "production":
            return _problem(404, "Not Found", "The requested resource was not found.")
    elif not token_matches(authorization=request.headers.get("Authorization", ""), token=token):
        return _problem(401, "Unauthorized", "Send Authorization: Bearer <METRICS_TOKEN>.")
    _ensure_queue_depth_source(settings)
    response = HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


# --- Celery worker exposition ------------------------------------------------------------------------------------


def make_worker_metrics_app(*, token: str) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving the scrape registry behind the same bearer token, for Celery worker pods.

    Like `/metrics`, it answers 404 in production when no token is configured: the port listens on every address of
    the pod, so an open one would hand the figures to anything in the cluster."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        from django.conf import settings

        closed = not token and getattr(settings, "ENVIRONMENT", "production") == "production"
        if closed or environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        if token and not token_matches(authorization=environ.get("HTTP_AUTHORIZATION", ""), token=token):
            body = json.dumps({"type": "about:blank", "title": "Unauthorized", "status": 401}).encode()
            start_response(
                "401 Unauthorized",
                [("Content-Type", "application/problem+json"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
            )
            return [body]
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Cache-Control", "no-store")])
        return [generate_latest(scrape_registry())]

    return app


def start_worker_metrics_server(*, port: int, token: str, addr: str = "0.0.0.0") -> Any:
    """Serve worker metrics on a daemon thread; call once from Celery's `worker_init` signal. Returns the server."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class _QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # scrapes every 15-30 s would flood the logs
            pass

    class _ThreadingServer(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = make_server(
        addr, port, make_worker_metrics_app(token=token), server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    return server


def reset_multiprocess_dir() -> None:
    """Empty PROMETHEUS_MULTIPROC_DIR; call in the parent before it forks (Celery `worker_init`), never after."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    for entry in os.scandir(directory):
        # Only prometheus_client's own files: the directory may be a mount shared with nothing else, but be sure.
        if entry.is_file() and entry.name.endswith(".db"):
            os.unlink(entry.path)


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges in multiprocess mode (gunicorn `child_exit`, Celery `worker_process_shutdown`)."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
