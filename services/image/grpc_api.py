"""Image API: protobuf <-> core. Used by the gRPC servicer, the Celery tasks and inproc."""

from __future__ import annotations

from collections.abc import Iterator

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.common.v1 import common_pb2
from genstack.image.v1 import image_pb2 as pb
from genstack.image.v1 import image_pb2_grpc as pb_grpc
from services.image.core import ImageCore, ImageRequest, ImageResult, Progress
from shared.errors import Cancelled, InvalidArgument
from shared.rpc import CallContext, ServiceApi, opt, stream_from_thread

_SCHEDULER_TO_CORE = {
    pb.SCHEDULER_UNSPECIFIED: None,
    pb.SCHEDULER_DDIM: "ddim",
    pb.SCHEDULER_DPM_SOLVER_PP: "dpm-solver++",
    pb.SCHEDULER_EULER: "euler",
}
_SCHEDULER_TO_PB = {v: k for k, v in _SCHEDULER_TO_CORE.items() if v}
_OUTPUT_TO_CORE = {
    pb.OUTPUT_MODE_UNSPECIFIED: "auto",
    pb.OUTPUT_MODE_INLINE: "inline",
    pb.OUTPUT_MODE_ARTIFACT: "artifact",
}


def to_core(request: pb.GenerateImageRequest, preview_every: int = 0, preview_size: int = 0) -> ImageRequest:
    if request.scheduler not in _SCHEDULER_TO_CORE:
        raise InvalidArgument(
            f"must be one of {', '.join(pb.Scheduler.keys()[1:])} (got {request.scheduler})", field="scheduler"
        )
    if request.output not in _OUTPUT_TO_CORE:
        raise InvalidArgument(f"must be one of {', '.join(pb.OutputMode.keys())} (got {request.output})",
                              field="output")
    return ImageRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        steps=opt(request, "steps"),
        guidance_scale=opt(request, "guidance_scale"),
        seed=opt(request, "seed"),
        width=opt(request, "width"),
        height=opt(request, "height"),
        num_images=opt(request, "num_images"),
        scheduler=_SCHEDULER_TO_CORE[request.scheduler],
        output=_OUTPUT_TO_CORE[request.output],
        preview_every=preview_every,
        preview_size=preview_size or None,
    )


def to_proto(result: ImageResult) -> pb.GenerateImageResponse:
    images = []
    for img in result.images:
        out = pb.GeneratedImage(seed=img.seed, width=img.width, height=img.height)
        if img.artifact is not None:
            out.artifact.CopyFrom(img.artifact.to_proto())
        else:
            out.png = img.png
        images.append(out)
    meta = pb.GenerationMetadata(
        model=result.model,
        scheduler=_SCHEDULER_TO_PB[result.scheduler],
        steps=result.steps,
        guidance_scale=result.guidance_scale,
        seed=result.seed,
        width=result.width,
        height=result.height,
        timings=[common_pb2.Timing(name=k, duration_ms=v) for k, v in result.timings.items()],
        seconds_per_image=result.seconds_per_image,
        steps_per_second=result.steps_per_second,
    )
    return pb.GenerateImageResponse(images=images, metadata=meta)


def _progress(p: Progress) -> pb.GenerateImageStreamResponse:
    return pb.GenerateImageStreamResponse(
        progress=pb.StepProgress(step=p.step, total_steps=p.total, elapsed_ms=p.elapsed_ms, previews=p.previews)
    )


class ImageApi(ServiceApi):
    service = "image"
    descriptor = pb.DESCRIPTOR.services_by_name["ImageService"]
    servicer_base = pb_grpc.ImageServiceServicer
    add_to_server = staticmethod(pb_grpc.add_ImageServiceServicer_to_server)

    def GenerateImage(self, request: pb.GenerateImageRequest, ctx: CallContext) -> pb.GenerateImageResponse:
        try:
            result = self.core.generate(to_core(request), ctx.stopped)
        except Cancelled:
            ctx.check()  # a passed deadline reads DEADLINE_EXCEEDED, a cancelled call CANCELLED
            raise
        return to_proto(result)

    def GenerateImageStream(
        self, request: pb.GenerateImageStreamRequest, ctx: CallContext
    ) -> Iterator[pb.GenerateImageStreamResponse]:
        core_request = to_core(request.request, request.preview_every, request.preview_size)
        self.core.resolve(core_request)  # bad input fails before any event is sent

        def work(stopped, emit):
            result = self.core.generate(core_request, stopped, lambda p: emit(_progress(p)))
            return pb.GenerateImageStreamResponse(result=to_proto(result))

        yield from stream_from_thread(ctx, work, "image-stream")


API_CLASS = ImageApi


def create_api() -> ImageApi:
    return ImageApi(ImageCore())
