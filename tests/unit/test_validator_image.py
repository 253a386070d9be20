"""Image checks: decodes, expected size, not blank/uniform, no NaN, not all black; bad bytes are INVALID_ARGUMENT."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.validator.core import ValidatorCore
from services.validator.datatypes import Artifact, CheckSpec, Context, ExpectedMedia
from services.validator.settings import ValidatorSettings
from shared.errors import InvalidArgument, ResourceExhausted


@pytest.fixture(scope="module")
def validator() -> ValidatorCore:
    return ValidatorCore(ValidatorSettings(warm_up_models=False))


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def scene(w=64, h=48) -> np.ndarray:
    """A small picture: a gradient sky and a yellow square."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 2] = np.linspace(80, 220, h, dtype=np.uint8)[:, None]
    arr[16:32, 20:36] = (250, 210, 40)
    return arr


def results(validator, data, policy="image-default", expected=None, checks=None):
    ctx = Context(expected=expected or ExpectedMedia())
    return validator.validate(Artifact.of_image(data), ctx, policy=policy, checks=checks or [])


def test_a_good_image_passes_the_default_policy_with_the_requested_size(validator):
    v = results(validator, png(scene()), expected=ExpectedMedia(width=64, height=48))
    assert v.passed, [r.message for r in v.results]
    assert [r.name for r in v.results] == ["image_decodes", "image_size", "image_no_nan", "image_not_black",
                                           "image_variance"]
    assert v.result("image_decodes").message == "decoded PNG 64x48 RGB"


def test_wrong_size_fails_with_the_size_to_generate(validator):
    v = results(validator, png(scene(32, 32)), expected=ExpectedMedia(width=64, height=48))
    r = v.result("image_size")
    assert not v.passed and not r.passed
    assert r.feedback == "Generate the image at 64x48 pixels (got 32x32)."


def test_size_from_params_overrides_context(validator):
    spec = CheckSpec("image_size", {"width": 32, "height": 32})
    v = results(validator, png(scene(32, 32)), expected=ExpectedMedia(width=64, height=48), checks=[spec])
    assert v.result("image_size").passed


def test_a_uniform_image_fails_variance(validator):
    v = results(validator, png(np.full((48, 64, 3), 128, np.uint8)))
    r = v.result("image_variance")
    assert not r.passed and r.score == 0.0 and "blank or a single flat colour" in r.feedback
    assert v.result("image_not_black").passed  # grey, not black


def test_nearly_uniform_noise_is_still_uniform(validator):
    rng = np.random.default_rng(0)
    arr = (128 + rng.integers(-1, 2, (48, 64, 3))).astype(np.uint8)
    assert not results(validator, png(arr)).result("image_variance").passed


def test_an_all_black_image_fails(validator):
    v = results(validator, png(np.zeros((48, 64, 3), np.uint8)))
    r = v.result("image_not_black")
    assert not r.passed and "100.0% of pixels are black" in r.message and "all black" in r.feedback


def test_nan_in_raw_float_output_fails(validator):
    arr = scene().astype(np.float32) / 255.0
    arr[0:4, 0:4, :] = np.nan
    v = results(validator, npy(arr))
    r = v.result("image_no_nan")
    assert not r.passed and r.message == f"48 of {arr.size} values are NaN or infinite"
    assert v.result("image_decodes").message == "decoded NPY 64x48 float32"
    assert v.result("image_variance").passed  # the finite pixels still vary


def test_all_nan_output_fails_every_content_check(validator):
    v = results(validator, npy(np.full((8, 8, 3), np.nan, np.float32)))
    assert not v.result("image_no_nan").passed
    assert not v.result("image_not_black").passed
    assert not v.result("image_variance").passed


def test_float_tiff_and_channel_first_arrays_decode(validator):
    tiff = io.BytesIO()
    Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64), mode="F").save(tiff, format="TIFF")
    assert results(validator, tiff.getvalue(), expected=ExpectedMedia(64, 48)).passed
    chw = np.moveaxis(scene().astype(np.float32) / 255, -1, 0)  # torch layout
    v = results(validator, npy(chw), expected=ExpectedMedia(64, 48))
    assert v.passed, [r.message for r in v.results]


def test_allowed_formats(validator):
    spec = CheckSpec("image_decodes", {"formats": ["png"]})
    assert results(validator, png(scene()), checks=[spec]).result("image_decodes").passed
    r = results(validator, png(scene(), "JPEG"), checks=[spec]).result("image_decodes")
    assert not r.passed and r.feedback == "Return the image as PNG (got JPEG)."


@pytest.mark.parametrize("data, reason", [
    (b"", "is empty"),
    (b"this is not an image at all", "not a recognised format"),
    (png(scene())[:60], "cannot be decoded as an image"),  # truncated
    (b"\x93NUMPY garbage", "cannot be decoded as a .npy array"),
])
def test_undecodable_images_are_invalid_argument(validator, data, reason):
    with pytest.raises(InvalidArgument) as info:
        results(validator, data)
    assert info.value.message.startswith("artifact.image: ") and reason in info.value.message


def test_npy_with_pickled_objects_is_refused(validator):
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidArgument, match="allow_pickle"):
        results(validator, buf.getvalue())


def test_a_decompression_bomb_is_resource_exhausted():
    small = ValidatorCore(ValidatorSettings(warm_up_models=False, max_image_pixels=32 * 32))
    with pytest.raises(ResourceExhausted, match="64x48 = 3072 pixels exceeds the limit of 1024"):
        results(small, png(scene()))


def test_text_checks_on_an_image_are_invalid_argument(validator):
    with pytest.raises(InvalidArgument, match="check 'pii' applies to text artifacts, but the artifact is image"):
        validator.validate(Artifact.of_image(png(scene())), checks=[CheckSpec("pii")])
