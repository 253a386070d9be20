"""The image service's contract, run unchanged over every transport (inproc, grpc, celery) with
the project's real default model."""

from __future__ import annotations

import io

import grpc
import pytest
from PIL import Image

from genstack.image.v1 import image_pb2 as pb
from shared.artifacts import get_store
from shared.clients.image import ImageClient
from shared.errors import GenstackError
from tests.conftest import TRANSPORTS

pytestmark = pytest.mark.slow

PROMPT = "a yellow triangle on a purple background"


@pytest.fixture(scope="module", params=TRANSPORTS)
def client(request, client_factory) -> ImageClient:
    return client_factory(ImageClient, request.param)


def req(**kw) -> pb.GenerateImageRequest:
    kw.setdefault("prompt", PROMPT)
    kw.setdefault("steps", 4)
    kw.setdefault("seed", 2024)
    return pb.GenerateImageRequest(**kw)


def size_of(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


@pytest.fixture(scope="module")
def reference():
    """Computed in this process: every transport must return the same pixels for the same seed."""
    ref = ImageClient("inproc")
    return {
        "ddim": ref.generate_image(req(), timeout=120),
        "two": ref.generate_image(req(num_images=2, scheduler=pb.SCHEDULER_DPM_SOLVER_PP, seed=7), timeout=120),
    }


def test_seeded_images_are_identical_across_transports(client, reference):
    got = client.generate_image(req(), timeout=120)
    assert [i.png for i in got.images] == [i.png for i in reference["ddim"].images]
    assert size_of(got.images[0].png) == (32, 32)
    m = got.metadata
    assert (m.seed, m.steps, m.width, m.height, m.scheduler) == (2024, 4, 32, 32, pb.SCHEDULER_DDIM)
    assert m.guidance_scale == pytest.approx(1.5)
    assert m.seconds_per_image > 0 and m.steps_per_second > 0
    assert {"queue", "denoise", "encode"} <= {t.name for t in m.timings}
    two = client.generate_image(req(num_images=2, scheduler=pb.SCHEDULER_DPM_SOLVER_PP, seed=7), timeout=120)
    assert [i.png for i in two.images] == [i.png for i in reference["two"].images]
    assert [i.seed for i in two.images] == [7, 8]
    assert two.metadata.scheduler == pb.SCHEDULER_DPM_SOLVER_PP


def test_stream_sends_one_event_per_step_then_the_result(client, reference):
    msgs = list(client.generate_image_stream(
        pb.GenerateImageStreamRequest(request=req(), preview_every=3, preview_size=16), timeout=120))
    progress = [m.progress for m in msgs if m.HasField("progress")]
    assert [p.step for p in progress] == [1, 2, 3, 4]
    assert all(p.total_steps == 4 for p in progress)
    assert [p.step for p in progress if p.previews] == [3, 4]
    assert max(size_of(progress[2].previews[0])) <= 16
    assert msgs[-1].HasField("result") and sum(m.HasField("result") for m in msgs) == 1
    assert [i.png for i in msgs[-1].result.images] == [i.png for i in reference["ddim"].images]
    plain = list(client.generate_image_stream(pb.GenerateImageStreamRequest(request=req(steps=3)), timeout=120))
    assert len(plain) == 4 and not any(m.progress.previews for m in plain[:-1])


def test_cancel_mid_stream_stops_at_the_next_step(client):
    # ~100 steps at 128x128 take many seconds; the cancelled run must not hold the model that long.
    stream = client.generate_image_stream(
        pb.GenerateImageStreamRequest(request=req(steps=100, width=128, height=128, seed=1)), timeout=300)
    seen = 0
    for msg in stream:
        if msg.HasField("progress"):
            seen += 1
        if seen >= 2:
            break
    stream.cancel()
    nxt = client.generate_image(req(steps=2), timeout=120)
    queue_ms = {t.name: t.duration_ms for t in nxt.metadata.timings}["queue"]
    assert queue_ms < 3000, nxt.metadata.timings
    assert nxt.images[0].png


def test_large_images_and_artifact_mode_return_uris(client):
    forced = client.generate_image(req(steps=2, output=pb.OUTPUT_MODE_ARTIFACT), timeout=120)
    ref = forced.images[0].artifact
    assert not forced.images[0].png and ref.uri and ref.mime_type == "image/png"
    data = get_store().get(ref.uri)
    assert len(data) == ref.size_bytes and size_of(data) == (32, 32)
    big = client.generate_image(req(steps=1, width=264, height=256), timeout=120)  # above 256*256 pixels
    assert not big.images[0].png and big.images[0].artifact.uri
    assert size_of(get_store().get(big.images[0].artifact.uri)) == (264, 256)
    inline = client.generate_image(req(steps=1, width=256, height=256, output=pb.OUTPUT_MODE_INLINE), timeout=120)
    assert size_of(inline.images[0].png) == (256, 256) and not inline.images[0].artifact.uri


BAD_INPUTS = [
    ("empty prompt", dict(prompt=""), "prompt"),
    ("width not a multiple of 8", dict(width=33), "width"),
    ("height not a multiple of 8", dict(height=20), "height"),
    ("width outside the range", dict(width=4096), "width"),
    ("height outside the range", dict(height=8), "height"),
    ("zero steps", dict(steps=0), "steps"),
    ("steps above the cap", dict(steps=1000), "steps"),
    ("negative guidance", dict(guidance_scale=-1.0), "guidance_scale"),
    ("zero images", dict(num_images=0), "num_images"),
    ("more images than the cap", dict(num_images=64), "num_images"),
]


@pytest.mark.parametrize("case,change,field", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_invalid_argument_naming_the_field(client, case, change, field):
    request = req(**change)
    for call in (lambda: client.generate_image(request, timeout=60),
                 lambda: list(client.generate_image_stream(pb.GenerateImageStreamRequest(request=request),
                                                           timeout=60))):
        with pytest.raises(GenstackError) as err:
            call()
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert field in err.value.message, err.value.message
    # nothing is broken afterwards
    assert client.generate_image(req(steps=1), timeout=60).images[0].png


def test_deadline_exceeded(client):
    with pytest.raises(GenstackError) as err:
        client.generate_image(req(steps=100, width=128, height=128), timeout=1.5)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    nxt = client.generate_image(req(steps=1), timeout=60)
    assert {t.name: t.duration_ms for t in nxt.metadata.timings}["queue"] < 3000


def test_queued_generate_task_returns_artifacts(service_process, reference):
    """A producer that only speaks Celery: send_task("image.generate") -> GenerateImageResponse JSON with URIs."""
    from google.protobuf import json_format

    from shared.celery_app import make_celery

    service_process("image", "worker")
    app = make_celery()
    payload = json_format.MessageToDict(req())
    result = app.send_task("image.generate", args=[payload], kwargs={"deadline_s": 120}, queue="image")
    doc = result.get(timeout=120)
    response = json_format.ParseDict(doc, pb.GenerateImageResponse())
    image = response.images[0]
    assert not image.png and image.artifact.uri
    assert get_store().get(image.artifact.uri) == reference["ddim"].images[0].png
    assert response.metadata.seed == 2024
    bad = app.send_task("image.generate", args=[{"prompt": "", "steps": 2}], queue="image")
    with pytest.raises(Exception) as err:
        bad.get(timeout=60)
    assert type(err.value).__name__ == "InvalidArgument" and "prompt" in str(err.value)
