"""Typed image client over grpc, celery or inproc."""

from __future__ import annotations

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.image.v1 import image_pb2 as pb
from shared.client import ServiceClient, Stream


class ImageClient(ServiceClient):
    service = "image"

    def generate_image(
        self, request: pb.GenerateImageRequest, timeout: float | None = None
    ) -> pb.GenerateImageResponse:
        return self.call("GenerateImage", request, timeout)

    def generate_image_stream(self, request: pb.GenerateImageStreamRequest, timeout: float | None = None) -> Stream:
        return self.stream("GenerateImageStream", request, timeout)
