"""Video core without a model: request validation, proto conversion, encoders."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from genstack.video.v1 import video_pb2 as pb
from services.video import scenes
from services.video.core import MAX_SEED, VideoCore, VideoRequest, decode_mp4, encode_gif, encode_mp4, encode_png
from services.video.grpc_api import to_core
from services.video.settings import VideoSettings
from shared.errors import InvalidArgument


@pytest.fixture(scope="module")
def core() -> VideoCore:
    # default_size set: resolve() never needs the model
    return VideoCore(VideoSettings(default_size=32, max_frames=32, max_size=128))


def ok(**kw) -> VideoRequest:
    kw.setdefault("prompt", "a red circle moving left on a blue background")
    return VideoRequest(**kw)


def test_defaults_are_filled_in(core):
    r = core.resolve(ok())
    assert (r.num_frames, r.fps, r.width, r.height, r.steps) == (16, 8, 32, 32, 25)
    assert (r.scheduler, r.format, r.frame_noise, r.output) == ("ddim", "mp4", "shared", "auto")
    assert r.guidance_scale == 1.5 and r.noise_share == 0.5 and 0 <= r.seed < 2**31
    assert core.resolve(ok(frame_noise="independent", noise_share=0.7)).noise_share == 0.0


BAD = [
    (dict(prompt=""), "prompt", "non-empty"),
    (dict(prompt="   "), "prompt", "non-empty"),
    (dict(prompt="x" * 2001), "prompt", "at most 2000"),
    (dict(negative_prompt="x" * 2001), "negative_prompt", "at most 2000"),
    (dict(num_frames=1), "num_frames", "between 2 and 32"),
    (dict(num_frames=33), "num_frames", "between 2 and 32"),
    (dict(fps=0), "fps", "between 1 and 60"),
    (dict(fps=61), "fps", "between 1 and 60"),
    (dict(width=36), "width", "multiple of 8 between 16 and 128"),
    (dict(width=8), "width", "multiple of 8 between 16 and 128"),
    (dict(height=136), "height", "multiple of 8 between 16 and 128"),
    (dict(steps=0), "steps", "between 1 and 100"),
    (dict(steps=101), "steps", "between 1 and 100"),
    (dict(guidance_scale=-0.5), "guidance_scale", "between 0 and 30"),
    (dict(guidance_scale=float("nan")), "guidance_scale", "between 0 and 30"),
    (dict(seed=-1), "seed", f"between 0 and {MAX_SEED}"),
    (dict(scheduler="plms"), "scheduler", "one of ddim, dpm-solver++, euler"),
    (dict(format="avi"), "format", "one of mp4, gif, png"),
    (dict(output="email"), "output", "one of auto, inline, artifact"),
    (dict(frame_noise="pink"), "frame_noise", "one of independent, shared"),
    (dict(noise_share=1.0), "noise_share", "between 0 and 0.95"),
    (dict(preview_every=-1), "preview_every", ">= 0"),
    (dict(preview_size=4), "preview_size", "between 8 and 128"),
    (dict(num_frames=4, preview_frames=5), "preview_frames", "between 1 and num_frames (4)"),
]


@pytest.mark.parametrize("change,field,allowed", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_field_and_range(core, change, field, allowed):
    with pytest.raises(InvalidArgument) as err:
        core.resolve(ok(**change))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.field == field and err.value.message.startswith(f"{field}: ")
    assert allowed in err.value.message, err.value.message


def test_proto_conversion_keeps_unset_fields_unset_and_rejects_unknown_enums():
    r = to_core(pb.GenerateVideoRequest(prompt="p", num_frames=8, seed=0, format=pb.VIDEO_FORMAT_GIF,
                                        frame_noise=pb.FRAME_NOISE_INDEPENDENT, noise_share=0.0))
    assert (r.num_frames, r.seed, r.format, r.frame_noise, r.noise_share) == (8, 0, "gif", "independent", 0.0)
    assert r.fps is None and r.steps is None and r.width is None and r.scheduler is None
    for name in ("scheduler", "format", "output", "frame_noise"):
        with pytest.raises(InvalidArgument) as err:
            to_core(pb.GenerateVideoRequest(prompt="p", **{name: 99}))
        assert err.value.field == name


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return scenes.render(scenes.Scene("square", "white", "black", "right"), np.random.default_rng(0))


def test_mp4_is_h264_with_every_frame_and_the_same_bytes_for_the_same_frames(clip):
    data = encode_mp4(clip, 8, {"seed": 1})
    assert data[4:8] == b"ftyp" and b"avc1" in data[:4096]
    assert encode_mp4(clip, 8, {"seed": 1}) == data
    frames = decode_mp4(data)
    assert frames.shape == clip.shape
    # yuv420p halves the chroma: small differences, same scene read back
    assert np.abs(frames.astype(int) - clip).mean() < 12
    assert scenes.track(frames).scene == scenes.Scene("square", "white", "black", "right")


def test_gif_shows_every_frame_at_the_fps(clip):
    img = Image.open(io.BytesIO(encode_gif(clip, 8)))
    assert img.info.get("loop") == 0
    # Pillow merges a frame identical to the one before into its duration: the timeline is the same
    # (GIF counts time in centiseconds: 125 ms is stored as 120)
    unit = img.info["duration"]
    assert abs(unit - 125) <= 10
    shown = []
    for i in range(img.n_frames):
        img.seek(i)
        shown += [np.asarray(img.convert("RGB")).astype(int)] * round(img.info["duration"] / 125)
    assert len(shown) == 16
    assert max(np.abs(a - b).max() for a, b in zip(shown, clip.astype(int), strict=True)) <= 8


def test_png_frames_are_lossless_and_carry_their_parameters(clip):
    png = encode_png(clip[3], {"seed": 9, "frame": 3})
    img = Image.open(io.BytesIO(png))
    assert np.array_equal(np.asarray(img), clip[3])
    assert '"frame": 3' in img.text["genstack"] and '"seed": 9' in img.text["genstack"]
