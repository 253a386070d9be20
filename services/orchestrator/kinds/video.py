"""The `video` kind: text-to-video, then the validator's video policy; a failed verdict retries
once with the next seed."""

from __future__ import annotations

from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from genstack.validator.v1 import validator_pb2 as vpb
from genstack.video.v1 import video_pb2 as vidpb
from services.orchestrator.kinds import JobKind, register
from services.orchestrator.pipelines import Pipeline, RetryRule, StepDef
from services.orchestrator.steps import follow_denoising, slot, step, to_json
from shared.errors import require

CLIP = slot("video", vidpb.GenerateVideoResponse)
VIDEO_ATTEMPT = slot("video_attempt", int)
VIDEO_VERDICT = slot("video_verdict", vpb.ValidateResponse)
FEEDBACK = slot("feedback", str)


def validate(request: vidpb.GenerateVideoRequest, settings) -> None:
    # the video service checks every other field and names it; this one is needed to start at all
    require(bool(request.prompt.strip()), "video.prompt", "a non-empty prompt")


def _artifact(video: vidpb.GeneratedVideo) -> vpb.Artifact:
    if video.frames:
        return vpb.Artifact(frames=vpb.Frames(images=list(video.frames), fps=video.fps))
    if video.data:
        return vpb.Artifact(video=video.data)
    return vpb.Artifact(ref=video.artifact)


@step("generate_video", optional=(CLIP,), provides=(CLIP, VIDEO_ATTEMPT), input="video")
def generate_video(run, params: dict) -> None:
    request = vidpb.GenerateVideoRequest()
    request.CopyFrom(run.job.request.video)
    # job records keep a reference, not clip bytes (PNG frames of a small clip stay inline: the
    # validator takes frames only as bytes)
    png = request.format == vidpb.VIDEO_FORMAT_PNG_FRAMES
    request.output = vidpb.OUTPUT_MODE_INLINE if png else vidpb.OUTPUT_MODE_ARTIFACT
    attempt = run.state.get(VIDEO_ATTEMPT, 0) + 1
    run.state[VIDEO_ATTEMPT] = attempt
    if attempt > 1:  # a retry explores the next seed (the one the service drew, when none was given)
        previous = run.state.get(CLIP)
        base = request.seed if request.HasField("seed") else (previous.metadata.seed if previous else 0)
        request.seed = base + attempt - 1
    with run.step("generate_video", "video", to_json(request), attempt=attempt) as rec:
        # the streaming RPC, so that watchers see a `video.progress` event per denoising step, with a
        # few small preview frames every `preview_every` steps (0: none)
        stream = run.client("video", "generate_video").generate_video_stream(vidpb.GenerateVideoStreamRequest(
            request=request, preview_every=int(params.get("preview_every", 2)),
            preview_size=int(params.get("preview_size", 64)), preview_frames=int(params.get("preview_frames", 4))),
            timeout=run.timeout())
        response = follow_denoising(run, stream, "video.progress", "generate_video", attempt,
                                    lambda p: p.preview_frames)
        v = response.video
        rec.output = {"video": {"uri": v.artifact.uri, "frames": len(v.frame_artifacts) or v.num_frames,
                                "mime_type": v.mime_type, "fps": v.fps, "width": v.width, "height": v.height},
                      "metadata": to_json(response.metadata), "coherence": to_json(response.coherence)}
    run.state[CLIP] = response


@step("validate_video", reads=(CLIP,), optional=(VIDEO_ATTEMPT,), provides=(VIDEO_VERDICT, FEEDBACK),
      input="video")
def validate_video(run, params: dict) -> str | None:
    attempt = run.state.get(VIDEO_ATTEMPT, 1)
    v = run.state[CLIP].video
    request = vpb.ValidateRequest(
        artifact=_artifact(v), policy=params.get("policy", "video-default"),
        context=vpb.ValidationContext(request=run.job.request.video.prompt,
                                      expected=vpb.ExpectedMedia(width=v.width, height=v.height,
                                                                 num_frames=v.num_frames, fps=v.fps)),
    )
    with run.step("validate_video", "validator", {"policy": request.policy}, attempt=attempt) as rec:
        verdict = run.client("validator", "validate_video").validate(request, timeout=run.timeout())
        rec.output = to_json(verdict)
        rec.service_ms = verdict.duration_ms
    run.state.update(video_verdict=verdict, feedback="" if verdict.passed else verdict.feedback)
    run.emit("validate.verdict", "validate_video", {"passed": verdict.passed, "attempt": attempt})
    return None if verdict.passed else "failed"


def fill_result(job: opb.Job, state) -> None:
    clip = state.get(CLIP)
    result = opb.VideoResult(video=clip.video, coherence=clip.coherence, metadata=clip.metadata,
                             attempts=state.get(VIDEO_ATTEMPT, 0))
    if state.get(VIDEO_VERDICT) is not None:
        result.verdict.CopyFrom(state.get(VIDEO_VERDICT))
    job.video.CopyFrom(result)


register(JobKind(
    name="video",
    validate=validate,
    fill_result=fill_result,
    result_needs=(CLIP,),
    pipelines={
        "video": Pipeline(
            kind="video",
            description="Text-to-video, then the validator's video-default policy; a failed verdict retries once "
            "with the next seed",
            steps=[StepDef(name="generate_video"), StepDef(name="validate_video", params={"policy": "video-default"})],
            retry=RetryRule(on="validate_video", restart_at="generate_video", max_retries=1),
        ),
    },
))
