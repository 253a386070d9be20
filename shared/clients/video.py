"""Typed video client over grpc, celery or inproc."""

from __future__ import annotations

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.video.v1 import video_pb2 as pb
from shared.client import ServiceClient, Stream


class VideoClient(ServiceClient):
    service = "video"

    def generate_video(
        self, request: pb.GenerateVideoRequest, timeout: float | None = None
    ) -> pb.GenerateVideoResponse:
        return self.call("GenerateVideo", request, timeout)

    def generate_video_stream(self, request: pb.GenerateVideoStreamRequest, timeout: float | None = None) -> Stream:
        return self.stream("GenerateVideoStream", request, timeout)
