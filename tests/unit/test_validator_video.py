"""Video checks: decodes (MP4 via imageio-ffmpeg, GIF via Pillow, frames), frame count/fps/size, temporal
coherence (SSIM) and flicker; damaged or undecodable videos. Test videos are built here from numpy arrays."""

from __future__ import annotations

import io
import os
import tempfile

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from services.validator.core import ValidatorCore
from services.validator.datatypes import Artifact, CheckSpec, Context, ExpectedMedia
from services.validator.media import flicker_series, ssim_pairs
from services.validator.settings import ValidatorSettings
from shared.errors import InvalidArgument, ResourceExhausted


def mp4(frames: np.ndarray, fps: float = 8, faststart: bool = False) -> bytes:
    """Encode T x H x W x 3 uint8 frames as H.264 MP4 with imageio-ffmpeg's ffmpeg."""
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        h, w = frames.shape[1:3]
        writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, macro_block_size=1, quality=8,
                                             output_params=["-movflags", "+faststart"] if faststart else [])
        writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def gif(frames: np.ndarray, fps: float = 10) -> bytes:
    buf = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def moving_square(n=16, w=64, h=48) -> np.ndarray:
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[...] = (30, 60, 90)
    for t in range(n):
        frames[t, 16:32, 4 + 2 * t : 16 + 2 * t] = (250, 200, 40)
    return frames


def noise(n=16, w=64, h=48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def flickering(n=16) -> np.ndarray:
    frames = moving_square(n).astype(np.int16)
    frames[1::2] += 60  # every other frame brighter
    return np.clip(frames, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def validator() -> ValidatorCore:
    return ValidatorCore(ValidatorSettings(warm_up_models=False))


@pytest.fixture(scope="module")
def good_mp4() -> bytes:
    return mp4(moving_square())


def run(validator, artifact, expected=None, checks=None, policy="video-default"):
    return validator.validate(artifact, Context(expected=expected or ExpectedMedia()), policy=policy,
                              checks=checks or [])


def test_a_smooth_mp4_passes_the_default_policy(validator, good_mp4):
    v = run(validator, Artifact.of_video(good_mp4), ExpectedMedia(64, 48, 16, 8))
    assert v.passed, [r.message for r in v.results]
    assert v.result("video_decodes").message == "decoded h264 16 frame(s) 64x48 at 8 fps"
    coherence = v.result("video_coherence")
    assert coherence.score > 0.9 and coherence.evidence[0].where.startswith("frames ")
    assert v.result("video_flicker").score > 0.9


def test_frame_count_fps_and_size_as_requested(validator, good_mp4):
    v = run(validator, Artifact.of_video(good_mp4), ExpectedMedia(32, 32, 24, 12))
    r = v.result("video_frames")
    assert not r.passed and not v.passed
    assert r.message == "16 frames, expected 24; 8 fps, expected 12; frames are 64x48, expected 32x32"
    assert "Generate exactly 24 frames (got 16)." in r.feedback and "at 12 fps (got 8)" in r.feedback


def test_frame_bounds_from_params(validator, good_mp4):
    spec = CheckSpec("video_frames", {"min_frames": 20})
    r = run(validator, Artifact.of_video(good_mp4), checks=[spec]).result("video_frames")
    assert not r.passed and r.feedback == "Generate at least 20 frames (got 16)."
    spec = CheckSpec("video_frames", {"num_frames": 16, "fps": 8})
    assert run(validator, Artifact.of_video(good_mp4), checks=[spec]).result("video_frames").passed


def test_random_frames_are_incoherent(validator):
    v = run(validator, Artifact.of_video(mp4(noise())))
    r = v.result("video_coherence")
    assert not r.passed and r.score < 0.1
    assert "mean SSIM" in r.message and "change too abruptly" in r.feedback
    assert len(r.evidence) == 3 and all(e.end == e.start + 1 for e in r.evidence)


def test_a_single_cut_is_caught_by_the_pair_threshold(validator):
    frames = moving_square()
    frames[8:] = 255 - frames[8:]  # a hard cut half way
    spec = CheckSpec("video_coherence", {"min_mean_ssim": 0.3, "min_pair_ssim": 0.5})
    r = run(validator, Artifact.of_video(mp4(frames)), checks=[spec]).result("video_coherence")
    assert not r.passed and "1 pair(s) below 0.5" in r.message
    assert (r.evidence[0].start, r.evidence[0].end) == (7, 8)


def test_flicker_fails_while_a_fade_passes(validator):
    r = run(validator, Artifact.of_video(mp4(flickering()))).result("video_flicker")
    assert not r.passed and "brightness flickers" in r.feedback
    fade = np.stack([np.full((48, 64, 3), 20 + 10 * t, np.uint8) for t in range(16)])
    fade[:, 10:20, 10:20] = 255
    r = run(validator, Artifact.of_video(mp4(fade))).result("video_flicker")
    assert r.passed, r.message


def test_ssim_and_flicker_measures_on_known_inputs():
    gray = np.stack([np.tile(np.arange(32, dtype=float) * 8, (32, 1))] * 3)
    assert ssim_pairs(gray) == pytest.approx([1.0, 1.0])
    assert ssim_pairs(np.stack([gray[0], 255 - gray[0]]))[0] < 0
    levels = np.array([10, 40, 10, 40, 10], float) * 255 / 100  # alternating 10% / 40% brightness
    series = flicker_series(np.broadcast_to(levels[:, None, None], (5, 4, 4)))
    assert series == pytest.approx([0.3, 0.3, 0.3])


def test_animated_gif_decodes_with_its_frame_rate(validator):
    v = run(validator, Artifact.of_video(gif(moving_square(), fps=10)), ExpectedMedia(64, 48, 16, 10))
    assert v.passed, [r.message for r in v.results]
    assert v.result("video_decodes").message.startswith("decoded GIF 16 frame(s) 64x48 at 10 fps")


def test_frames_given_as_images(validator):
    pngs = []
    for f in moving_square(6):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    v = run(validator, Artifact.of_frames(pngs, fps=4), ExpectedMedia(64, 48, 6, 4))
    assert v.passed, [r.message for r in v.results]
    bad = pngs[:2] + [pngs[2][:50]]
    with pytest.raises(InvalidArgument, match=r"artifact.frames.images\[2\]: cannot be decoded"):
        run(validator, Artifact.of_frames(bad, fps=4))


def test_a_damaged_mp4_decodes_in_part_and_fails_the_decodes_check(validator):
    grainy = moving_square(32).astype(np.int16) + np.random.default_rng(1).integers(-20, 20, (32, 48, 64, 3))
    data = mp4(np.clip(grainy, 0, 255).astype(np.uint8), faststart=True)  # index first: a cut file still plays
    v = run(validator, Artifact.of_video(data[: len(data) * 7 // 10]), ExpectedMedia(num_frames=32))
    r = v.result("video_decodes")
    assert not r.passed and "decoder error" in r.message and "damaged" in r.feedback
    frames = v.result("video_frames")
    assert not frames.passed and "expected 32" in frames.message  # the frames that did decode are checked


@pytest.mark.parametrize("data, reason", [
    (b"", "is empty"),
    (b"definitely not a video" * 50, "cannot be decoded as a video"),
])
def test_undecodable_videos_are_invalid_argument(validator, data, reason):
    with pytest.raises(InvalidArgument) as info:
        run(validator, Artifact.of_video(data))
    msg = info.value.message
    assert msg.startswith("artifact.video: ") and reason in msg
    assert "genstack-validate-" not in msg  # the temporary file's name does not leak


def test_an_mp4_cut_before_its_index_is_invalid_argument(validator, good_mp4):
    with pytest.raises(InvalidArgument, match="cannot be decoded as a video"):
        run(validator, Artifact.of_video(good_mp4[: len(good_mp4) // 2]))


def test_too_many_frames_is_resource_exhausted(good_mp4):
    small = ValidatorCore(ValidatorSettings(warm_up_models=False, max_frames=8))
    with pytest.raises(ResourceExhausted, match="more than 8 frames"):
        run(small, Artifact.of_video(good_mp4))
    tiny = ValidatorCore(ValidatorSettings(warm_up_models=False, max_decoded_video_bytes=64 * 48 * 3 * 4))
    with pytest.raises(ResourceExhausted, match="decoded frames exceed"):
        run(tiny, Artifact.of_video(good_mp4))
