"""Prometheus metrics: the endpoint, the gRPC interceptor, the Celery signals, multiprocess mode
under forked workers, the helpers the cores call, and the Grafana dashboard's queries (every
metric it reads is one the code exports, with the labels it groups by)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "genstack.json"


def _value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _families() -> dict[str, tuple[type, tuple[str, ...]]]:
    """Every family shared.metrics defines: name -> (type, label names)."""
    out = {}
    for obj in vars(metrics).values():
        if isinstance(obj, Counter | Gauge | Histogram):
            out[obj._name] = (type(obj), tuple(obj._labelnames))  # noqa: SLF001 - prometheus_client has no getter
    out["genstack_celery_queue_depth"] = (Gauge, ("queue",))
    return out


def _exported_names() -> dict[str, tuple[str, ...]]:
    """Sample names as Prometheus stores them -> label names (histograms add `le` to _bucket)."""
    names = {}
    for name, (kind, labels) in _families().items():
        if kind is Counter:
            names[f"{name}_total"] = labels
        elif kind is Histogram:
            names[f"{name}_bucket"] = (*labels, "le")
            names[f"{name}_sum"] = names[f"{name}_count"] = labels
        else:
            names[name] = labels
    return names


def test_families_follow_prometheus_naming():
    for name, (kind, _labels) in _families().items():
        assert name.startswith("genstack_"), name
        assert not name.endswith("_total"), f"{name}: prometheus_client adds _total to counters"
        if kind is Histogram and "per_second" not in name and "batch_size" not in name:
            assert name.endswith("_seconds"), f"{name}: a latency histogram is in seconds"


def test_the_issue_s_families_all_exist():
    names = set(_families())
    for wanted in ("genstack_grpc_requests", "genstack_grpc_request_seconds", "genstack_grpc_in_flight_requests",
                   "genstack_celery_tasks", "genstack_celery_task_seconds", "genstack_celery_queue_depth",
                   "genstack_generator_tokens_per_second", "genstack_generator_time_to_first_token_seconds",
                   "genstack_generator_batch_size", "genstack_generator_queue_depth", "genstack_image_steps_per_second",
                   "genstack_video_steps_per_second", "genstack_retriever_search_seconds",
                   "genstack_retriever_ingest_chunks_per_second", "genstack_validator_verdicts",
                   "genstack_validator_checks", "genstack_orchestrator_jobs", "genstack_orchestrator_step_seconds",
                   "genstack_orchestrator_retries", "genstack_orchestrator_cascade_escalations"):
        assert wanted in names, wanted
    assert _families()["genstack_grpc_requests"][1] == ("service", "method", "code")
    assert _families()["genstack_validator_checks"][1] == ("policy", "check", "passed")
    assert _families()["genstack_orchestrator_step_seconds"][1] == ("step", "status")


def _queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(doc["panels"])
    return exprs


def test_the_dashboard_queries_only_metrics_and_labels_the_code_exports():
    exported = _exported_names()
    queries = _queries()
    assert len(queries) >= 20
    used = set()
    for expr in queries:
        for name in re.findall(r"\b(genstack_[a-z0-9_]+)\b", expr):
            assert name in exported, f"the dashboard queries {name}, which the code does not export: {expr}"
            used.add(name)
        # labels the query groups by or selects on belong to the metrics it reads
        names = re.findall(r"\b(genstack_[a-z0-9_]+)\b", expr)
        allowed = {label for n in names for label in exported[n]}
        grouped = [g.strip() for by in re.findall(r"by \(([^)]*)\)", expr) for g in by.split(",")]
        selected = re.findall(r"([a-z_]+)=~?\"", expr)
        for label in grouped + selected:
            assert label in allowed, f"{label!r} is not a label of {names}: {expr}"
    # and the dashboard covers every family
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families >= set(_families()) - {"genstack_celery_in_flight_tasks"} or families >= set(_families())


def test_endpoint_serves_the_families_over_http():
    port = metrics.start("test", port=0, host="127.0.0.1")
    assert port and metrics.start("again", port=0) == port  # one endpoint per process
    metrics.GEN_TOKENS.labels("m-http").inc(3)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = {f.name for f in text_string_to_metric_families(text)}
    assert {"genstack_grpc_requests", "genstack_generator_tokens", "genstack_orchestrator_jobs",
            "genstack_celery_queue_depth"} <= found
    assert 'genstack_generator_tokens_total{model="m-http"} 3.0' in text


def test_metrics_are_off_without_a_port(monkeypatch):
    from shared.config import Settings

    monkeypatch.setattr("shared.config.get_settings", lambda: Settings(metrics_port=None))
    monkeypatch.setattr(metrics, "_started", {})
    assert metrics.start("off") is None


def test_grpc_interceptor_counts_codes_latency_and_in_flight():
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from genstack.orchestrator.v1 import orchestrator_pb2 as pb
    from services.orchestrator.core import OrchestratorCore
    from services.orchestrator.grpc_api import OrchestratorApi
    from services.orchestrator.settings import OrchestratorSettings
    from shared.clients.orchestrator import OrchestratorClient
    from shared.errors import NotFound
    from shared.grpc_server import Server

    core = OrchestratorCore(OrchestratorSettings(store="memory", recover=False))
    server = Server(OrchestratorApi(core), 0, host="127.0.0.1").start(warm_up_in_background=True)
    labels = {"service": "orchestrator", "method": "GetJob"}
    before = _value("genstack_grpc_requests_total", {**labels, "code": "NOT_FOUND"})
    count_before = _value("genstack_grpc_request_seconds_count", labels)
    try:
        with OrchestratorClient("grpc", address=f"127.0.0.1:{server.port}") as client:
            with pytest.raises(NotFound):
                client.get_job("no-such-job")
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        server.stop(0)
    assert _value("genstack_grpc_requests_total", {**labels, "code": "NOT_FOUND"}) == before + 1
    assert _value("genstack_grpc_request_seconds_count", labels) == count_before + 1
    assert _value("genstack_grpc_in_flight_requests", labels) == 0
    assert _value("genstack_grpc_requests_total", {"service": "grpc.health.v1.Health", "method": "Check",
                                                   "code": "OK"}) >= 1
    assert pb.Job.DESCRIPTOR.fields_by_name["trace_id"].number == 40


def test_celery_signals_count_outcomes_and_run_time():
    from shared.celery_app import make_celery

    app = make_celery()
    app.conf.task_always_eager = True

    @app.task(name="metrics_test.ok")
    def ok():
        return 1

    @app.task(name="metrics_test.boom")
    def boom():
        raise ValueError("no")

    ok.apply()
    boom.apply()
    assert _value("genstack_celery_tasks_total", {"task": "metrics_test.ok", "outcome": "success"}) >= 1
    assert _value("genstack_celery_tasks_total", {"task": "metrics_test.boom", "outcome": "failure"}) >= 1
    assert _value("genstack_celery_task_seconds_count", {"task": "metrics_test.ok"}) >= 1
    assert _value("genstack_celery_in_flight_tasks", {"task": "metrics_test.ok"}) == 0


def test_queue_depth_is_read_from_redis_at_scrape_time(redis_client):
    queue = "metrics-test-queue"
    redis_client.delete(queue)
    redis_client.rpush(queue, "a", "b", "c")
    from shared.config import get_settings

    (family,) = metrics.QueueDepthCollector(get_settings().redis_url, [queue]).collect()
    assert [(s.labels, s.value) for s in family.samples] == [({"queue": queue}, 3)]
    redis_client.delete(queue)
    (down,) = metrics.QueueDepthCollector("redis://127.0.0.1:1/0", [queue]).collect()
    assert down.samples == []  # Redis away: an empty family, never a failed scrape


def test_forked_workers_add_up_in_multiprocess_mode(tmp_path):
    """What a prefork Celery worker does: children write their values, the parent's registry sums."""
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = {str(tmp_path)!r}
        sys.path.insert(0, {str(ROOT)!r})
        from celery import signals
        from shared import metrics
        metrics.connect_celery_signals()
        pids = []
        for i in range(3):
            pid = os.fork()
            if pid == 0:
                metrics.GEN_TOKENS.labels("forked").inc(5)
                metrics.CELERY_IN_FLIGHT.labels("t").inc()
                if i == 0:  # Celery sends this in a prefork child that ends: its live gauge goes
                    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        from prometheus_client import generate_latest
        print(generate_latest(metrics.registry()).decode())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'genstack_generator_tokens_total{model="forked"} 15.0' in out
    assert 'genstack_celery_in_flight_tasks{task="t"} 2.0' in out


def test_job_tracking_and_generation_helpers():
    from dataclasses import dataclass

    kind = "metrics-test-kind"
    state = {"name": "JOB_STATE_RUNNING"}
    with metrics.track_job(kind, lambda: state["name"]):
        assert _value("genstack_orchestrator_jobs_running", {"kind": kind}) == 1
        state["name"] = "JOB_STATE_SUCCEEDED"
    assert _value("genstack_orchestrator_jobs_running", {"kind": kind}) == 0
    assert _value("genstack_orchestrator_jobs_total", {"kind": kind, "state": "succeeded"}) == 1
    assert _value("genstack_orchestrator_job_seconds_count", {"kind": kind, "state": "succeeded"}) == 1

    @dataclass
    class Finished:
        reason: str = "stop"
        prompt_tokens: int = 10
        completion_tokens: int = 7
        queue_ms: float = 5
        ttft_ms: float = 40
        tokens_per_second: float = 12.5
        total_ms: float = 600

    events = ["delta", Finished()]
    assert list(metrics.watch_generation(iter(events), "metrics-test-model")) == events
    labels = {"model": "metrics-test-model"}
    assert _value("genstack_generator_tokens_total", labels) == 7
    assert _value("genstack_generator_time_to_first_token_seconds_sum", labels) == pytest.approx(0.04)
    assert _value("genstack_generator_generations_total", {**labels, "reason": "stop"}) == 1

    metrics.observe_verdict("metrics-test-policy", False, [("grounded", False), ("length", True)])
    assert _value("genstack_validator_verdicts_total", {"policy": "metrics-test-policy", "passed": "false"}) == 1
    assert _value("genstack_validator_checks_total", {"policy": "metrics-test-policy", "check": "grounded",
                                                      "passed": "false"}) == 1
    before = _value("genstack_image_denoising_steps_total", {})
    metrics.observe_steps("image", 8, 2.0, 1)
    assert _value("genstack_image_denoising_steps_total", {}) == before + 8


def test_up_gives_each_process_its_own_metrics_port(monkeypatch):
    from services.orchestrator import stack
    from shared.config import Settings

    labels = [label for label, _ in stack.plan()]
    monkeypatch.setattr("shared.config.get_settings", lambda: Settings(metrics_port=9300))
    ports = stack.metrics_ports(labels)
    assert sorted(ports.values()) == list(range(9300, 9300 + len(labels)))
    assert set(ports) == set(labels) and {"orchestrator grpc", "orchestrator worker"} <= set(ports)
    monkeypatch.setattr("shared.config.get_settings", lambda: Settings(metrics_port=None))
    assert stack.metrics_ports(labels) == {}
