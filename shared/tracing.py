"""OpenTelemetry tracing across gRPC, Celery, Redis and the orchestrator's steps.

Off unless the standard variables ask for it: `OTEL_TRACES_EXPORTER` (otlp, console; "none" is off)
or `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true`
wins over both. Everything else is read by the SDK itself (`OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_EXPORTER_OTLP_PROTOCOL`, headers, ...).
While off, genstack sets nothing up (no provider, exporter or instrumentation; this module imports
no OpenTelemetry code) and `span()` returns a shared do-nothing object, so the instrumented code
paths cost a function call. (redis-py 8 imports the OpenTelemetry API by itself when it is
installed; with no provider set it records nothing.)

What one job's trace holds: the client's call (gRPC client instrumentation, or the Celery
producer span), the orchestrator's server span or task span, the job span (`job <kind>`, whose
trace id the job record keeps), one span per step (`step <name>`), each service call the step
makes (gRPC client + server spans, or Celery publish + run spans), and the work inside the service
(`retriever.search`, `generator.prefill`, `generator.decode`, `validator.validate`, ...). Redis
commands inside a trace appear as children; Redis commands outside any trace (leases, heartbeats)
are not recorded. Celery's streaming results travel through Redis streams, which carry no context
by themselves: every entry has a `traceparent` field, and the reader's span links to the writer's.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_provider = None  # the SDK TracerProvider once set up
_service = "genstack"


def wanted() -> bool:
    """Whether the environment asks for traces (the standard OTEL_* variables)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def enabled() -> bool:
    return _provider is not None


def _exporters():
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    out = []
    for name in names:
        if name == "otlp":
            protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").lower()
            if protocol.startswith("http"):
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            out.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(ConsoleSpanExporter())
        elif name != "none":
            log.warning("OTEL_TRACES_EXPORTER %r is not supported here (otlp, console, none)", name)
    return out


def setup(service: str, exporter: Any = None, *, instrument: bool = True) -> bool:
    """Start tracing in this process as `service` when the environment asks for it, or always when
    an `exporter` is given (tests pass an InMemorySpanExporter; its spans are exported at once).
    Instruments gRPC clients, Celery and Redis. Idempotent; returns whether tracing is on."""
    global _provider, _service
    with _lock:
        if _provider is not None:
            return True
        if exporter is None and not wanted():
            return False
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

        _service = service
        attrs = {"service.namespace": "genstack"}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attrs["service.name"] = f"genstack-{service}"
        resource = Resource.create(attrs)
        processors = [SimpleSpanProcessor(exporter)] if exporter is not None else \
            [BatchSpanProcessor(e) for e in _exporters()]
        provider = TracerProvider(resource=resource)
        # Redis commands are recorded only inside a trace: leases and polls alone make no traces.
        redis_provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_OFF))
        for p in processors:
            provider.add_span_processor(p)
            redis_provider.add_span_processor(p)
        trace.set_tracer_provider(provider)
        _provider = provider
        if instrument:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor
            from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
            from opentelemetry.instrumentation.redis import RedisInstrumentor

            # grpc.intercept_channel rejects client_interceptor(); the instrumentor wraps channels
            GrpcInstrumentorClient().instrument(tracer_provider=provider)
            CeleryInstrumentor().instrument(tracer_provider=provider)
            RedisInstrumentor().instrument(tracer_provider=redis_provider)
        atexit.register(shutdown)
    log.info("tracing on", extra={"fields": {"exporters": os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
                                             if exporter is None else type(exporter).__name__}})
    return True


def shutdown() -> None:
    """Export what is buffered (a forked Celery child calls this when it exits)."""
    provider = _provider
    if provider is not None:
        try:
            provider.force_flush(5000)
        except Exception:  # noqa: BLE001 - never fail an exit because the collector is away
            log.debug("span flush failed", exc_info=True)


def server_interceptors() -> list:
    """gRPC server interceptors that continue the caller's trace (none while tracing is off)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor(tracer_provider=_provider)]


class _NoSpan:
    """What `span()` gives while tracing is off."""

    def set_attribute(self, *_a, **_k) -> None:
        pass

    def set_attributes(self, *_a, **_k) -> None:
        pass

    def add_event(self, *_a, **_k) -> None:
        pass

    def record_exception(self, *_a, **_k) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


NO_SPAN = _NoSpan()


def span(name: str, attributes: dict | None = None, *, parent: str | None = None, links: list[str] = (),
         start_time: int | None = None):
    """A context manager for a span named `name`, child of the current span (or of the W3C
    `parent` traceparent), linked to the `links` traceparents; NO_SPAN while tracing is off."""
    if _provider is None:
        return NO_SPAN
    from opentelemetry import trace

    ctx = _context(parent) if parent else None
    link_objs = [trace.Link(c) for c in (_span_context(tp) for tp in links) if c is not None]
    return trace.get_tracer("genstack").start_as_current_span(
        name, context=ctx, attributes=_clean(attributes), links=link_objs, start_time=start_time,
        record_exception=True, set_status_on_exception=True)


def finished_span(name: str, start_ns: int, end_ns: int, attributes: dict | None = None) -> None:
    """Record a child span of the current one after the fact (work timed elsewhere, e.g. the
    generator engine's prefill and decode, which run on the engine's own thread)."""
    if _provider is None:
        return
    from opentelemetry import trace

    s = trace.get_tracer("genstack").start_span(name, attributes=_clean(attributes), start_time=start_ns)
    s.end(end_time=max(end_ns, start_ns))


def record(name: str, seconds: float, attributes: dict | None = None) -> None:
    """A child span of the current one for work that just ended after `seconds` (a one-line hook
    for code that already times itself)."""
    if _provider is None:
        return
    import time

    end = time.time_ns()
    finished_span(name, end - int(max(seconds, 0.0) * 1e9), end, attributes)


def _clean(attributes: dict | None) -> dict | None:
    if not attributes:
        return None
    return {k: v for k, v in attributes.items() if v is not None and isinstance(v, str | bool | int | float)}


def _context(traceparent: str):
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def _span_context(traceparent: str):
    from opentelemetry import trace

    if not traceparent:
        return None
    sc = trace.get_current_span(_context(traceparent)).get_span_context()
    return sc if sc.is_valid else None


def traceparent() -> str:
    """The current span's W3C traceparent ("" while off or outside a span)."""
    if _provider is None:
        return ""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


def current_ids() -> tuple[str, str]:
    """(trace id, span id) of the current span in hex, or ("", "")."""
    if _provider is None:
        return "", ""
    from opentelemetry import trace

    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return "", ""
    return f"{sc.trace_id:032x}", f"{sc.span_id:016x}"


def trace_id_of(traceparent_: str) -> str:
    parts = traceparent_.split("-")
    return parts[1] if len(parts) == 4 else ""


def job_origin() -> str:
    """The traceparent a new job's span will be a child of: the current span (the SubmitJob call or
    the Celery task), or a fresh trace's first span when there is none (an embedded submission)."""
    if _provider is None:
        return ""
    tp = traceparent()
    if tp:
        return tp
    with span("orchestrator.submit"):
        return traceparent()


def stream_fields() -> dict[str, str]:
    """Fields to add to a Redis stream entry so that its reader can link to the writer's span."""
    tp = traceparent()
    return {"traceparent": tp} if tp else {}


class _StreamReader:
    """A span over the reading of one Redis stream, linked to the span that wrote its first entry.
    Never made current: the reader is a generator, and its consumer's context must not change."""

    def __init__(self, name: str, attributes: dict | None):
        from opentelemetry import trace

        self._span = trace.get_tracer("genstack").start_span(name, attributes=_clean(attributes),
                                                             kind=trace.SpanKind.CONSUMER)
        self._linked = False
        self.entries = 0

    def saw(self, fields: dict) -> None:
        self.entries += 1
        if not self._linked and fields.get("traceparent"):
            sc = _span_context(fields["traceparent"])
            if sc is not None:
                self._span.add_link(sc, {"genstack.link": "stream writer"})
                self._linked = True

    def end(self, error: BaseException | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("genstack.stream.entries", self.entries)
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        self._span.end()


class _NoReader:
    def saw(self, fields: dict) -> None:
        pass

    def end(self, error: BaseException | None = None) -> None:
        pass


_NO_READER = _NoReader()


def stream_reader(name: str, attributes: dict | None = None):
    """See _StreamReader; a do-nothing reader while tracing is off."""
    return _NO_READER if _provider is None else _StreamReader(name, attributes)


_celery_connected = False


def connect_celery_signals() -> None:
    """A forked Celery child sets tracing up for itself (a BatchSpanProcessor's thread does not
    survive a fork) and flushes its spans when it exits. Idempotent."""
    global _celery_connected
    if _celery_connected:
        return
    _celery_connected = True
    from celery import signals

    @signals.worker_process_init.connect(weak=False)
    def _child_init(**_kw):
        from shared import logging as glog

        setup(glog._process_service)  # noqa: SLF001 - the service this worker process runs

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_exit(**_kw):
        shutdown()
