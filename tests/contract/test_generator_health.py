"""Health follows warm-up: NOT_SERVING while the model loads, SERVING after, NOT_SERVING on shutdown."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.generator.core import GeneratorCore
from services.generator.grpc_api import GeneratorApi
from shared.grpc_server import Server

pytestmark = pytest.mark.slow


class GatedApi(GeneratorApi):
    """The real generator API whose warm-up waits for the test to open a gate."""

    def __init__(self, gate: threading.Event):
        super().__init__(GeneratorCore())
        self.gate = gate

    def warm_up(self) -> None:
        assert self.gate.wait(60)
        super().warm_up()


def _status(stub, service: str = "") -> int:
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_not_serving_until_warm_up_then_serving():
    gate = threading.Event()
    server = Server(GatedApi(gate), port=0).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in ("", "genstack.generator.v1.GeneratorService"):
                assert _status(stub, name) == health_pb2.HealthCheckResponse.NOT_SERVING
            gate.set()
            assert server.ready.wait(120), server.warm_up_error
            for name in ("", "genstack.generator.v1.GeneratorService"):
                assert _status(stub, name) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=1)


def test_reflection_lists_the_service():
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    gate = threading.Event()
    gate.set()
    server = Server(GatedApi(gate), port=0).start()
    try:
        assert server.ready.wait(120), server.warm_up_error
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"genstack.generator.v1.GeneratorService", "grpc.health.v1.Health"} <= names
    finally:
        server.stop(grace=1)
