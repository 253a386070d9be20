"""One trace per job, over gRPC and over Celery: a real answer job (retrieve -> build context ->
generate -> cite -> validate) with real models, real gRPC servers on 127.0.0.1 and real Celery
workers on Redis, every span kept by an in-memory exporter. The servers and workers run in this
process (threads) so that one exporter sees every hop; the context still crosses each hop the way
it does between processes, in gRPC metadata, Celery message headers and Redis stream entries.

The assertions walk parent links from the client's span down to the work inside every service
the job touched."""

from __future__ import annotations

import contextlib
import json
import logging
import time

import pytest

from genstack.generator.v1 import generator_pb2 as gpb
from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from genstack.retriever.v1 import retriever_pb2 as rpb
from tests.support import unique

pytestmark = pytest.mark.slow

SMALL = "smollm2-135m"
DOCS = {
    "paris": "Paris is the capital of France. The Eiffel Tower in Paris was completed in 1889.",
    "bees": "Honey bees tell each other where flowers are with a waggle dance inside the hive.",
}
SERVICES = ("retriever", "generator", "validator")


class Tree:
    """The finished spans of one trace, by id, with parent and child lookups."""

    def __init__(self, spans, trace_id: int):
        self.spans = [s for s in spans if s.context.trace_id == trace_id]
        self.by_id = {s.context.span_id: s for s in self.spans}

    def named(self, name: str, kind=None) -> list:
        return [s for s in self.spans if s.name == name and (kind is None or s.kind == kind)]

    def one(self, name: str, kind=None):
        found = self.named(name, kind)
        assert len(found) == 1, (name, [s.name for s in self.spans])
        return found[0]

    def parent(self, span):
        return self.by_id.get(span.parent.span_id) if span.parent is not None else None

    def children(self, span, name: str | None = None, kind=None) -> list:
        return [s for s in self.spans if s.parent is not None and s.parent.span_id == span.context.span_id
                and (name is None or s.name == name) and (kind is None or s.kind == kind)]

    def child(self, span, name: str, kind=None):
        found = self.children(span, name, kind)
        assert len(found) == 1, (span.name, name, [c.name for c in self.children(span)])
        return found[0]


@pytest.fixture(scope="module")
def traced(redis_client, tmp_path_factory):
    """Tracing on with an in-memory exporter; the three services' APIs loaded once (shared by
    their gRPC servers and their Celery workers); gRPC servers on ephemeral ports."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared import client as client_mod
    from shared import tracing
    from shared.config import get_client_settings
    from shared.grpc_server import Server
    from shared.services import get_spec, load

    exporter = InMemorySpanExporter()
    tracing.setup("test", exporter=exporter)
    apis = {name: load(get_spec(name).api)() for name in SERVICES}
    servers = {}
    env = {}
    try:
        for name, api in apis.items():
            api.warm_up()
            client_mod._inproc_apis[name] = api  # noqa: SLF001 - the Celery tasks use the same loaded models
            servers[name] = Server(api, 0, host="127.0.0.1").start(warm_up_in_background=False)
            env[f"GENSTACK_{name.upper()}_ADDRESS"] = f"127.0.0.1:{servers[name].port}"
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            get_client_settings.cache_clear()
            collection = unique("traced").replace("-", "_")
            from shared.clients.retriever import RetrieverClient

            with RetrieverClient("grpc") as rc:
                rc.ingest_documents(rpb.IngestDocumentsRequest(collection=collection, documents=[
                    rpb.Document(id=k, text=v, content_type="text/plain", source=f"{k}.txt") for k, v in DOCS.items()]))
            yield exporter, collection
    finally:
        for server in servers.values():
            server.grpc_server.stop(0)
        for name in SERVICES:
            client_mod._inproc_apis.pop(name, None)  # noqa: SLF001
        get_client_settings.cache_clear()
        _tracing_off()


def _tracing_off() -> None:
    """Later tests in this process run without tracing again."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    from shared import tracing

    for inst in (GrpcInstrumentorClient(), CeleryInstrumentor(), RedisInstrumentor()):
        with contextlib.suppress(Exception):
            inst.uninstrument()
    tracing._provider = None  # noqa: SLF001


def _question(collection: str) -> opb.SubmitJobRequest:
    return opb.SubmitJobRequest(answer=opb.AnswerInput(
        question="When was the Eiffel Tower completed?", collection=collection, top_k=2, models=[SMALL],
        max_retries=0, sampling=gpb.SamplingParams(max_new_tokens=12)))


def _orchestrator(transport: str):
    from services.orchestrator.core import OrchestratorCore
    from services.orchestrator.grpc_api import OrchestratorApi
    from services.orchestrator.settings import OrchestratorSettings
    from shared.config import Settings

    core = OrchestratorCore(OrchestratorSettings(store="redis", recover=False), base=Settings(transport=transport))
    return OrchestratorApi(core)


def _wait(client, job_id: str, timeout: float = 240) -> opb.Job:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get_job(job_id)
        if job.state in (opb.JOB_STATE_SUCCEEDED, opb.JOB_STATE_FAILED, opb.JOB_STATE_CANCELLED):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def _settle(exporter, trace_id: int, last: str, timeout: float = 10):
    """Spans end a moment after the job's record: wait for the job span to be exported."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        tree = Tree(exporter.get_finished_spans(), trace_id)
        if tree.named(last):
            time.sleep(0.2)
            return Tree(exporter.get_finished_spans(), trace_id)
        time.sleep(0.05)
    raise AssertionError(f"no {last!r} span in trace {trace_id:032x}")


def test_one_trace_over_grpc_from_the_client_to_every_service(traced, caplog):
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    from shared.clients.orchestrator import OrchestratorClient
    from shared.grpc_server import Server

    exporter, collection = traced
    api = _orchestrator("grpc")
    server = Server(api, 0, host="127.0.0.1").start(warm_up_in_background=False)
    try:
        tracer = trace.get_tracer("test")
        with OrchestratorClient("grpc", address=f"127.0.0.1:{server.port}") as client:
            with tracer.start_as_current_span("test client") as root:
                job_id = client.submit_job(_question(collection)).job_id
            job = _wait(client, job_id)
    finally:
        server.stop(0)
    assert job.state in (opb.JOB_STATE_SUCCEEDED, opb.JOB_STATE_FAILED), job.error
    trace_id = root.get_span_context().trace_id
    assert job.trace_id == f"{trace_id:032x}", "the job record keeps the client's trace id"
    tree = _settle(exporter, trace_id, "job answer")

    method = "/genstack.orchestrator.v1.OrchestratorService/SubmitJob"
    call = tree.child(tree.one("test client"), method, SpanKind.CLIENT)
    served = tree.child(call, method, SpanKind.SERVER)
    job_span = tree.child(served, "job answer")
    assert job_span.attributes["genstack.job_id"] == job_id
    steps = {s.name: s for s in tree.children(job_span) if s.name.startswith("step ")}
    assert set(steps) >= {"step retrieve", "step build_context", "step generate_answer", "step validate_answer"}, \
        sorted(steps)
    assert all(tree.parent(s) is job_span for s in steps.values())
    # each service call: the step's client span, the service's server span, the work inside it
    for step, rpc, inner in (("retrieve", "/genstack.retriever.v1.RetrieverService/Search", ["retriever.search"]),
                             ("generate_answer", "/genstack.generator.v1.GeneratorService/GenerateStream",
                              ["generator.prefill", "generator.decode"]),
                             ("validate_answer", "/genstack.validator.v1.ValidatorService/Validate",
                              ["validator.validate"])):
        client_span = tree.child(steps[f"step {step}"], rpc, SpanKind.CLIENT)
        server_span = tree.child(client_span, rpc, SpanKind.SERVER)
        for name in inner:
            tree.child(server_span, name)
    decode = tree.one("generator.decode")
    assert decode.attributes["genstack.completion_tokens"] > 0
    assert tree.one("generator.prefill").end_time <= decode.start_time + 1_000_000
    # local steps call no service
    assert not [c for c in tree.children(steps["step build_context"]) if c.kind == SpanKind.CLIENT
                and c.name.startswith("/")]


def test_one_trace_over_celery_with_context_through_the_redis_stream(traced, redis_client):
    from celery.contrib.testing.worker import start_worker
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    import services.generator.tasks as gen_tasks
    import services.orchestrator.tasks as orch_tasks
    import services.retriever.tasks as ret_tasks
    import services.validator.tasks as val_tasks
    from shared import client as client_mod
    from shared.clients.orchestrator import OrchestratorClient

    exporter, collection = traced
    for queue in ("orchestrator", *SERVICES):
        redis_client.delete(queue)
    client_mod._inproc_apis["orchestrator"] = _orchestrator("celery")  # noqa: SLF001 - the worker's core
    tracer = trace.get_tracer("test")
    try:
        # One worker with a thread pool consumes the four queues (workers in threads of one process
        # would share kombu's event loop); it knows the four services' tasks.
        app = orch_tasks.app
        for module in (ret_tasks, gen_tasks, val_tasks):
            for name, task in module.app.tasks.items():
                if name.split(".")[0] in SERVICES:
                    app.tasks[name] = task
        with start_worker(app, pool="threads", concurrency=4, queues=["orchestrator", *SERVICES],
                          perform_ping_check=False, shutdown_timeout=30, loglevel="WARNING",
                          hostname="traced@test"):
            with OrchestratorClient("celery") as client, tracer.start_as_current_span("test client") as root:
                response = client.submit_job(_question(collection), timeout=240)
    finally:
        client_mod._inproc_apis.pop("orchestrator", None)  # noqa: SLF001
    job = response.job
    assert job.state in (opb.JOB_STATE_SUCCEEDED, opb.JOB_STATE_FAILED), job.error
    trace_id = root.get_span_context().trace_id
    assert job.trace_id == f"{trace_id:032x}"
    tree = _settle(exporter, trace_id, "job answer")

    publish = tree.child(tree.one("test client"), "apply_async/orchestrator.submit_job", SpanKind.PRODUCER)
    task = tree.child(publish, "run/orchestrator.submit_job", SpanKind.CONSUMER)
    job_span = tree.child(task, "job answer")
    steps = {s.name: s for s in tree.children(job_span) if s.name.startswith("step ")}
    assert {"step retrieve", "step generate_answer", "step validate_answer"} <= set(steps)
    for step, task_name, inner in (("retrieve", "retriever.search", ["retriever.search"]),
                                   ("generate_answer", "generator.generate_stream",
                                    ["generator.prefill", "generator.decode"]),
                                   ("validate_answer", "validator.validate", ["validator.validate"])):
        sent = tree.child(steps[f"step {step}"], f"apply_async/{task_name}", SpanKind.PRODUCER)
        ran = tree.child(sent, f"run/{task_name}", SpanKind.CONSUMER)
        for name in inner:
            tree.child(ran, name)
    # the streamed tokens came through a Redis stream: its reader links to the task that wrote it
    reader = tree.child(steps["step generate_answer"], "read_stream/generator.generate_stream")
    writer = tree.one("run/generator.generate_stream")
    assert [link.context.span_id for link in reader.links] == [writer.context.span_id]
    assert reader.attributes["genstack.stream.entries"] >= 2
    # Redis commands inside the trace are recorded where they happen (the stream's XADDs)
    assert [s for s in tree.children(writer) if s.name == "XADD"]


def test_json_logs_carry_the_trace_and_span_ids(traced):
    from opentelemetry import trace

    from shared.logging import JsonFormatter

    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", (), None)
    with trace.get_tracer("test").start_as_current_span("logging") as s:
        doc = json.loads(JsonFormatter().format(record))
    sc = s.get_span_context()
    assert doc["trace_id"] == f"{sc.trace_id:032x}" and doc["span_id"] == f"{sc.span_id:016x}"
    assert "trace_id" not in json.loads(JsonFormatter().format(record))  # outside a span: none
