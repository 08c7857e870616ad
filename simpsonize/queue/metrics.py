"""``GET /metrics``: the service in Prometheus text format, workers included.

Two sources, one endpoint:

- **This web process** counts its requests (``RequestMetrics``, an ASGI middleware) by method, *route template*
  (``/api/v1/jobs/{job_id}``, never the path: job ids are bearer tokens, and one label value per job would grow
  without bound) and status, and times them.
- **The workers** may run anywhere (``serve`` starts them as child processes, ``REDIS_URL`` deployments on other
  machines), so they do not serve metrics of their own: each job adds its outcome and its detect/generate/encode
  times to one Redis hash per queue, ``P:metrics:QUEUE`` (``metrics_key``), with ``HINCRBY``/``HINCRBYFLOAT``
  (plain numbers, no pickles) in one transaction. ``RedisCollector`` reads that hash, the queue and the workers'
  heartbeats (``simpsonize.queue.liveness``) at scrape time. Whichever web process is scraped reports every
  worker's jobs.

The hash is the one key the service writes that outlives jobs: its TTL is ``METRICS_TTL`` (30 days), renewed on
every write, so it goes away after a month without a job (Prometheus reads that as a counter reset, as it does for
a Redis restart, which also forgets it).

Fields of ``P:metrics:QUEUE``: ``finished``, ``retried``, ``failed:REASON`` (``FAILURE_REASONS``), and per histogram
``H`` (``detect``, ``generate``, ``encode``, ``job``) ``H:count``, ``H:sum`` and ``H:le:BOUND``: the observations in
``(previous bound, BOUND]`` (made cumulative at scrape time). The buckets are fixed (``BUCKETS``).

Who may read ``/metrics``: clients whose address (after ``ProxyHeadersMiddleware``: the real client behind a trusted
proxy) is in ``SIMPSONIZE_METRICS_ALLOW_IPS`` (default loopback only; ``*`` anyone; ``off`` turns the endpoint off,
404). Others get 403. The numbers hold no job ids or addresses, but there is no reason to show them to the world.

No torch here: the web process and the workers import this module.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import OutOfMemoryError, RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simpsonize.queue import rq_adapter
from simpsonize.queue.redis_atomic import atomically

log = logging.getLogger("simpsonize.metrics")

METRICS_TTL = 30 * 24 * 3600  # seconds; renewed by every job
# Seconds. Detect takes ~0.05-1 s on a CPU, generate ~0.01-5 s depending on size and device, composite ~0.01-0.1 s,
# encode ~0.01 s (0.1-0.6 s with a lossless composite).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STAGES = ("detect", "generate", "composite", "encode")
FAILURE_REASONS = ("photo", "timeout", "out_of_memory", "full", "error", "worker_stopped")
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route answers (404s, redirects to a slash)
FORBIDDEN = "Metrics are served only to the addresses in SIMPSONIZE_METRICS_ALLOW_IPS."


def metrics_key(prefix: str, queue_name: str) -> str:
    return f"{prefix}:metrics:{queue_name}"


def _bound(value: float) -> str:
    return repr(float(value))


# -- writing (workers, the reaper) -----------------------------------------------------------------------------------


def _observe(pipe: Pipeline, key: str, name: str, seconds: float) -> None:
    pipe.hincrby(key, f"{name}:count", 1)
    pipe.hincrbyfloat(key, f"{name}:sum", seconds)
    for bound in BUCKETS:
        if seconds <= bound:
            pipe.hincrby(key, f"{name}:le:{_bound(bound)}", 1)
            break  # above the last bound: counted in +Inf (count) only


def record(
    redis: Redis | Pipeline,
    prefix: str,
    queue_name: str,
    outcome: str,
    reason: str | None = None,
    timings: dict[str, float] | None = None,
) -> None:
    """Add one job's end to the queue's metrics: ``outcome`` is ``finished``, ``failed`` (with a ``reason`` from
    ``FAILURE_REASONS``) or ``retried``; ``timings`` (seconds) the stages it went through (``STAGES`` and ``job``).
    On a pipeline the commands join it; else they run as one transaction."""
    key = metrics_key(prefix, queue_name)

    def queue(pipe: Pipeline) -> None:
        pipe.hincrby(key, f"failed:{reason}" if outcome == "failed" else outcome, 1)
        for name in (*STAGES, "job"):
            value = (timings or {}).get(name)
            if isinstance(value, (int, float)) and value >= 0:
                _observe(pipe, key, name, float(value))
        pipe.expire(key, METRICS_TTL)

    atomically(redis, queue)


def failure_reason(exc: BaseException) -> str:
    """Which of ``FAILURE_REASONS`` an exception out of the job function is (by class name: no model import)."""
    if isinstance(exc, OutOfMemoryError):  # redis's: Redis refused to store the result (simpsonize.queue.capacity)
        return "full"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "SimpsonizeError" in names:
        return "photo"  # no face, unreadable, input gone: the photo's fault, explained to the user
    if "JobTimeoutException" in names:
        return "timeout"
    if isinstance(exc, MemoryError) or "OutOfMemoryError" in names:
        return "out_of_memory"
    return "error"


def observed(job_function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate the RQ job function ``f(job_id, key_prefix, ...)``: its end (finished, failed or about to be retried
    by RQ) and the timings it returns (``result["timings"]``) go into the metrics of the job's queue. A Redis error
    while recording is logged, never the job's failure."""

    @functools.wraps(job_function)
    def wrapper(job_id: str, key_prefix: str, *args: Any, **kwargs: Any) -> Any:
        from rq import get_current_job

        job = get_current_job()
        try:
            result = job_function(job_id, key_prefix, *args, **kwargs)
        except Exception as exc:
            if job is not None:
                if job.should_retry:  # RQ enqueues it again after this: not a failure (yet)
                    _safely(record, job.connection, key_prefix, job.origin, "retried")
                else:
                    _safely(record, job.connection, key_prefix, job.origin, "failed", failure_reason(exc))
            raise
        if job is not None:
            timings = result.get("timings") if isinstance(result, dict) else None
            _safely(record, job.connection, key_prefix, job.origin, "finished", timings=timings)
        return result

    return wrapper


def _safely(function: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    try:
        function(*args, **kwargs)
    except RedisError as exc:
        log.warning("Could not record job metrics: %s", exc)


# -- reading (the web process, at scrape time) -----------------------------------------------------------------------


class RedisCollector:
    """The workers' job metrics, the queue depth and the live workers, read from Redis at each scrape."""

    def __init__(self, store) -> None:  # simpsonize.queue.jobstore.JobStore
        self.store = store

    def collect(self) -> Iterable[Any]:
        store = self.store
        up = GaugeMetricFamily(
            "simpsonize_redis_up", "1 when Redis answered this scrape, else 0 (and no job, queue or worker metrics)."
        )
        try:
            fields = {
                k.decode(): v.decode()
                for k, v in store.redis.hgetall(metrics_key(store.prefix, store.queue.name)).items()
            }
            queued = store.redis.llen(store.queue.key)
            running = rq_adapter.running_count(store.queue)
            workers = store.live_workers()
            memory = store.redis.info("memory")
        except RedisError as exc:
            log.warning("Metrics: Redis is not reachable (%s).", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        def number(name: str) -> float:
            try:
                return float(fields.get(name, 0))
            except ValueError:
                return 0.0

        finished = CounterMetricFamily("simpsonize_jobs_finished", "Jobs that produced a result (all workers).")
        finished.add_metric([], number("finished"))
        yield finished
        failed = CounterMetricFamily(
            "simpsonize_jobs_failed",
            "Jobs that failed (all workers), by reason: photo (no "
            "face, unreadable), timeout, out_of_memory, full (Redis had no room for the "
            "result), error (a bug), worker_stopped (its worker died).",
            labels=["reason"],
        )
        for reason in FAILURE_REASONS:
            failed.add_metric([reason], number(f"failed:{reason}"))
        yield failed
        retried = CounterMetricFamily(
            "simpsonize_jobs_retried", "Job runs that failed and were queued again by RQ's retry (all workers)."
        )
        retried.add_metric([], number("retried"))
        yield retried

        def buckets(name: str) -> tuple[list[tuple[str, float]], float]:
            cumulative, rows = 0.0, []
            for bound in BUCKETS:
                cumulative += number(f"{name}:le:{_bound(bound)}")
                rows.append((_bound(bound), cumulative))
            rows.append(("+Inf", max(cumulative, number(f"{name}:count"))))
            return rows, number(f"{name}:sum")

        stages = HistogramMetricFamily(
            "simpsonize_job_stage_seconds",
            "Time of each stage of finished jobs: face detection and alignment, the generator, PNG encoding.",
            labels=["stage"],
        )
        for stage in STAGES:
            stages.add_metric([stage], *buckets(stage))
        yield stages
        rows, total = buckets("job")
        yield HistogramMetricFamily(
            "simpsonize_job_duration_seconds",
            "Whole run of finished jobs in the worker (reading the photo to storing the result).",
            buckets=rows,
            sum_value=total,
        )
        yield GaugeMetricFamily("simpsonize_queue_depth", "Jobs waiting in the queue.", value=queued)
        yield GaugeMetricFamily(
            "simpsonize_jobs_in_progress", "Jobs a worker has started and not ended.", value=running
        )
        yield GaugeMetricFamily(
            "simpsonize_workers_live",
            "Workers of this queue whose heartbeat is at most 2 heartbeat intervals old (as /readyz counts them).",
            value=workers,
        )
        yield GaugeMetricFamily(
            "simpsonize_redis_used_memory_bytes",
            "Redis's used_memory (INFO memory).",
            value=int(memory.get("used_memory", 0)),
        )
        yield GaugeMetricFamily(
            "simpsonize_redis_max_memory_bytes",
            "Redis's maxmemory (0: no limit); uploads are "
            "refused before used memory gets there (simpsonize.queue.capacity).",
            value=int(memory.get("maxmemory", 0)),
        )


class WebMetrics:
    """The metrics registry of one app: request metrics of this process, the Redis collector, process metrics."""

    def __init__(self, store) -> None:
        self.registry = CollectorRegistry()  # no describe-by-collecting: no Redis call at start
        self.requests = Counter(
            "simpsonize_http_requests",
            "HTTP requests answered by this web process, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "simpsonize_http_request_duration_seconds",
            "Time to answer HTTP requests (long "
            "polls included: ?wait= holds the request), by method and route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.memory_refusals = Counter(
            "simpsonize_uploads_refused_memory",
            "Uploads this web process refused "
            "with 503 because Redis had no room for one more job "
            "(simpsonize.queue.capacity).",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.registry.register(RedisCollector(store))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_template(app: ASGIApp, scope: Scope, original: Scope | None = None) -> str:
    """The template of the route that answered (or would have answered) the request, e.g. ``/api/v1/jobs/{job_id}``.

    ``scope`` is the request's scope after routing (``scope["route"]``), ``original`` a copy from before (a mount
    rewrites ``root_path``). Requests that no route took (refused by a middleware before routing: wrong Host,
    cross-site; a mount) get the template their path matches."""
    route = scope.get("route")
    if getattr(route, "path", None) is None:
        route = _match(getattr(getattr(app, "router", None), "routes", []), dict(original or scope))
    if route is None:
        return UNMATCHED
    return f"{route.path}/{{path}}" if isinstance(route, Mount) else route.path


def _match(routes, scope: Scope):
    """The first route (looking inside included routers) whose template matches the request, or None."""
    for candidate in routes:
        if getattr(candidate, "path", None) is None:  # an included router (FastAPI >= 0.16x wraps them)
            inner = getattr(candidate, "original_router", candidate)
            found = _match(getattr(inner, "routes", []), scope)
        else:
            found = candidate if candidate.matches(scope)[0] is not Match.NONE else None
        if found is not None:
            return found
    return None


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: WebMetrics, root: ASGIApp) -> None:
        self.app = app
        self.metrics = metrics
        self.root = root  # the FastAPI app, whose routes give the templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        original = dict(scope)
        status = 500  # what the client gets when the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = route_template(self.root, scope, original)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def allowed_networks(setting: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | str | None:
    """``SIMPSONIZE_METRICS_ALLOW_IPS`` parsed: None (off), ``"*"`` (anyone) or networks. Raises ValueError."""
    items = [item.strip() for item in setting.split(",") if item.strip()]
    if not items or [item.lower() for item in items] == ["off"]:
        return None
    if "*" in items:
        return "*"
    try:
        return [ipaddress.ip_network(item, strict=False) for item in items]
    except ValueError as exc:
        raise ValueError(
            f"SIMPSONIZE_METRICS_ALLOW_IPS must list addresses or networks, '*' or 'off' ({exc})."
        ) from None


def client_allowed(host: str | None, networks) -> bool:
    if networks == "*":
        return True
    try:
        address = ipaddress.ip_address((host or "").split("%")[0])
    except ValueError:
        return False  # a unix socket peer, a test client's made-up name
    if getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def install(app, settings) -> None:
    """Add ``GET /metrics`` and the request middleware to ``app`` (call it last: the middleware goes outermost, so
    requests that the Host and cross-site checks refuse are counted too)."""
    metrics = WebMetrics(app.state.store)
    networks = allowed_networks(settings.metrics_allow_ips)
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    def scrape(request: Request) -> Response:
        if networks is None:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if not client_allowed(request.client.host if request.client else None, networks):
            return JSONResponse({"detail": FORBIDDEN}, status_code=403)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    app.add_middleware(RequestMetrics, metrics=metrics, root=app)
