"""Prometheus metrics: every family genstack exports is defined here, once.

Servers, workers and the console serve them on `GENSTACK_METRICS_PORT` (path /metrics; nothing is
served when it is unset). The families are cheap to update when nobody scrapes them, so the code
observes unconditionally; `start()` only decides whether an HTTP endpoint exists.

A Celery worker with a forking pool (`--concurrency` > 1) needs prometheus-client's multiprocess
mode: shared/runner.py points PROMETHEUS_MULTIPROC_DIR at a fresh folder before anything imports
prometheus_client, every child writes its values there, and the parent's endpoint adds them up.

Names follow Prometheus conventions: `_total` counters, `_seconds` histograms, base units. The
Grafana dashboard in deploy/grafana/ queries only these names (tests/unit/test_metrics.py checks).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets: sub-millisecond (embedded search) to minutes (a job, a video).
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_RATE = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)

# -- transports ---------------------------------------------------------------------------------------
GRPC_REQUESTS = Counter("genstack_grpc_requests", "gRPC requests served, by service, method and status code",
                        ["service", "method", "code"])
GRPC_LATENCY = Histogram("genstack_grpc_request_seconds", "gRPC request latency (whole stream for streaming RPCs)",
                         ["service", "method"], buckets=_FAST)
GRPC_IN_FLIGHT = Gauge("genstack_grpc_in_flight_requests", "gRPC requests being served now",
                       ["service", "method"], multiprocess_mode="livesum")
CELERY_TASKS = Counter("genstack_celery_tasks", "Celery tasks finished, by task name and outcome "
                       "(success, failure, retry, revoked)", ["task", "outcome"])
CELERY_RUNTIME = Histogram("genstack_celery_task_seconds", "Celery task run time", ["task"], buckets=_FAST)
CELERY_IN_FLIGHT = Gauge("genstack_celery_in_flight_tasks", "Celery tasks running now", ["task"],
                         multiprocess_mode="livesum")
# genstack_celery_queue_depth{queue} is collected at scrape time (QueueDepthCollector)

# -- generator ---------------------------------------------------------------------------------------
GEN_TOKENS = Counter("genstack_generator_tokens", "Completion tokens generated", ["model"])
GEN_TOKENS_PER_S = Histogram("genstack_generator_tokens_per_second", "Decode speed of one generation",
                             ["model"], buckets=_RATE)
GEN_TTFT = Histogram("genstack_generator_time_to_first_token_seconds", "Time to first token (queue + prefill)",
                     ["model"], buckets=_FAST)
GEN_BATCH = Histogram("genstack_generator_batch_size", "Generations the engine was running together when one "
                      "was admitted", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64))
GEN_QUEUE = Gauge("genstack_generator_queue_depth", "Generations waiting for the engine", ["model"],
                  multiprocess_mode="livesum")
GEN_REQUESTS = Counter("genstack_generator_generations", "Generations finished, by finish reason",
                       ["model", "reason"])

# -- image and video -----------------------------------------------------------------------------------
IMAGE_STEPS = Counter("genstack_image_denoising_steps", "Image denoising steps run")
IMAGE_STEPS_PER_S = Histogram("genstack_image_steps_per_second", "Denoising steps per second of one request",
                              buckets=_RATE)
IMAGE_IMAGES = Counter("genstack_image_images", "Images generated")
VIDEO_STEPS = Counter("genstack_video_denoising_steps", "Video denoising steps run")
VIDEO_STEPS_PER_S = Histogram("genstack_video_steps_per_second", "Denoising steps per second of one request",
                              buckets=_RATE)
VIDEO_CLIPS = Counter("genstack_video_clips", "Clips generated")

# -- retriever ---------------------------------------------------------------------------------------
SEARCH_LATENCY = Histogram("genstack_retriever_search_seconds", "Search latency by mode", ["mode"], buckets=_FAST)
INGEST_CHUNKS = Counter("genstack_retriever_ingested_chunks", "Chunks ingested (embedded and stored)")
INGEST_CHUNKS_PER_S = Histogram("genstack_retriever_ingest_chunks_per_second", "Ingest speed of one batch",
                                buckets=_RATE)

# -- validator ---------------------------------------------------------------------------------------
VERDICTS = Counter("genstack_validator_verdicts", "Verdicts by policy and result", ["policy", "passed"])
CHECKS = Counter("genstack_validator_checks", "Check results by policy and check", ["policy", "check", "passed"])

# -- orchestrator ------------------------------------------------------------------------------------
JOBS = Counter("genstack_orchestrator_jobs", "Job state changes: queued, running, succeeded, failed, cancelled",
               ["kind", "state"])
JOBS_RUNNING = Gauge("genstack_orchestrator_jobs_running", "Jobs running in this process", ["kind"],
                     multiprocess_mode="livesum")
JOB_SECONDS = Histogram("genstack_orchestrator_job_seconds", "Job run time by kind and final state",
                        ["kind", "state"], buckets=_FAST)
STEP_SECONDS = Histogram("genstack_orchestrator_step_seconds", "Step latency by step and status",
                         ["step", "status"], buckets=_FAST)
RETRIES = Counter("genstack_orchestrator_retries", "Pipeline retries after a failed verdict", ["kind", "step"])
CALL_RETRIES = Counter("genstack_orchestrator_call_retries", "Service calls made again after a transient error",
                       ["step", "code"])
ESCALATIONS = Counter("genstack_orchestrator_cascade_escalations", "Retries that moved to the next model of "
                      "the cascade", ["kind", "from_model", "to_model"])

# -- console ----------------------------------------------------------------------------------------
CONSOLE_REQUESTS = Counter("genstack_console_http_requests", "Console HTTP requests", ["path", "status"])


def _label(value: object) -> str:
    return str(value) if value not in (None, "") else "-"


def observe_generation(model: str, finished) -> None:
    """One finished generation (services.generator.engine.Finished)."""
    model = _label(model)
    GEN_TOKENS.labels(model).inc(finished.completion_tokens)
    GEN_REQUESTS.labels(model, _label(finished.reason)).inc()
    GEN_TTFT.labels(model).observe(finished.ttft_ms / 1000)
    if finished.tokens_per_second > 0:
        GEN_TOKENS_PER_S.labels(model).observe(finished.tokens_per_second)


def observe_engine(model: str, engine) -> None:
    """Queue depth and batch size of a generator engine when a request is admitted (what the engine
    exposes: `queue_depth()`/`batch_size()` when it has them, else its queue's size and 1)."""
    model = _label(model)
    depth = getattr(engine, "queue_depth", None)
    try:
        n = depth() if callable(depth) else engine._queue.qsize()  # noqa: SLF001 - the sequential engine
    except Exception:  # noqa: BLE001 - an engine without a queue
        n = 0
    GEN_QUEUE.labels(model).set(n)
    size = getattr(engine, "batch_size", None)
    GEN_BATCH.labels(model).observe((size() if callable(size) else size) or 1)


def observe_steps(kind: str, steps: int, seconds: float, items: int = 1) -> None:
    """Denoising steps of one image or video request ("image" or "video")."""
    total, rate, made = (IMAGE_STEPS, IMAGE_STEPS_PER_S, IMAGE_IMAGES) if kind == "image" else \
        (VIDEO_STEPS, VIDEO_STEPS_PER_S, VIDEO_CLIPS)
    total.inc(steps)
    made.inc(items)
    if seconds > 0 and steps:
        rate.observe(steps / seconds)


def observe_ingest(chunks: int, seconds: float) -> None:
    INGEST_CHUNKS.inc(chunks)
    if seconds > 0 and chunks:
        INGEST_CHUNKS_PER_S.observe(chunks / seconds)


def observe_verdict(policy: str, passed: bool, checks) -> None:
    """A validator verdict: `checks` is an iterable of (check name, passed)."""
    policy = _label(policy)
    VERDICTS.labels(policy, str(bool(passed)).lower()).inc()
    for name, ok in checks:
        CHECKS.labels(policy, _label(name), str(bool(ok)).lower()).inc()


class QueueDepthCollector:
    """genstack_celery_queue_depth{queue}: messages waiting in each service's Celery queue (Redis
    list length), read when Prometheus scrapes."""

    def __init__(self, redis_url: str, queues: list[str]):
        self._url, self._queues = redis_url, queues
        self._redis = None

    def collect(self):
        family = GaugeMetricFamily("genstack_celery_queue_depth", "Messages waiting in a service's Celery queue",
                                   labels=["queue"])
        try:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(self._url, socket_timeout=0.5, socket_connect_timeout=0.5)
            pipe = self._redis.pipeline(transaction=False)
            for q in self._queues:
                pipe.llen(q)
            for q, n in zip(self._queues, pipe.execute(), strict=True):
                family.add_metric([q], n)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because Redis is away
            log.debug("queue depth unavailable: %s", exc)
        yield family


_started: dict[str, int] = {}
_lock = threading.Lock()


def registry():
    """The registry an endpoint serves: the process's default one, or (multiprocess mode) one that
    adds up every child's values."""
    from prometheus_client import REGISTRY

    folder = os.environ.get(_MULTIPROC_ENV)
    if not folder:
        return REGISTRY
    from prometheus_client import multiprocess

    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg, path=folder)
    return reg


def start(label: str, port: int | None = None, host: str | None = None) -> int | None:
    """Serve /metrics for this process on `port` (default GENSTACK_METRICS_PORT; 0 = any free port);
    returns the port, or None when metrics are off. Prints `GENSTACK_METRICS <label> <port>`."""
    from shared.config import get_settings
    from shared.services import SERVICES

    settings = get_settings()
    port = settings.metrics_port if port is None else port
    if port is None:
        return None
    with _lock:
        if _started:  # one endpoint per process
            return next(iter(_started.values()))
        reg = registry()
        reg.register(QueueDepthCollector(settings.redis_url, [s.queue for s in SERVICES.values() if s.implemented]))
        server, _thread = start_http_server(port, addr=host or settings.grpc_bind_host, registry=reg)
        _started[label] = actual = server.server_port
    log.info("metrics on /metrics", extra={"fields": {"port": actual}})
    print(f"GENSTACK_METRICS {label} {actual}", flush=True)
    return actual


def child_exited(pid: int) -> None:
    """A forked worker ended: drop its live gauges (multiprocess mode)."""
    if os.environ.get(_MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# -- hooks: a gRPC server interceptor and Celery signals ------------------------------------------------

def _rpc_labels(full_method: str) -> tuple[str, str]:
    """("generator", "GenerateStream") from "/genstack.generator.v1.GeneratorService/GenerateStream"."""
    service, _, method = full_method.lstrip("/").partition("/")
    parts = service.split(".")
    if len(parts) >= 3 and parts[0] == "genstack":
        service = parts[1]
    return service, method


def _code_of(context, exc: BaseException | None) -> str:
    import grpc

    code = None
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - a context without code()
        code = None
    if code is None:
        if exc is None:
            return "OK"
        return "CANCELLED" if not context.is_active() else "UNKNOWN"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


def server_interceptor():
    """Counts, times and tracks in-flight requests of every RPC (streams: until the last message)."""
    import grpc

    class _MetricsInterceptor(grpc.ServerInterceptor):
        def intercept_service(self, continuation, handler_call_details):
            handler = continuation(handler_call_details)
            if handler is None or not (handler.unary_unary or handler.unary_stream):
                return handler
            service, method = _rpc_labels(handler_call_details.method)
            latency, in_flight = GRPC_LATENCY.labels(service, method), GRPC_IN_FLIGHT.labels(service, method)

            def done(context, t0, exc):
                in_flight.dec()
                latency.observe(time.perf_counter() - t0)
                GRPC_REQUESTS.labels(service, method, _code_of(context, exc)).inc()

            if handler.unary_unary:
                inner = handler.unary_unary

                def unary(request, context):
                    t0, exc = time.perf_counter(), None
                    in_flight.inc()
                    try:
                        return inner(request, context)
                    except BaseException as e:
                        exc = e
                        raise
                    finally:
                        done(context, t0, exc)

                return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                                           handler.response_serializer)
            inner_stream = handler.unary_stream

            def stream(request, context):
                t0, exc = time.perf_counter(), None
                in_flight.inc()
                try:
                    yield from inner_stream(request, context)
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    done(context, t0, exc)

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                        handler.response_serializer)

    return _MetricsInterceptor()


_task_started: dict[str, float] = {}


def connect_celery_signals() -> None:
    """Task counts by outcome, run time and in-flight tasks, from Celery's signals (idempotent)."""
    global _signals_connected
    if _signals_connected:
        return
    _signals_connected = True
    from celery import signals

    @signals.task_prerun.connect(weak=False)
    def _prerun(task_id=None, task=None, **_kw):
        _task_started[task_id] = time.perf_counter()
        CELERY_IN_FLIGHT.labels(task.name).inc()

    @signals.task_postrun.connect(weak=False)
    def _postrun(task_id=None, task=None, state=None, **_kw):
        t0 = _task_started.pop(task_id, None)
        CELERY_IN_FLIGHT.labels(task.name).dec()
        if t0 is not None:
            CELERY_RUNTIME.labels(task.name).observe(time.perf_counter() - t0)
        outcome = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry", "REVOKED": "revoked"}.get(
            state or "", (state or "unknown").lower())
        CELERY_TASKS.labels(task.name, outcome).inc()

    @signals.task_revoked.connect(weak=False)
    def _revoked(request=None, **_kw):
        name = getattr(request, "task", None) or getattr(request, "name", None) or "unknown"
        CELERY_TASKS.labels(name, "revoked").inc()

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_exit(pid=None, **_kw):
        # a prefork child that ends takes its live gauges (in-flight tasks) with it; counters stay
        child_exited(pid or os.getpid())


_signals_connected = False


class track_job:  # noqa: N801 - used as a context manager, like contextlib's
    """Around one run of a job: jobs running now, the running and final state counts, run time.
    `state_name()` gives the job's state name when the run ends (e.g. "JOB_STATE_SUCCEEDED")."""

    def __init__(self, kind: str, state_name):
        self.kind, self.state_name = _label(kind), state_name

    def __enter__(self):
        self.t0 = time.perf_counter()
        JOBS_RUNNING.labels(self.kind).inc()
        JOBS.labels(self.kind, "running").inc()
        return self

    def __exit__(self, *exc) -> None:
        JOBS_RUNNING.labels(self.kind).dec()
        state = self.state_name().removeprefix("JOB_STATE_").lower()
        if state not in ("running", "queued"):  # not a run that stopped without ending (lease lost)
            JOBS.labels(self.kind, state).inc()
            JOB_SECONDS.labels(self.kind, state).observe(time.perf_counter() - self.t0)


def watch_generation(events, model: str, engine=None):
    """Pass a generation's engine events through, observing them: the engine's queue and batch at
    admission, tokens, TTFT and speed when it finishes, and (tracing on) `generator.prefill` and
    `generator.decode` spans placed by the engine's own timings (it runs on its own thread)."""
    from shared import tracing

    started_ns = time.time_ns()
    if engine is not None:
        observe_engine(model, engine)
    for event in events:
        if hasattr(event, "ttft_ms") and hasattr(event, "completion_tokens"):
            observe_generation(model, event)
            if tracing.enabled():
                ms = 1_000_000
                queued = started_ns + int(event.queue_ms * ms)
                first = max(queued, started_ns + int(event.ttft_ms * ms))
                end = max(first, queued + int(event.total_ms * ms))
                attrs = {"genstack.model": model, "genstack.prompt_tokens": event.prompt_tokens}
                tracing.finished_span("generator.prefill", queued, first, attrs)
                tracing.finished_span("generator.decode", first, end, {
                    **attrs, "genstack.completion_tokens": event.completion_tokens,
                    "genstack.tokens_per_second": round(event.tokens_per_second, 2),
                    "genstack.finish_reason": event.reason})
        yield event
