"""The `image` kind: text-to-image, then the validator's image policy; a failed verdict retries
with the next seed."""

from __future__ import annotations

from genstack.image.v1 import image_pb2 as ipb
from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from genstack.validator.v1 import validator_pb2 as vpb
from services.orchestrator.kinds import JobKind, register
from services.orchestrator.pipelines import Pipeline, RetryRule, StepDef
from services.orchestrator.steps import follow_denoising, slot, step, to_json
from shared.errors import require

IMAGES = slot("images", list)
IMAGE_ATTEMPT = slot("image_attempt", int)
IMAGE_VERDICTS = slot("image_verdicts", list)
FEEDBACK = slot("feedback", str)


def validate(request: ipb.GenerateImageRequest, settings) -> None:
    require(bool(request.prompt.strip()), "image.prompt", "a non-empty prompt")


@step("generate_image", provides=(IMAGES, IMAGE_ATTEMPT), input="image")
def generate_image(run, params: dict) -> None:
    request = ipb.GenerateImageRequest()
    request.CopyFrom(run.job.request.image)
    attempt = run.state.get(IMAGE_ATTEMPT, 0) + 1
    run.state[IMAGE_ATTEMPT] = attempt
    if attempt > 1 and request.HasField("seed"):
        request.seed = request.seed + attempt - 1  # a retry explores the next seed
    with run.step("generate_image", "image", to_json(request), attempt=attempt) as rec:
        response = _stream_image(run, request, attempt, params)
        rec.output = {"images": [{"seed": str(i.seed), "width": i.width, "height": i.height,
                                  "png_bytes": len(i.png), "artifact": i.artifact.uri} for i in response.images],
                      "metadata": to_json(response.metadata)}
    run.state[IMAGES] = list(response.images)


def _stream_image(run, request: ipb.GenerateImageRequest, attempt: int, params: dict) -> ipb.GenerateImageResponse:
    """The streaming RPC, so that watchers see progress: an `image.progress` event per denoising step,
    with small PNG previews (base64) every `preview_every` steps (0: none)."""
    every = int(params.get("preview_every", 2))
    size = int(params.get("preview_size", 64))
    stream = run.client("image", "generate_image").generate_image_stream(
        ipb.GenerateImageStreamRequest(request=request, preview_every=every, preview_size=size), timeout=run.timeout())
    return follow_denoising(run, stream, "image.progress", "generate_image", attempt, lambda p: p.previews)


@step("validate_image", reads=(IMAGES,), optional=(IMAGE_ATTEMPT,), provides=(IMAGE_VERDICTS, FEEDBACK),
      input="image")
def validate_image(run, params: dict) -> str | None:
    verdicts = []
    attempt = run.state.get(IMAGE_ATTEMPT, 1)
    for n, image in enumerate(run.state[IMAGES]):
        artifact = vpb.Artifact(image=image.png) if image.png else vpb.Artifact(ref=image.artifact)
        request = vpb.ValidateRequest(
            artifact=artifact, policy=params.get("policy", "image-default"),
            context=vpb.ValidationContext(request=run.job.request.image.prompt,
                                          expected=vpb.ExpectedMedia(width=image.width, height=image.height)),
        )
        with run.step("validate_image", "validator", {"image": n, "policy": request.policy}, attempt=attempt) as rec:
            verdict = run.client("validator", "validate_image").validate(request, timeout=run.timeout())
            rec.output = to_json(verdict)
            rec.service_ms = verdict.duration_ms
        verdicts.append(verdict)
    failed = [v for v in verdicts if not v.passed]
    run.state.update(image_verdicts=verdicts, feedback=" ".join(v.feedback for v in failed))
    run.emit("validate.verdict", "validate_image", {"passed": not failed, "attempt": attempt})
    return "failed" if failed else None


def fill_result(job, state) -> None:
    job.image.CopyFrom(opb.ImageResult(images=state.get(IMAGES, []), verdicts=state.get(IMAGE_VERDICTS, []),
                                       attempts=state.get(IMAGE_ATTEMPT, 0)))


register(JobKind(
    name="image",
    validate=validate,
    fill_result=fill_result,
    result_needs=(IMAGES,),
    pipelines={
        "image": Pipeline(
            kind="image",
            description="Text-to-image, then the validator's image-default policy; a failed verdict retries once "
            "with the next seed",
            steps=[StepDef(name="generate_image"), StepDef(name="validate_image", params={"policy": "image-default"})],
            retry=RetryRule(on="validate_image", restart_at="generate_image", max_retries=1),
        ),
    },
))
