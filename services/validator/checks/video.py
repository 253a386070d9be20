"""Video checks: it decodes, has the requested frame count, fps and size, consecutive frames are
coherent (mean SSIM), and brightness does not flicker."""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator, model_validator

from services.validator.checks.base import Params, Subject, check
from services.validator.datatypes import CheckOutcome, Evidence
from services.validator.media import downscale, flicker_series, luma, ssim_pairs


class VideoDecodesParams(Params):
    formats: list[str] = Field(
        default_factory=list,
        description="Allowed codecs/containers as decoded, e.g. [\"h264\", \"GIF\"] (empty: any)",
    )

    @field_validator("formats")
    @classmethod
    def _lower(cls, v):
        return [f.strip().lower() for f in v if f.strip()]


@check("video_decodes", kinds=("video",), params=VideoDecodesParams,
       description="The video decodes completely (no decoder errors) in an allowed format; bytes that yield no "
       "frame at all are INVALID_ARGUMENT")
def video_decodes(p: VideoDecodesParams, s: Subject) -> CheckOutcome:
    v = s.video()
    described = f"{v.format} {v.num_frames} frame(s) {v.width}x{v.height} at {v.fps:g} fps"
    if p.formats and v.format.lower() not in p.formats:
        return CheckOutcome(False, 0.0, f"decoded {described}, but allowed formats are {', '.join(p.formats)}",
                            [Evidence("format", v.format, "artifact")],
                            f"Encode the video as {' or '.join(p.formats)} (got {v.format}).")
    if v.decode_errors:
        return CheckOutcome(False, 0.5, f"decoded {described} with {len(v.decode_errors)} decoder error(s): "
                            f"{v.decode_errors[0]}",
                            [Evidence("decode_error", e, "artifact") for e in v.decode_errors[:5]],
                            "The video file is damaged (it decodes only in part): encode it again completely.")
    return CheckOutcome(True, 1.0, f"decoded {described}")


class VideoFramesParams(Params):
    num_frames: int | None = Field(None, ge=1, description="Exact frame count (default: context.expected.num_frames)")
    min_frames: int | None = Field(None, ge=1, description="Fewest frames")
    max_frames: int | None = Field(None, ge=1, description="Most frames")
    fps: float | None = Field(None, gt=0, description="Expected frames per second (default: context.expected.fps)")
    fps_tolerance: float = Field(0.01, ge=0, description="Allowed relative fps deviation (0.01 = 1%)")
    width: int | None = Field(None, ge=1, description="Expected frame width (default: context.expected.width)")
    height: int | None = Field(None, ge=1, description="Expected frame height (default: context.expected.height)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_frames and self.max_frames and self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) must be <= max_frames ({self.max_frames})")
        return self


@check("video_frames", kinds=("video",), params=VideoFramesParams,
       description="Frame count, fps and frame size as requested (params, or the request's expected values)")
def video_frames(p: VideoFramesParams, s: Subject) -> CheckOutcome:
    v = s.video()
    exp = s.context.expected
    want_n = p.num_frames or exp.num_frames or None
    want_fps = p.fps or exp.fps or None
    want_w, want_h = p.width or exp.width or None, p.height or exp.height or None
    problems: list[str] = []
    feedback: list[str] = []
    evidence: list[Evidence] = []
    if want_n is not None and v.num_frames != want_n:
        problems.append(f"{v.num_frames} frames, expected {want_n}")
        feedback.append(f"Generate exactly {want_n} frames (got {v.num_frames}).")
    if p.min_frames and v.num_frames < p.min_frames:
        problems.append(f"{v.num_frames} frames < min {p.min_frames}")
        feedback.append(f"Generate at least {p.min_frames} frames (got {v.num_frames}).")
    if p.max_frames and v.num_frames > p.max_frames:
        problems.append(f"{v.num_frames} frames > max {p.max_frames}")
        feedback.append(f"Generate at most {p.max_frames} frames (got {v.num_frames}).")
    if want_fps is not None:
        if v.fps <= 0:
            problems.append(f"fps unknown, expected {want_fps:g}")
            feedback.append(f"Encode the video with a frame rate of {want_fps:g} fps.")
        elif abs(v.fps - want_fps) > p.fps_tolerance * want_fps:
            problems.append(f"{v.fps:g} fps, expected {want_fps:g}")
            feedback.append(f"Encode the video at {want_fps:g} fps (got {v.fps:g}).")
    if (want_w and v.width != want_w) or (want_h and v.height != want_h):
        size = f"{want_w or v.width}x{want_h or v.height}"
        problems.append(f"frames are {v.width}x{v.height}, expected {size}")
        feedback.append(f"Generate frames of {size} pixels (got {v.width}x{v.height}).")
    measured = f"{v.num_frames} frames at {v.fps:g} fps, {v.width}x{v.height}"
    if problems:
        evidence.append(Evidence("frames", measured, "artifact", 0, v.num_frames, float(v.num_frames)))
        return CheckOutcome(False, 0.0, "; ".join(problems), evidence, " ".join(feedback))
    if want_n is None and want_fps is None and not (want_w or want_h) and not (p.min_frames or p.max_frames):
        return CheckOutcome(True, 1.0, f"no expected frame count, fps or size given; {measured}")
    return CheckOutcome(True, 1.0, f"{measured} as expected")


def _gray(s: Subject) -> np.ndarray:
    return s.cached("video_gray", lambda: downscale(luma(s.video().frames)))


class VideoCoherenceParams(Params):
    min_mean_ssim: float = Field(0.5, ge=-1.0, le=1.0, description="Least mean SSIM between consecutive frames")
    min_pair_ssim: float | None = Field(
        None, ge=-1.0, le=1.0, description="Least SSIM for any single pair of consecutive frames (a cut or a glitch)"
    )


@check("video_coherence", kinds=("video",), params=VideoCoherenceParams,
       description="Temporal coherence: the mean SSIM between consecutive frames (luma, 7x7 window, frames "
       "downscaled to at most 256 px) reaches the threshold")
def video_coherence(p: VideoCoherenceParams, s: Subject) -> CheckOutcome:
    values = ssim_pairs(_gray(s))
    if values.size == 0:
        return CheckOutcome(True, 1.0, "a single frame: nothing to compare")
    mean = float(values.mean())
    worst = np.argsort(values)[:3]
    evidence = [Evidence("ssim", f"SSIM {values[i]:.3f} between frames {i} and {i + 1}", f"frames {i}-{i + 1}",
                         int(i), int(i) + 1, float(values[i])) for i in worst]
    low_pairs = [] if p.min_pair_ssim is None else [int(i) for i in np.nonzero(values < p.min_pair_ssim)[0]]
    score = float(np.clip((mean + 1) / 2 if mean < 0 else mean, 0, 1))
    lowest = int(worst[0])
    summary = (f"mean SSIM {mean:.3f} over {values.size} pair(s), lowest {values.min():.3f} "
               f"(frames {lowest}-{lowest + 1})")
    if mean < p.min_mean_ssim or low_pairs:
        reasons = []
        if mean < p.min_mean_ssim:
            reasons.append(f"mean SSIM {mean:.3f} < {p.min_mean_ssim}")
        if low_pairs:
            reasons.append(f"{len(low_pairs)} pair(s) below {p.min_pair_ssim}")
        return CheckOutcome(False, score, f"incoherent frames: {'; '.join(reasons)}; {summary}", evidence,
                            f"Consecutive frames change too abruptly ({'; '.join(reasons)}, worst between frames "
                            f"{int(worst[0])} and {int(worst[0]) + 1}): keep the subject, layout and colours "
                            "consistent from frame to frame, with smooth motion.")
    return CheckOutcome(True, score, summary, evidence)


class VideoFlickerParams(Params):
    max_flicker: float = Field(0.02, ge=0.0, le=1.0,
                               description="Most mean brightness jump between frames (0..1 of the full range)")


@check("video_flicker", kinds=("video",), params=VideoFlickerParams,
       description="Flicker: the mean |second difference| of frame brightness / 2 (frames alternating between two "
       "levels score the jump; fades and motion score ~0) stays under the threshold")
def video_flicker(p: VideoFlickerParams, s: Subject) -> CheckOutcome:
    series = flicker_series(_gray(s))
    if series.size == 0:
        return CheckOutcome(True, 1.0, "fewer than 3 frames: flicker not measurable")
    mean = float(series.mean())
    worst = int(np.argmax(series))
    evidence = [Evidence("flicker", f"brightness jump {series[worst]:.3f} around frame {worst + 1}",
                         f"frames {worst}-{worst + 2}", worst, worst + 2, float(series[worst]))]
    score = float(max(0.0, 1.0 - mean / (2 * p.max_flicker))) if p.max_flicker > 0 else float(mean == 0)
    summary = (f"flicker {mean:.4f} (max allowed {p.max_flicker}), strongest around frame {worst + 1} "
               f"({series[worst]:.3f})")
    if mean > p.max_flicker:
        return CheckOutcome(False, score, summary, evidence,
                            f"The brightness flickers from frame to frame (mean jump {mean:.3f} > {p.max_flicker}, "
                            f"strongest around frame {worst + 1}): keep lighting and exposure steady across frames.")
    return CheckOutcome(True, score, summary, evidence)
