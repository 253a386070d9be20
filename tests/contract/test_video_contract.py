"""The video service's contract, run unchanged over every transport (inproc, grpc, celery) with the
project's default model (GENSTACK_VIDEO_MODEL may point elsewhere)."""

from __future__ import annotations

import io
import sys

import grpc
import numpy as np
import pytest
from PIL import Image

from genstack.video.v1 import video_pb2 as pb
from services.video.core import decode_mp4
from shared.artifacts import get_store
from shared.clients.video import VideoClient
from shared.errors import GenstackError
from tests.conftest import TRANSPORTS
from tests.support import ServiceProcess

pytestmark = pytest.mark.slow

PROMPT = "a yellow triangle moving up on a purple background"


class VideoProcess(ServiceProcess):
    """`python -m services.video grpc|worker`: the service's own entry point, which runs whether or not the
    catalogue lists the service as implemented yet (`genstack serve` offers only those)."""

    def start(self) -> VideoProcess:
        import subprocess
        import threading

        from tests.support import ROOT

        args = [sys.executable, "-m", "services.video", self.role] + (["0"] if self.role == "grpc" else [])
        self.proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        if self.role == "grpc":
            self._wait_grpc()
        else:
            self._wait_worker()
        return self


@pytest.fixture(scope="module")
def processes(redis_client):
    started: dict[str, VideoProcess] = {}

    def get(role: str) -> VideoProcess:
        if role not in started:
            if role == "worker":
                redis_client.delete("video")  # stale messages from an earlier, killed run
            started[role] = VideoProcess("video", role).start()
        return started[role]

    yield get
    for proc in started.values():
        proc.stop()


@pytest.fixture(scope="module", params=TRANSPORTS)
def client(request, processes) -> VideoClient:
    if request.param == "grpc":
        c = VideoClient("grpc", address=processes("grpc").address)
    elif request.param == "celery":
        processes("worker")
        c = VideoClient("celery")
    else:
        c = VideoClient("inproc")
    yield c
    c.close()


def req(**kw) -> pb.GenerateVideoRequest:
    kw.setdefault("prompt", PROMPT)
    kw.setdefault("steps", 3)
    kw.setdefault("num_frames", 8)
    kw.setdefault("seed", 2024)
    return pb.GenerateVideoRequest(**kw)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def reference():
    """Computed in this process: every transport must return the same frames for the same seed."""
    ref = VideoClient("inproc")
    return {
        "mp4": ref.generate_video(req(), timeout=300),
        "png": ref.generate_video(req(format=pb.VIDEO_FORMAT_PNG_FRAMES, scheduler=pb.SCHEDULER_DPM_SOLVER_PP,
                                      seed=7), timeout=300),
    }


def test_seeded_clips_are_identical_across_transports(client, reference):
    got = client.generate_video(req(), timeout=300)
    v = got.video
    assert v.data == reference["mp4"].video.data and v.mime_type == "video/mp4" and not v.artifact.uri
    assert decode_mp4(v.data).shape == (8, 32, 32, 3)
    assert (v.num_frames, v.fps, v.width, v.height) == (8, 8, 32, 32) and v.duration_s == pytest.approx(1.0)
    m = got.metadata
    assert (m.seed, m.steps, m.scheduler, m.format) == (2024, 3, pb.SCHEDULER_DDIM, pb.VIDEO_FORMAT_MP4)
    assert m.frame_noise == pb.FRAME_NOISE_SHARED and m.noise_share == pytest.approx(0.5)
    assert m.guidance_scale == pytest.approx(1.5) and m.prompt == PROMPT
    assert m.seconds_per_clip > 0 and m.steps_per_second > 0
    assert {"queue", "denoise", "encode", "metrics"} <= {t.name for t in m.timings}
    c = got.coherence
    assert c == reference["mp4"].coherence
    assert 0 <= c.background_flicker <= 255 and -1 <= c.mean_ssim <= 1
    png = client.generate_video(req(format=pb.VIDEO_FORMAT_PNG_FRAMES, scheduler=pb.SCHEDULER_DPM_SOLVER_PP, seed=7),
                                timeout=300)
    assert list(png.video.frames) == list(reference["png"].video.frames) and len(png.video.frames) == 8
    assert png.video.mime_type == "image/png" and pixels(png.video.frames[0]).shape == (32, 32, 3)
    other = client.generate_video(req(seed=2025, format=pb.VIDEO_FORMAT_PNG_FRAMES), timeout=300)
    assert list(other.video.frames) != list(png.video.frames)


def test_stream_sends_one_event_per_step_then_the_clip(client, reference):
    msgs = list(client.generate_video_stream(
        pb.GenerateVideoStreamRequest(request=req(), preview_every=2, preview_size=16, preview_frames=3), timeout=300))
    progress = [m.progress for m in msgs if m.HasField("progress")]
    assert [p.step for p in progress] == [1, 2, 3] and all(p.total_steps == 3 for p in progress)
    assert [p.step for p in progress if p.preview_frames] == [2, 3]
    assert list(progress[1].preview_frame_indices) == [0, 4, 7] and len(progress[1].preview_frames) == 3
    assert max(Image.open(io.BytesIO(progress[1].preview_frames[0])).size) <= 16
    assert msgs[-1].HasField("result") and sum(m.HasField("result") for m in msgs) == 1
    assert msgs[-1].result.video.data == reference["mp4"].video.data
    plain = list(client.generate_video_stream(pb.GenerateVideoStreamRequest(request=req(steps=2)), timeout=300))
    assert len(plain) == 3 and not any(m.progress.preview_frames for m in plain[:-1])


def test_cancel_mid_stream_stops_at_the_next_step(client):
    # 100 steps of 16 frames take minutes here; the cancelled run must not hold the model that long.
    stream = client.generate_video_stream(pb.GenerateVideoStreamRequest(
        request=req(steps=100, num_frames=16, seed=1)), timeout=600)
    seen = 0
    for msg in stream:
        if msg.HasField("progress"):
            seen += 1
        if seen >= 2:
            break
    stream.cancel()
    nxt = client.generate_video(req(steps=1), timeout=300)
    queue_ms = {t.name: t.duration_ms for t in nxt.metadata.timings}["queue"]
    assert queue_ms < 8000, nxt.metadata.timings  # at most the one step in flight (a few s on a busy CPU)
    assert nxt.video.data


def test_artifact_mode_returns_uris_for_clips_and_frames(client):
    forced = client.generate_video(req(steps=1, output=pb.OUTPUT_MODE_ARTIFACT), timeout=300)
    ref = forced.video.artifact
    assert not forced.video.data and ref.uri and ref.mime_type == "video/mp4"
    data = get_store().get(ref.uri)
    assert len(data) == ref.size_bytes and decode_mp4(data).shape == (8, 32, 32, 3)
    gif = client.generate_video(req(steps=1, format=pb.VIDEO_FORMAT_GIF, output=pb.OUTPUT_MODE_ARTIFACT), timeout=300)
    assert gif.video.artifact.mime_type == "image/gif" and get_store().get(gif.video.artifact.uri)[:6] == b"GIF89a"
    frames = client.generate_video(req(steps=1, format=pb.VIDEO_FORMAT_PNG_FRAMES, output=pb.OUTPUT_MODE_ARTIFACT),
                                   timeout=300)
    assert not frames.video.frames and len(frames.video.frame_artifacts) == 8
    assert pixels(get_store().get(frames.video.frame_artifacts[0].uri)).shape == (32, 32, 3)
    inline = client.generate_video(req(steps=1, output=pb.OUTPUT_MODE_INLINE), timeout=300)
    assert inline.video.data and not inline.video.artifact.uri


BAD_INPUTS = [
    ("empty prompt", dict(prompt=""), "prompt"),
    ("over-long prompt", dict(prompt="a red circle " * 200), "prompt"),
    ("one frame", dict(num_frames=1), "num_frames"),
    ("too many frames", dict(num_frames=1000), "num_frames"),
    ("zero fps", dict(fps=0), "fps"),
    ("fps above the cap", dict(fps=240), "fps"),
    ("width not a multiple of 8", dict(width=33), "width"),
    ("height outside the range", dict(height=4096), "height"),
    ("zero steps", dict(steps=0), "steps"),
    ("negative guidance", dict(guidance_scale=-1.0), "guidance_scale"),
    ("unknown scheduler", dict(scheduler=42), "scheduler"),
    ("unknown format", dict(format=42), "format"),
    ("noise share of one", dict(noise_share=1.0), "noise_share"),
]


@pytest.mark.parametrize("case,change,field", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_invalid_argument_naming_the_field(client, case, change, field):
    request = req(**change)
    for call in (lambda: client.generate_video(request, timeout=60),
                 lambda: list(client.generate_video_stream(pb.GenerateVideoStreamRequest(request=request),
                                                           timeout=60))):
        with pytest.raises(GenstackError) as err:
            call()
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert field in err.value.message and ("between" in err.value.message or "one of" in err.value.message
                                               or "non-empty" in err.value.message or "multiple" in err.value.message
                                               or "at most" in err.value.message), err.value.message
    # nothing is broken afterwards
    assert client.generate_video(req(steps=1, num_frames=2), timeout=120).video.data


def test_deadline_exceeded(client):
    with pytest.raises(GenstackError) as err:
        client.generate_video(req(steps=100, num_frames=16), timeout=1.5)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    nxt = client.generate_video(req(steps=1, num_frames=2), timeout=120)
    assert {t.name: t.duration_ms for t in nxt.metadata.timings}["queue"] < 8000


def test_queued_generate_task_returns_an_artifact(processes, reference):
    """A producer that only speaks Celery: send_task("video.generate") -> GenerateVideoResponse JSON with a URI."""
    from google.protobuf import json_format

    from shared.celery_app import make_celery

    processes("worker")
    app = make_celery()
    payload = json_format.MessageToDict(req())
    result = app.send_task("video.generate", args=[payload], kwargs={"deadline_s": 300}, queue="video")
    response = json_format.ParseDict(result.get(timeout=300), pb.GenerateVideoResponse())
    assert not response.video.data and response.video.artifact.uri
    assert get_store().get(response.video.artifact.uri) == reference["mp4"].video.data
    assert response.metadata.seed == 2024 and response.coherence == reference["mp4"].coherence
    bad = app.send_task("video.generate", args=[{"prompt": "", "steps": 2}], queue="video")
    with pytest.raises(Exception) as err:
        bad.get(timeout=60)
    assert type(err.value).__name__ == "InvalidArgument" and "prompt" in str(err.value)
