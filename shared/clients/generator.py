"""Typed generator client over grpc, celery or inproc."""

from __future__ import annotations

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.generator.v1 import generator_pb2 as pb
from shared.client import ServiceClient, Stream


class GeneratorClient(ServiceClient):
    service = "generator"

    def generate(self, request: pb.GenerateRequest, timeout: float | None = None) -> pb.GenerateResponse:
        return self.call("Generate", request, timeout)

    def generate_stream(self, request: pb.GenerateStreamRequest, timeout: float | None = None) -> Stream:
        return self.stream("GenerateStream", request, timeout)

    def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        return self.call("ListModels", pb.ListModelsRequest(), timeout)

    def tokenize(self, request: pb.TokenizeRequest, timeout: float | None = None) -> pb.TokenizeResponse:
        return self.call("Tokenize", request, timeout)
