"""Decoding images and videos into arrays, and the measures the media checks use (SSIM, flicker).

Images decode with Pillow (PNG, JPEG, WebP, GIF, TIFF incl. float TIFF) or NumPy (.npy, never
with pickles), so raw float output that holds NaN can be checked too. Videos decode with the
ffmpeg binary that imageio-ffmpeg ships (MP4, WebM, MKV, AVI) or, for animated GIF/APNG/WebP, with
Pillow. Decoding is bounded: pixels per frame, frame count and decoded bytes are capped by the
settings and exceed them with RESOURCE_EXHAUSTED; something that does not decode at all is
INVALID_ARGUMENT with the decoder's reason.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field

import numpy as np

from shared.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted

IMAGE_FORMATS = "PNG, JPEG, WebP, GIF, TIFF or a NumPy .npy array"
VIDEO_FORMATS = "MP4, WebM, MKV, AVI, animated GIF, APNG or animated WebP"


@dataclass
class ImageData:
    #: H x W x C float32 in [0, 1] for integer images; float images are kept as given (may hold NaN)
    pixels: np.ndarray
    format: str
    mode: str

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass
class VideoData:
    #: T x H x W x 3 uint8 RGB
    frames: np.ndarray
    #: frames per second from the container (0.0 when unknown)
    fps: float
    format: str
    #: decoder errors reported while frames were still produced (corrupt packets, truncation)
    decode_errors: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])


# -- images -----------------------------------------------------------------------------------


def decode_image(data: bytes, settings, field: str) -> ImageData:
    if not data:
        raise InvalidArgument(f"is empty; expected an encoded image ({IMAGE_FORMATS})", field=field)
    if data[:6] == b"\x93NUMPY":
        return _decode_npy(data, settings, field)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(im.size[0], im.size[1], settings, field)
            im.load()
            return ImageData(_pil_to_array(im), im.format or "unknown", im.mode)
    except UnidentifiedImageError:
        raise InvalidArgument(f"cannot be decoded as an image: not a recognised format ({IMAGE_FORMATS})",
                              field=field) from None
    except Image.DecompressionBombError as exc:
        raise ResourceExhausted(f"{field}: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidArgument(f"cannot be decoded as an image: {exc}", field=field) from None


def _check_pixels(width: int, height: int, settings, field: str) -> None:
    if width * height > settings.max_image_pixels:
        raise ResourceExhausted(
            f"{field}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{settings.max_image_pixels} pixels (GENSTACK_VALIDATOR_MAX_IMAGE_PIXELS)"
        )


def _decode_npy(data: bytes, settings, field: str) -> ImageData:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidArgument(f"cannot be decoded as a .npy array: {exc}", field=field) from None
    while arr.ndim > 3 and arr.shape[0] == 1:  # a batch of one
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # C x H x W (torch layout) -> H x W x C
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise InvalidArgument(
            f"a .npy image must be H x W or H x W x C with C in 1, 3, 4 (got shape {tuple(arr.shape)})", field=field
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InvalidArgument(f"a .npy image must hold numbers (got dtype {arr.dtype})", field=field)
    _check_pixels(arr.shape[1], arr.shape[0], settings, field)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if np.issubdtype(arr.dtype, np.floating):
        pixels = arr.astype(np.float32)  # kept as given: NaN and range problems stay visible
    elif arr.dtype == np.uint8 or arr.dtype == np.bool_:
        pixels = arr.astype(np.float32) / (1.0 if arr.dtype == np.bool_ else 255.0)
    else:
        info = np.iinfo(arr.dtype)
        pixels = (arr.astype(np.float64) / float(info.max)).astype(np.float32)
    return ImageData(pixels, "NPY", str(arr.dtype))


def _pil_to_array(im) -> np.ndarray:
    mode = im.mode
    if mode == "F":
        return np.asarray(im, dtype=np.float32)[:, :, None]
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.float64)
        scale = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return (arr / scale).astype(np.float32)[:, :, None]
    if mode in ("L", "LA", "1"):
        return np.asarray(im.convert("L"), dtype=np.float32)[:, :, None] / 255.0
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def to_uint8_rgb(pixels: np.ndarray) -> np.ndarray:
    """An ImageData's pixels as H x W x 3 uint8 (NaN -> 0), for frames given as images."""
    arr = np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0)
    arr = np.clip(arr, 0.0, 1.0)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return (arr * 255.0 + 0.5).astype(np.uint8)


# -- videos -----------------------------------------------------------------------------------


def decode_frames(frames: list[bytes], fps: float, settings) -> VideoData:
    if not frames:
        raise InvalidArgument("must hold at least one encoded frame", field="artifact.frames.images")
    if len(frames) > settings.max_frames:
        raise ResourceExhausted(
            f"artifact.frames.images: {len(frames)} frames exceed the limit of {settings.max_frames} "
            "(GENSTACK_VALIDATOR_MAX_FRAMES)"
        )
    if fps < 0:
        raise InvalidArgument(f"must be >= 0 (got {fps})", field="artifact.frames.fps")
    out: list[np.ndarray] = []
    for i, data in enumerate(frames):
        img = decode_image(data, settings, f"artifact.frames.images[{i}]")
        rgb = to_uint8_rgb(img.pixels)
        if out and rgb.shape != out[0].shape:
            raise InvalidArgument(
                f"is {rgb.shape[1]}x{rgb.shape[0]} but frame 0 is {out[0].shape[1]}x{out[0].shape[0]}; "
                "all frames must have one size",
                field=f"artifact.frames.images[{i}]",
            )
        out.append(rgb)
        _check_decoded_bytes(len(out) * rgb.nbytes, settings, "artifact.frames")
    return VideoData(np.stack(out), float(fps), "frames")


def _check_decoded_bytes(nbytes: int, settings, field: str) -> None:
    if nbytes > settings.max_decoded_video_bytes:
        raise ResourceExhausted(
            f"{field}: decoded frames exceed {settings.max_decoded_video_bytes} bytes "
            "(GENSTACK_VALIDATOR_MAX_DECODED_VIDEO_BYTES)"
        )


def decode_video(data: bytes, settings, field: str) -> VideoData:
    if not data:
        raise InvalidArgument(f"is empty; expected an encoded video ({VIDEO_FORMATS})", field=field)
    if data[:4] == b"GIF8" or (data[:8] == b"\x89PNG\r\n\x1a\n" and b"acTL" in data[:4096]) or (
        data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    ):
        return _decode_animated_image(data, settings, field)
    return _decode_with_ffmpeg(data, settings, field)


def _decode_animated_image(data: bytes, settings, field: str) -> VideoData:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    frames: list[np.ndarray] = []
    durations: list[float] = []
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(im.size[0], im.size[1], settings, field)
            fmt = im.format or "unknown"
            for frame in ImageSequence.Iterator(im):
                if len(frames) >= settings.max_frames:
                    raise ResourceExhausted(
                        f"{field}: more than {settings.max_frames} frames (GENSTACK_VALIDATOR_MAX_FRAMES)"
                    )
                frames.append(np.asarray(frame.convert("RGB"), dtype=np.uint8))
                durations.append(float(frame.info.get("duration") or 0.0))
                _check_decoded_bytes(len(frames) * frames[0].nbytes, settings, field)
    except UnidentifiedImageError:
        raise InvalidArgument(f"cannot be decoded as a video ({VIDEO_FORMATS})", field=field) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidArgument(f"cannot be decoded as a video: {exc}", field=field) from None
    positive = [d for d in durations if d > 0]
    fps = 1000.0 / (sum(positive) / len(positive)) if positive else 0.0
    return VideoData(np.stack(frames), fps, fmt)


# ffmpeg prints e.g. "Stream #0:0[0x1](und): Video: h264 (...), yuv420p(progressive), 64x48, 8 fps, 8 tbr"
_VIDEO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<rest>.*)")
_SIZE = re.compile(r",\s(\d{1,5})x(\d{1,5})(?=[\s,\[]|$)")
_RATE = re.compile(r",\s(\d+(?:\.\d+)?)(k?)\s(fps|tbr)\b")
_ERROR_LINE = re.compile(r"error|invalid|corrupt|missing|truncat|concealing", re.IGNORECASE)


def _decode_with_ffmpeg(data: bytes, settings, field: str) -> VideoData:
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    # ffmpeg needs a seekable input for MP4s whose index (moov atom) is at the end.
    fd, path = tempfile.mkstemp(prefix="genstack-validate-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        cmd = [exe, "-hide_banner", "-nostdin", "-i", path, "-map", "0:v:0", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-frames:v", str(settings.max_frames + 1), "-"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stderr_chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
        reader.start()
        timer = threading.Timer(settings.video_decode_timeout_s, proc.kill)
        timer.start()
        raw = bytearray()
        over_cap = False
        try:
            while chunk := proc.stdout.read(1 << 20):
                raw += chunk
                if len(raw) > settings.max_decoded_video_bytes:
                    over_cap = True
                    proc.kill()
                    break
            proc.wait()
        finally:
            timer.cancel()
            reader.join(timeout=5)
        timed_out = proc.returncode is not None and proc.returncode < 0 and not over_cap
    finally:
        os.unlink(path)
    log_text = "\n".join(_clean(line, path) for line in b"".join(stderr_chunks).decode("utf-8", "replace").splitlines())
    if over_cap:
        _check_decoded_bytes(len(raw), settings, field)
    if timed_out:
        raise DeadlineExceeded(f"{field}: decoding took longer than {settings.video_decode_timeout_s:.0f} s "
                               "(GENSTACK_VALIDATOR_VIDEO_DECODE_TIMEOUT_S)")
    stream = _VIDEO_STREAM.search(log_text)
    size = _SIZE.search(stream.group("rest")) if stream else None
    if not stream or not size:
        raise InvalidArgument(
            f"cannot be decoded as a video ({VIDEO_FORMATS}): {_last_lines(log_text)}", field=field
        )
    width, height = int(size.group(1)), int(size.group(2))
    _check_pixels(width, height, settings, field)
    frame_bytes = width * height * 3
    count = len(raw) // frame_bytes
    if count == 0:
        raise InvalidArgument(f"cannot be decoded as a video: no frame decoded ({_last_lines(log_text)})",
                              field=field)
    if count > settings.max_frames:
        raise ResourceExhausted(f"{field}: more than {settings.max_frames} frames (GENSTACK_VALIDATOR_MAX_FRAMES)")
    frames = np.frombuffer(bytes(raw[: count * frame_bytes]), dtype=np.uint8).reshape(count, height, width, 3)
    rates = {
        m.group(3): float(m.group(1)) * (1000.0 if m.group(2) else 1.0) for m in _RATE.finditer(stream.group("rest"))
    }
    fps = rates.get("fps") or rates.get("tbr") or 0.0
    fmt = stream.group("rest").split(",")[0].split(" ")[0]
    # Lines after the stream header that report damage: the file decoded only in part.
    body = log_text[stream.end():]
    errors = [line.strip() for line in body.splitlines() if _ERROR_LINE.search(line)]
    if proc.returncode not in (0, None):
        errors.append(f"ffmpeg exited with status {proc.returncode}")
    return VideoData(frames, fps, fmt, errors[:20])


_LOG_PREFIX = re.compile(r"\[[^\]]*@ 0x[0-9a-f]+\]\s*")


def _clean(line: str, path: str) -> str:
    """An ffmpeg log line without object addresses and without our temporary file's name."""
    return _LOG_PREFIX.sub("", line).replace(path, "<input>").strip()


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "no output from the decoder"


# -- measures ---------------------------------------------------------------------------------


def luma(frames: np.ndarray) -> np.ndarray:
    """T x H x W x 3 uint8 -> T x H x W float64 luma (ITU-R BT.601), 0..255."""
    f = frames.astype(np.float64)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def downscale(gray: np.ndarray, max_side: int = 256) -> np.ndarray:
    """Block-average T x H x W so that the longer side is at most max_side (SSIM cost grows with area)."""
    h, w = gray.shape[-2:]
    factor = max(1, int(np.ceil(max(h, w) / max_side)))
    if factor == 1:
        return gray
    h2, w2 = h // factor, w // factor
    g = gray[..., : h2 * factor, : w2 * factor]
    return g.reshape(*g.shape[:-2], h2, factor, w2, factor).mean(axis=(-3, -1))


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window (valid positions) of the last two axes, via an integral image."""
    c = np.cumsum(np.cumsum(x, axis=-2), axis=-1)
    c = np.pad(c, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)])
    s = c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]
    return s / float(k * k)


def ssim_pairs(gray: np.ndarray, data_range: float = 255.0, window: int = 7) -> np.ndarray:
    """Mean SSIM between each pair of consecutive frames of T x H x W luma: T-1 values in [-1, 1].

    The structural similarity of Wang et al. (2004) with a uniform 7 x 7 window and sample
    covariances, the common default.
    """
    if gray.shape[0] < 2:
        return np.zeros(0)
    k = max(1, min(window, gray.shape[1], gray.shape[2]))
    a, b = gray[:-1], gray[1:]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _box_mean(a, k), _box_mean(b, k)
    cov_norm = k * k / (k * k - 1.0) if k > 1 else 1.0
    var_a = cov_norm * (_box_mean(a * a, k) - mu_a * mu_a)
    var_b = cov_norm * (_box_mean(b * b, k) - mu_b * mu_b)
    cov = cov_norm * (_box_mean(a * b, k) - mu_a * mu_b)
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).mean(axis=(-2, -1))


def flicker_series(gray: np.ndarray) -> np.ndarray:
    """Half the |second temporal difference| of each frame's mean luma, in [0, 1]: T-2 values.

    Flicker is brightness that goes up and down from frame to frame. A steady fade or a moving
    object changes the mean linearly or not at all and scores ~0; frames alternating between two
    brightness levels score the size of the jump (0.1 = a tenth of the full range).
    """
    if gray.shape[0] < 3:
        return np.zeros(0)
    means = gray.reshape(gray.shape[0], -1).mean(axis=1) / 255.0
    return np.abs(means[2:] - 2 * means[1:-1] + means[:-2]) / 2.0
