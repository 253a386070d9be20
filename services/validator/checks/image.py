"""Image checks: it decodes (in an allowed format), has the expected size, is not blank or uniform,
holds no NaN, and is not all black."""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from services.validator.checks.base import Params, Subject, check
from services.validator.datatypes import CheckOutcome, Evidence


def _describe(img) -> str:
    return f"{img.format} {img.width}x{img.height} {img.mode}"


def _formats(value: list[str]) -> list[str]:
    return [v.strip().upper().replace("JPG", "JPEG") for v in value if v.strip()]


class ImageDecodesParams(Params):
    formats: list[str] = Field(default_factory=list, description="Allowed formats, e.g. [\"PNG\"] (empty: any)")

    @field_validator("formats")
    @classmethod
    def _normalise(cls, value):
        return _formats(value)


@check("image_decodes", kinds=("image",), params=ImageDecodesParams,
       description="The image decodes (PNG, JPEG, WebP, GIF, TIFF, .npy) and is in an allowed format; "
       "bytes that do not decode at all are INVALID_ARGUMENT")
def image_decodes(p: ImageDecodesParams, s: Subject) -> CheckOutcome:
    img = s.image()
    if p.formats and img.format.upper() not in p.formats:
        return CheckOutcome(False, 0.0, f"decoded {_describe(img)}, but allowed formats are {', '.join(p.formats)}",
                            [Evidence("format", img.format, "artifact")],
                            f"Return the image as {' or '.join(p.formats)} (got {img.format}).")
    return CheckOutcome(True, 1.0, f"decoded {_describe(img)}")


class ImageSizeParams(Params):
    width: int | None = Field(None, ge=1, le=65536, description="Expected width (default: context.expected.width)")
    height: int | None = Field(None, ge=1, le=65536, description="Expected height (default: context.expected.height)")


@check("image_size", kinds=("image",), params=ImageSizeParams,
       description="The image has the expected width and height (params, or what the request asked for)")
def image_size(p: ImageSizeParams, s: Subject) -> CheckOutcome:
    img = s.image()
    want_w = p.width or s.context.expected.width or None
    want_h = p.height or s.context.expected.height or None
    if want_w is None and want_h is None:
        return CheckOutcome(True, 1.0, f"no expected size given; the image is {img.width}x{img.height}")
    wrong = (want_w is not None and img.width != want_w) or (want_h is not None and img.height != want_h)
    expected = f"{want_w or img.width}x{want_h or img.height}"
    if wrong:
        ratio = min(img.width * img.height, (want_w or img.width) * (want_h or img.height)) / max(
            img.width * img.height, (want_w or img.width) * (want_h or img.height))
        return CheckOutcome(False, ratio, f"size {img.width}x{img.height}, expected {expected}",
                            [Evidence("size", f"{img.width}x{img.height}", "artifact")],
                            f"Generate the image at {expected} pixels (got {img.width}x{img.height}).")
    return CheckOutcome(True, 1.0, f"size {img.width}x{img.height} as expected")


class ImageVarianceParams(Params):
    min_std: float = Field(0.02, ge=0.0, le=1.0,
                           description="Least pixel standard deviation (0..1 scale); below it the image is uniform")


@check("image_variance", kinds=("image",), params=ImageVarianceParams,
       description="The image is not blank or uniform: the standard deviation of its pixel values reaches min_std")
def image_variance(p: ImageVarianceParams, s: Subject) -> CheckOutcome:
    px = s.image().pixels
    finite = px[np.isfinite(px)]
    std = float(finite.std()) if finite.size else 0.0
    score = 1.0 if p.min_std == 0 else min(1.0, std / p.min_std)
    if std < p.min_std or finite.size == 0:
        mean = float(finite.mean()) if finite.size else float("nan")
        return CheckOutcome(False, score, f"uniform image: pixel std {std:.4f} < {p.min_std} (mean value {mean:.3f})",
                            [Evidence("low_variance", f"std {std:.4f}", "artifact", value=std)],
                            "The image is blank or a single flat colour: generate an image with visible content "
                            "for the prompt (try another seed).")
    return CheckOutcome(True, score, f"pixel std {std:.4f} >= {p.min_std}")


class ImageNoNanParams(Params):
    pass


@check("image_no_nan", kinds=("image",), params=ImageNoNanParams,
       description="No NaN or infinite pixel values (only float images such as .npy or float TIFF can hold them)")
def image_no_nan(p: ImageNoNanParams, s: Subject) -> CheckOutcome:
    px = s.image().pixels
    bad = int(np.count_nonzero(~np.isfinite(px)))
    if bad:
        return CheckOutcome(False, 1.0 - bad / px.size, f"{bad} of {px.size} values are NaN or infinite",
                            [Evidence("non_finite", f"{bad} values", "artifact", value=float(bad))],
                            "The image holds NaN values (a numerical failure in generation): regenerate it, e.g. "
                            "with another seed or in float32.")
    return CheckOutcome(True, 1.0, f"all {px.size} values finite")


class ImageNotBlackParams(Params):
    black_level: float = Field(0.02, ge=0.0, le=1.0, description="A pixel is black when every channel is <= this")
    max_black_fraction: float = Field(0.99, ge=0.0, le=1.0, description="Most share of black pixels allowed")


@check("image_not_black", kinds=("image",), params=ImageNotBlackParams,
       description="The output is not (almost) all black, the usual sign of a failed or filtered generation")
def image_not_black(p: ImageNotBlackParams, s: Subject) -> CheckOutcome:
    px = np.nan_to_num(s.image().pixels, nan=0.0)
    black = (px <= p.black_level).all(axis=2)
    fraction = float(black.mean())
    if fraction > p.max_black_fraction or fraction == 1.0:
        return CheckOutcome(False, 1.0 - fraction,
                            f"{fraction:.1%} of pixels are black (max {p.max_black_fraction:.0%})",
                            [Evidence("black", f"{fraction:.1%} black", "artifact", value=fraction)],
                            "The image is all black: regenerate it (another seed; check that no safety filter or "
                            "numerical failure blanked it).")
    return CheckOutcome(True, 1.0 - fraction, f"{fraction:.1%} of pixels are black")
