"""Temporal coherence of a clip, measured on its frames with no downloaded network.

- background flicker: mean absolute change (0-255 levels, over RGB) of background pixels between
  consecutive frames. Background: pixels that are not near the object in either frame (object =
  pixels far from the border's median colour, dilated by one pixel); when that leaves under 5 % of
  the frame (a busy scene with no plain background), all pixels count.
- SSIM of consecutive frames: the structural similarity on luma with 7x7 uniform windows (the
  constants of Wang et al. 2004), averaged over the frame and over the pairs.
- track: the object followed through the clip (services.video.scenes.track): whether it was found,
  its fitted travel, and the smoothness of its motion (RMS deviation of the frame-to-frame centroid
  steps from their mean step, pixels; 0 is a perfectly steady motion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation, uniform_filter

from services.video import scenes


@dataclass(frozen=True)
class Coherence:
    background_flicker: float
    mean_ssim: float
    object_tracked: bool
    track_smoothness: float
    object_found: float
    displacement: tuple[float, float]


def luma(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float64)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM of two 2-D arrays of 0-255 values."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = uniform_filter(a, window), uniform_filter(b, window)
    var_a = uniform_filter(a * a, window) - mu_a**2
    var_b = uniform_filter(b * b, window) - mu_b**2
    cov = uniform_filter(a * b, window) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def mean_ssim(frames: np.ndarray) -> float:
    y = luma(frames)
    if len(y) < 2:
        return 1.0
    return float(np.mean([ssim(y[i], y[i + 1]) for i in range(len(y) - 1)]))


def background_flicker(frames: np.ndarray, masks: np.ndarray | None = None) -> float:
    if len(frames) < 2:
        return 0.0
    masks = scenes.object_masks(frames) if masks is None else masks
    near = np.stack([binary_dilation(m, iterations=1) for m in masks])
    f = frames.astype(np.float32)
    diffs = []
    for i in range(len(frames) - 1):
        background = ~(near[i] | near[i + 1])
        change = np.abs(f[i + 1] - f[i]).mean(axis=-1)
        if background.mean() < 0.05:
            diffs.append(float(change.mean()))
        else:
            diffs.append(float(change[background].mean()))
    return float(np.mean(diffs))


def coherence(frames: np.ndarray) -> Coherence:
    """The coherence figures of an [F, H, W, 3] uint8 clip."""
    masks = scenes.object_masks(frames)
    tr = scenes.track(frames)
    tracked = tr.found >= 0.5 and not np.isnan(tr.smoothness)
    return Coherence(
        background_flicker=background_flicker(frames, masks),
        mean_ssim=mean_ssim(frames),
        object_tracked=bool(tracked),
        track_smoothness=float(tr.smoothness) if tracked else 0.0,
        object_found=tr.found,
        displacement=tr.displacement,
    )
