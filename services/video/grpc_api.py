"""Video API: protobuf <-> core. Used by the gRPC servicer, the Celery tasks and inproc."""

from __future__ import annotations

from collections.abc import Iterator

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.common.v1 import common_pb2
from genstack.video.v1 import video_pb2 as pb
from genstack.video.v1 import video_pb2_grpc as pb_grpc
from services.video.core import Progress, VideoCore, VideoRequest, VideoResult
from shared.errors import Cancelled, InvalidArgument
from shared.rpc import CallContext, ServiceApi, opt, stream_from_thread

_SCHEDULER_TO_CORE = {
    pb.SCHEDULER_UNSPECIFIED: None,
    pb.SCHEDULER_DDIM: "ddim",
    pb.SCHEDULER_DPM_SOLVER_PP: "dpm-solver++",
    pb.SCHEDULER_EULER: "euler",
}
_SCHEDULER_TO_PB = {v: k for k, v in _SCHEDULER_TO_CORE.items() if v}
_FORMAT_TO_CORE = {
    pb.VIDEO_FORMAT_UNSPECIFIED: None,
    pb.VIDEO_FORMAT_MP4: "mp4",
    pb.VIDEO_FORMAT_GIF: "gif",
    pb.VIDEO_FORMAT_PNG_FRAMES: "png",
}
_FORMAT_TO_PB = {v: k for k, v in _FORMAT_TO_CORE.items() if v}
_OUTPUT_TO_CORE = {
    pb.OUTPUT_MODE_UNSPECIFIED: "auto",
    pb.OUTPUT_MODE_INLINE: "inline",
    pb.OUTPUT_MODE_ARTIFACT: "artifact",
}
_NOISE_TO_CORE = {
    pb.FRAME_NOISE_UNSPECIFIED: None,
    pb.FRAME_NOISE_INDEPENDENT: "independent",
    pb.FRAME_NOISE_SHARED: "shared",
}
_NOISE_TO_PB = {v: k for k, v in _NOISE_TO_CORE.items() if v}


def _enum(value: int, table: dict, enum, field: str):
    if value not in table:
        raise InvalidArgument(f"must be one of {', '.join(enum.keys())} (got {value})", field=field)
    return table[value]


def to_core(request: pb.GenerateVideoRequest, preview_every: int = 0, preview_size: int = 0,
            preview_frames: int = 0) -> VideoRequest:
    return VideoRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_frames=opt(request, "num_frames"),
        fps=opt(request, "fps"),
        width=opt(request, "width"),
        height=opt(request, "height"),
        steps=opt(request, "steps"),
        guidance_scale=opt(request, "guidance_scale"),
        seed=opt(request, "seed"),
        scheduler=_enum(request.scheduler, _SCHEDULER_TO_CORE, pb.Scheduler, "scheduler"),
        format=_enum(request.format, _FORMAT_TO_CORE, pb.VideoFormat, "format"),
        output=_enum(request.output, _OUTPUT_TO_CORE, pb.OutputMode, "output"),
        frame_noise=_enum(request.frame_noise, _NOISE_TO_CORE, pb.FrameNoise, "frame_noise"),
        noise_share=opt(request, "noise_share"),
        preview_every=preview_every,
        preview_size=preview_size or None,
        preview_frames=preview_frames or None,
    )


def to_proto(result: VideoResult) -> pb.GenerateVideoResponse:
    v = result.video
    video = pb.GeneratedVideo(mime_type=v.mime_type, num_frames=v.num_frames, fps=v.fps, width=v.width,
                              height=v.height, duration_s=v.duration_s)
    if v.artifact is not None:
        video.artifact.CopyFrom(v.artifact.to_proto())
    else:
        video.data = v.data
    video.frames.extend(v.frames)
    video.frame_artifacts.extend(a.to_proto() for a in v.frame_artifacts)
    c = result.coherence
    coherence = pb.CoherenceMetrics(
        background_flicker=c.background_flicker, mean_ssim=c.mean_ssim, object_tracked=c.object_tracked,
        track_smoothness=c.track_smoothness, object_found=c.object_found, displacement_x=c.displacement[0],
        displacement_y=c.displacement[1],
    )
    meta = pb.GenerationMetadata(
        model=result.model,
        scheduler=_SCHEDULER_TO_PB[result.scheduler],
        steps=result.steps,
        guidance_scale=result.guidance_scale,
        seed=result.seed,
        format=_FORMAT_TO_PB[result.format],
        frame_noise=_NOISE_TO_PB[result.frame_noise],
        noise_share=result.noise_share,
        timings=[common_pb2.Timing(name=k, duration_ms=val) for k, val in result.timings.items()],
        seconds_per_clip=result.seconds_per_clip,
        steps_per_second=result.steps_per_second,
        prompt=result.prompt,
        negative_prompt=result.negative_prompt,
    )
    return pb.GenerateVideoResponse(video=video, metadata=meta, coherence=coherence)


def _progress(p: Progress) -> pb.GenerateVideoStreamResponse:
    return pb.GenerateVideoStreamResponse(progress=pb.StepProgress(
        step=p.step, total_steps=p.total, elapsed_ms=p.elapsed_ms, preview_frames=p.previews,
        preview_frame_indices=p.preview_indices))


class VideoApi(ServiceApi):
    service = "video"
    descriptor = pb.DESCRIPTOR.services_by_name["VideoService"]
    servicer_base = pb_grpc.VideoServiceServicer
    add_to_server = staticmethod(pb_grpc.add_VideoServiceServicer_to_server)

    def GenerateVideo(self, request: pb.GenerateVideoRequest, ctx: CallContext) -> pb.GenerateVideoResponse:
        try:
            result = self.core.generate(to_core(request), ctx.stopped)
        except Cancelled:
            ctx.check()  # a passed deadline reads DEADLINE_EXCEEDED, a cancelled call CANCELLED
            raise
        return to_proto(result)

    def GenerateVideoStream(
        self, request: pb.GenerateVideoStreamRequest, ctx: CallContext
    ) -> Iterator[pb.GenerateVideoStreamResponse]:
        core_request = to_core(request.request, request.preview_every, request.preview_size, request.preview_frames)
        self.core.resolve(core_request)  # bad input fails before any event is sent

        def work(stopped, emit):
            result = self.core.generate(core_request, stopped, lambda p: emit(_progress(p)))
            return pb.GenerateVideoStreamResponse(result=to_proto(result))

        yield from stream_from_thread(ctx, work, "video-stream")


API_CLASS = VideoApi


def create_api() -> VideoApi:
    return VideoApi(VideoCore())
