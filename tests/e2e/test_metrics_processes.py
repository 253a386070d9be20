"""/metrics of real processes: a validator gRPC server and its Celery worker, each started as
`genstack serve|worker validator` with GENSTACK_METRICS_PORT=0, scraped over HTTP after a call
through each (what `curl localhost:PORT/metrics` shows an operator)."""

from __future__ import annotations

import time
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from genstack.validator.v1 import validator_pb2 as pb
from shared.clients.validator import ValidatorClient
from shared.config import Settings, get_settings
from tests.support import ServiceProcess, redis_db, redis_db_url

pytestmark = pytest.mark.slow


def _metrics_port(proc: ServiceProcess) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in list(proc.lines):
            if line.startswith("GENSTACK_METRICS "):
                return int(line.split()[2])
        time.sleep(0.1)
    raise AssertionError(f"{proc.service} {proc.role} printed no GENSTACK_METRICS line")


def _scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def _value(samples, name, **labels) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items()))


def test_a_server_and_a_worker_serve_their_metrics(redis_client):
    # a Redis database of its own: the session's validator worker (contract tests) must not take the task
    configured = get_settings().redis_url
    db = redis_db(configured)
    url = redis_db_url(configured, db - 1 if db > 0 else 1)
    redis.Redis.from_url(url).delete("validator")
    env = {"GENSTACK_METRICS_PORT": "0", "GENSTACK_VALIDATOR_WARM_UP_MODELS": "false", "GENSTACK_REDIS_URL": url}
    request = pb.ValidateRequest(artifact=pb.Artifact(text='{"a": 1}'), policy="json-output")
    with ServiceProcess("validator", "grpc", env=env) as server, ServiceProcess("validator", "worker", env=env) as w:
        with ValidatorClient("grpc", address=server.address) as client:
            assert client.validate(request, timeout=60).passed
        with ValidatorClient("celery", settings=Settings(redis_url=url)) as client:
            assert client.validate(request, timeout=120).passed
        served, worked = _scrape(_metrics_port(server)), _scrape(_metrics_port(w))

    # the server: requests by service, method and code, latency histogram, in-flight gauge, verdicts
    assert _value(served, "genstack_grpc_requests_total", service="validator", method="Validate", code="OK") >= 1
    assert _value(served, "genstack_grpc_request_seconds_count", service="validator", method="Validate") >= 1
    assert "genstack_grpc_in_flight_requests" in served
    assert _value(served, "genstack_validator_verdicts_total", policy="json-output", passed="true") >= 1
    # the worker: tasks by name and outcome with their run time, queue depth read from Redis
    assert _value(worked, "genstack_celery_tasks_total", task="validator.validate", outcome="success") >= 1
    assert _value(worked, "genstack_celery_task_seconds_count", task="validator.validate") >= 1
    assert _value(worked, "genstack_validator_verdicts_total", policy="json-output", passed="true") >= 1
    assert {lab["queue"] for lab, _ in worked["genstack_celery_queue_depth"]} >= {"validator", "generator"}
