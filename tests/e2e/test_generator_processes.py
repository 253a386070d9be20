"""Real processes: a producer that knows only Celery, graceful SIGTERM, and concurrent callers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genstack.generator.v1 import generator_pb2 as pb
from shared.clients.generator import GeneratorClient
from shared.config import get_settings
from tests.support import ServiceProcess

pytestmark = pytest.mark.slow


def test_a_producer_that_does_not_import_the_project_submits_by_task_name(service_process, tmp_path):
    service_process("generator", "worker")
    script = tmp_path / "producer.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from celery import Celery
        assert "shared" not in sys.modules and "genstack" not in sys.modules
        app = Celery(broker={get_settings().redis_url!r}, backend={get_settings().redis_url!r})
        result = app.send_task(
            "generator.generate",
            args=[{{"model": "smollm2-135m", "prompt": "The capital of France is",
                    "sampling": {{"maxNewTokens": 8, "temperature": 0}}}}],
            queue="generator",
        )
        print(json.dumps(result.get(timeout=120)))
    """))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    import json

    doc = json.loads(out.stdout.strip().splitlines()[-1])
    reference = GeneratorClient("inproc").generate(
        pb.GenerateRequest(model="smollm2-135m", prompt="The capital of France is",
                           sampling=pb.SamplingParams(max_new_tokens=8, temperature=0)))
    assert doc["text"] == reference.text
    assert doc["finishReason"] in ("FINISH_REASON_LENGTH", "FINISH_REASON_STOP")


def test_sigterm_reports_not_serving_and_drains_in_flight_work():
    # a long grace period: the point is that in-flight work drains, however busy the machine is
    server = ServiceProcess("generator", "grpc", env={"GENSTACK_GRPC_GRACE_S": "300"}).start()
    try:
        client = GeneratorClient("grpc", address=server.address)
        request = pb.GenerateStreamRequest(model="smollm2-135m", prompt="The three primary colours are",
                                           sampling=pb.SamplingParams(max_new_tokens=24, temperature=0))
        stream = client.generate_stream(request, timeout=120)
        first = next(stream)
        server.proc.send_signal(15)
        with grpc.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 10
            status = None
            while time.monotonic() < deadline:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                except grpc.RpcError:
                    status = None  # already refusing new calls: also not serving
                    break
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.05)
            assert status in (None, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert first.finish_reason == pb.FINISH_REASON_UNSPECIFIED, "SIGTERM must arrive mid-generation"
        msgs = [first, *stream]  # the in-flight stream still completes
        assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert msgs[-1].stats.completion_tokens == 24
        assert server.proc.wait(60) == 0
    finally:
        server.stop()


def test_concurrent_requests_never_mix(client_factory):
    client = client_factory(GeneratorClient, "grpc")
    # Prompts whose greedy continuations differ by far, so that a mixed-up reply cannot go unseen
    # ("Count from 5" and "Count from 1" gave the same digits on one CPU).
    prompts = ["Count from 1 upwards:", "The colours of the rainbow are", "def fibonacci(n):"]

    def ask(prompt):
        return client.generate(pb.GenerateRequest(model="smollm2-135m", prompt=prompt,
                                                  sampling=pb.SamplingParams(max_new_tokens=8, temperature=0)),
                               timeout=180).text

    expected = {p: ask(p) for p in prompts}
    assert len(set(expected.values())) == len(prompts), expected
    results: dict[str, list[str]] = {p: [] for p in prompts}
    threads = [threading.Thread(target=lambda p=p: results[p].append(ask(p))) for p in prompts * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert {p: r for p, r in results.items()} == {p: [expected[p]] * 2 for p in prompts}


def test_oversized_message_is_resource_exhausted(client_factory):
    client = client_factory(GeneratorClient, "grpc")
    huge = "x" * (get_settings().grpc_max_message_bytes + 1024)
    with pytest.raises(Exception) as err:
        client.generate(pb.GenerateRequest(model="smollm2-135m", prompt=huge), timeout=30)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
