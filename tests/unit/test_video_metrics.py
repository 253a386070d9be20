"""Coherence figures: SSIM, background flicker and the tracked object's smoothness."""

from __future__ import annotations

import numpy as np
import pytest

from services.video import metrics, scenes


def test_ssim_is_one_for_identical_frames_and_drops_with_noise():
    rng = np.random.default_rng(0)
    img = np.add.outer(np.arange(32.0), np.arange(32.0)) * 4  # a smooth ramp
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img + rng.normal(0, 20, img.shape), 0, 255)
    assert metrics.ssim(img, noisy) < 0.5


def test_a_clean_render_has_no_background_flicker_and_steady_motion():
    clip = scenes.render(scenes.Scene("circle", "white", "green", "right"), np.random.default_rng(1))
    c = metrics.coherence(clip)
    assert c.background_flicker == pytest.approx(0.0)
    assert c.object_tracked and c.track_smoothness < 0.5 and c.object_found == 1.0
    assert c.displacement[0] > 5 and abs(c.displacement[1]) < 1
    assert 0.3 < c.mean_ssim < 1.0  # the object moves, so consecutive frames differ a little


def test_flicker_grows_with_background_noise_and_ssim_falls():
    clip = scenes.render(scenes.Scene("square", "red", "blue", "up"), np.random.default_rng(2)).astype(np.float32)
    noisy = np.clip(clip + np.random.default_rng(3).normal(0, 12, clip.shape), 0, 255).astype(np.uint8)
    clean = metrics.coherence(clip.astype(np.uint8))
    worse = metrics.coherence(noisy)
    assert worse.background_flicker > clean.background_flicker + 5
    assert worse.mean_ssim < clean.mean_ssim


def test_jittery_motion_reads_as_less_smooth():
    rng = np.random.default_rng(4)
    scene = scenes.Scene("circle", "yellow", "black", "down")
    clip = scenes.render(scene, rng)
    jitter = clip.copy()
    jitter[1::2] = np.roll(clip[1::2], 3, axis=2)  # every other frame jumps 3 px sideways
    assert metrics.coherence(jitter).track_smoothness > metrics.coherence(clip).track_smoothness + 1


def test_busy_frames_fall_back_to_all_pixels():
    rng = np.random.default_rng(5)
    clip = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    c = metrics.coherence(clip)
    assert c.background_flicker > 50 and not c.object_tracked and c.track_smoothness == 0.0
