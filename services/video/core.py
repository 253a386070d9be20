"""Video core: validates requests, loads one diffusers video pipeline by config, denoises with progress,
encodes MP4/GIF/PNG frames and measures the clip's temporal coherence.

Any diffusers text-to-video pipeline works (the bundled pixel-space default, TextToVideoSD /
ModelScope, AnimateDiff, ...): it is loaded with `DiffusionPipeline.from_pretrained` from a folder
or the local Hugging Face cache, on the configured device and dtype. Progress and cancellation use
the pipeline's step callback (`callback_on_step_end`, or the older `callback` of TextToVideoSD).

Coherence technique: the starting noise is built here and handed to the pipeline as `latents`
(which every diffusers video pipeline accepts), so it applies to any model. With
frame_noise="shared" a share `noise_share` of the noise variance is the same in every frame
(a "mixed" noise prior, as in PYoCo): frames start out alike, so the background stays still and the
object keeps its identity. "independent" is plain i.i.d. noise, the model alone.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.video import metrics
from services.video.settings import VideoSettings
from shared import metrics as prom
from shared import tracing
from shared.artifacts import Artifact, ArtifactStore
from shared.config import Settings
from shared.diffusion import DiffusionCore
from shared.errors import Cancelled, Unavailable, require

log = logging.getLogger(__name__)

#: The project's own model, trained by services/video/train.py (`make train-video`).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "video"
SCHEDULERS = ("ddim", "dpm-solver++", "euler")
FORMATS = ("mp4", "gif", "png")
MIME = {"mp4": "video/mp4", "gif": "image/gif", "png": "image/png"}
OUTPUTS = ("auto", "inline", "artifact")
FRAME_NOISE = ("independent", "shared")
MAX_SEED = 2**63 - 1024
MAX_NOISE_SHARE = 0.95


@dataclass
class VideoRequest:
    """A generation request in plain Python; None means "use the default"."""

    prompt: str = ""
    negative_prompt: str = ""
    num_frames: int | None = None
    fps: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    format: str | None = None
    output: str = "auto"
    frame_noise: str | None = None
    noise_share: float | None = None
    preview_every: int = 0
    preview_size: int | None = None
    preview_frames: int | None = None


@dataclass
class Progress:
    step: int  # 1-based
    total: int
    elapsed_ms: float
    previews: list[bytes] = field(default_factory=list)
    preview_indices: list[int] = field(default_factory=list)


@dataclass
class OutputVideo:
    mime_type: str
    num_frames: int
    fps: int
    width: int
    height: int
    data: bytes = b""
    artifact: Artifact | None = None
    frames: list[bytes] = field(default_factory=list)
    frame_artifacts: list[Artifact] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


@dataclass
class VideoResult:
    video: OutputVideo
    coherence: metrics.Coherence
    model: str
    prompt: str
    negative_prompt: str
    scheduler: str
    steps: int
    guidance_scale: float
    seed: int
    format: str
    frame_noise: str
    noise_share: float
    timings: dict[str, float]  # milliseconds per phase
    seconds_per_clip: float
    steps_per_second: float
    pixels: np.ndarray | None = None  # [F, H, W, 3] uint8, for in-process callers (benchmarks)


class _Stop(Exception):
    """Raised inside the step callback to leave the denoising loop at once."""


class VideoCore(DiffusionCore):
    MEDIA = "video"
    DEFAULT_MODEL_DIR = DEFAULT_MODEL_DIR
    TRAIN_TARGET = "train-video"

    def __init__(
        self,
        settings: VideoSettings | None = None,
        base: Settings | None = None,
        store: ArtifactStore | None = None,
    ):
        super().__init__(settings or VideoSettings(), base, store)

    def _register_pipelines(self) -> None:
        import services.video.pipeline  # noqa: F401 - registers GenstackVideoPipeline and its UNet

    def _check_pipeline(self, pipe) -> None:
        if not hasattr(pipe, "unet") and not hasattr(pipe, "transformer"):
            raise Unavailable(
                f"video model {self.settings.model!r} is a {type(pipe).__name__}, not a denoising pipeline")

    # -- model facts --------------------------------------------------------------------------

    def _denoiser(self, pipe):
        return getattr(pipe, "unet", None) or pipe.transformer

    def vae_scale(self, pipe) -> int:
        if getattr(pipe, "vae", None) is None:
            return 1
        return int(getattr(pipe, "vae_scale_factor", 8) or 1)

    def _denoiser_config(self, pipe, name: str) -> int:
        denoiser = self._denoiser(pipe)
        value = denoiser.config.get(name) if hasattr(denoiser.config, "get") else None
        return int(value if value is not None else getattr(denoiser, name))

    def native_size(self) -> int:
        pipe = self.pipeline()
        return self._denoiser_config(pipe, "sample_size") * self.vae_scale(pipe)

    def default_size(self) -> int:
        return self.settings.default_size or self.native_size()

    # -- validation ---------------------------------------------------------------------------

    def resolve(self, req: VideoRequest) -> VideoRequest:
        """A copy of the request with defaults filled in; InvalidArgument naming the field otherwise."""
        s = self.settings
        require(bool(req.prompt and req.prompt.strip()), "prompt", "non-empty")
        for name in ("prompt", "negative_prompt"):
            n = len(getattr(req, name))
            require(n <= s.max_prompt_chars, name, f"at most {s.max_prompt_chars} characters", n)
        frames = s.default_frames if req.num_frames is None else req.num_frames
        require(2 <= frames <= s.max_frames, "num_frames", f"between 2 and {s.max_frames}", frames)
        fps = s.default_fps if req.fps is None else req.fps
        require(1 <= fps <= s.max_fps, "fps", f"between 1 and {s.max_fps}", fps)
        steps = s.default_steps if req.steps is None else req.steps
        require(1 <= steps <= s.max_steps, "steps", f"between 1 and {s.max_steps}", steps)
        guidance = s.default_guidance_scale if req.guidance_scale is None else req.guidance_scale
        require(0 <= guidance <= s.max_guidance_scale, "guidance_scale",  # also rejects NaN
                f"between 0 and {s.max_guidance_scale}", guidance)
        size = {}
        for name in ("width", "height"):
            value = getattr(req, name)
            value = self.default_size() if value is None else value
            require(value % 8 == 0 and s.min_size <= value <= s.max_size, name,
                    f"a multiple of 8 between {s.min_size} and {s.max_size}", value)
            size[name] = value
        seed = req.seed
        if seed is not None:
            require(0 <= seed <= MAX_SEED, "seed", f"between 0 and {MAX_SEED}", seed)
        scheduler = req.scheduler or s.default_scheduler
        require(scheduler in SCHEDULERS, "scheduler", f"one of {', '.join(SCHEDULERS)}", scheduler)
        fmt = req.format or "mp4"
        require(fmt in FORMATS, "format", f"one of {', '.join(FORMATS)}", fmt)
        require(req.output in OUTPUTS, "output", f"one of {', '.join(OUTPUTS)}", req.output)
        noise = req.frame_noise or s.default_frame_noise
        require(noise in FRAME_NOISE, "frame_noise", f"one of {', '.join(FRAME_NOISE)}", noise)
        share = s.noise_share if req.noise_share is None else req.noise_share
        require(0 <= share <= MAX_NOISE_SHARE, "noise_share", f"between 0 and {MAX_NOISE_SHARE}", share)
        if noise == "independent":
            share = 0.0
        require(req.preview_every >= 0, "preview_every", ">= 0", req.preview_every)
        preview_size = req.preview_size or s.preview_size
        require(8 <= preview_size <= s.max_size, "preview_size", f"between 8 and {s.max_size}", preview_size)
        preview_frames = req.preview_frames or min(s.preview_frames, frames)
        require(1 <= preview_frames <= frames, "preview_frames", f"between 1 and num_frames ({frames})",
                preview_frames)
        if seed is None:
            seed = random.SystemRandom().randrange(0, 2**31)
        return VideoRequest(
            prompt=req.prompt, negative_prompt=req.negative_prompt, num_frames=frames, fps=fps,
            width=size["width"], height=size["height"], steps=steps, guidance_scale=guidance, seed=seed,
            scheduler=scheduler, format=fmt, output=req.output, frame_noise=noise, noise_share=float(share),
            preview_every=req.preview_every, preview_size=preview_size, preview_frames=preview_frames,
        )

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        req: VideoRequest,
        stopped: Callable[[], bool] = lambda: False,
        on_progress: Callable[[Progress], None] | None = None,
        keep_pixels: bool = False,
    ) -> VideoResult:
        """Run one request; raises Cancelled when `stopped()` turns true (checked before every step)."""
        pipe = self.pipeline()
        t_start = time.perf_counter()
        r = self.resolve(req)
        timings: dict[str, float] = {}
        with self.exclusive_run(stopped, timings, t_start):
            t0 = time.perf_counter()
            pixels = self._denoise(pipe, r, stopped, on_progress, t0)
            timings["denoise"] = (time.perf_counter() - t0) * 1000

        t1 = time.perf_counter()
        coherence = metrics.coherence(pixels)
        timings["metrics"] = (time.perf_counter() - t1) * 1000
        t2 = time.perf_counter()
        meta = self._metadata(r)
        video = OutputVideo(MIME[r.format], r.num_frames, r.fps, r.width, r.height)
        if r.format == "png":
            pngs = [encode_png(frame, {**meta, "frame": i}) for i, frame in enumerate(pixels)]
            size = sum(map(len, pngs))
        else:
            if r.format == "mp4":
                blob = encode_mp4(pixels, r.fps, meta, self.settings.crf)
            else:
                blob = encode_gif(pixels, r.fps)
            size = len(blob)
        timings["encode"] = (time.perf_counter() - t2) * 1000
        as_artifact = r.output == "artifact" or (r.output == "auto" and size > self.settings.inline_max_bytes)
        t3 = time.perf_counter()
        if r.format == "png":
            if as_artifact:
                video.frame_artifacts = [self.store.put(p, "image/png", kind="video") for p in pngs]
            else:
                video.frames = pngs
        elif as_artifact:
            video.artifact = self.store.put(blob, video.mime_type, kind="video")
        else:
            video.data = blob
        if as_artifact:
            timings["store"] = (time.perf_counter() - t3) * 1000
        total_s = time.perf_counter() - t_start
        denoise_s = timings["denoise"] / 1000
        prom.observe_steps("video", r.steps, denoise_s, 1)
        tracing.record("video.denoise", denoise_s, {"genstack.steps": r.steps})
        return VideoResult(
            video=video, coherence=coherence, model=self.model_name, prompt=r.prompt,
            negative_prompt=r.negative_prompt, scheduler=r.scheduler, steps=r.steps,
            guidance_scale=r.guidance_scale, seed=r.seed, format=r.format, frame_noise=r.frame_noise,
            noise_share=r.noise_share, timings=timings, seconds_per_clip=total_s,
            steps_per_second=r.steps / denoise_s if denoise_s else 0.0, pixels=pixels if keep_pixels else None,
        )

    def _metadata(self, r: VideoRequest) -> dict:
        return {"prompt": r.prompt, "negative_prompt": r.negative_prompt, "seed": r.seed, "steps": r.steps,
                "guidance_scale": r.guidance_scale, "scheduler": r.scheduler, "model": self.model_name,
                "num_frames": r.num_frames, "fps": r.fps, "frame_noise": r.frame_noise,
                "noise_share": r.noise_share}

    def initial_noise(self, pipe, r: VideoRequest):
        """The starting noise [1, C, F, h, w] for a request: seeded, and with frame_noise="shared" a share
        of its variance common to every frame."""
        import torch

        scale = self.vae_scale(pipe)
        denoiser = self._denoiser(pipe)
        channels = self._denoiser_config(pipe, "in_channels")
        shape = (1, channels, r.num_frames, r.height // scale, r.width // scale)
        gen = torch.Generator(device="cpu").manual_seed(r.seed)
        own = torch.randn(shape, generator=gen, dtype=torch.float32)
        if r.noise_share > 0:
            common = torch.randn((1, channels, 1, *shape[3:]), generator=gen, dtype=torch.float32)
            a = r.noise_share ** 0.5
            own = a * common + (1 - r.noise_share) ** 0.5 * own
        return own.to(device=self.settings.device, dtype=denoiser.dtype)

    def _denoise(self, pipe, r: VideoRequest, stopped, on_progress, t0: float) -> np.ndarray:
        import torch

        pipe.scheduler = self._scheduler(pipe, r.scheduler)
        device = torch.device(self.settings.device)
        gen_device = "cpu" if device.type == "mps" else device
        generator = torch.Generator(device=gen_device).manual_seed(r.seed)
        state = {"step": 0}

        def step_done(i: int, latents) -> None:
            state["step"] = i + 1
            if stopped():
                raise _Stop
            if on_progress is not None:
                previews, indices = [], []
                if r.preview_every and ((i + 1) % r.preview_every == 0 or i + 1 == r.steps):
                    indices = np.linspace(0, r.num_frames - 1, r.preview_frames).round().astype(int).tolist()
                    previews = self._previews(pipe, latents, indices, r.preview_size)
                on_progress(Progress(i + 1, r.steps, (time.perf_counter() - t0) * 1000, previews, indices))

        if stopped():
            raise Cancelled(f"cancelled before step 1 of {r.steps}")
        kwargs = dict(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt or None,
            num_frames=r.num_frames,
            num_inference_steps=r.steps,
            guidance_scale=r.guidance_scale,
            height=r.height,
            width=r.width,
            generator=generator,
            latents=self.initial_noise(pipe, r),
            output_type="np",
        )
        params = inspect.signature(pipe.__call__).parameters
        if "callback_on_step_end" in params:
            def on_step(pipe_, i, t, tensors):
                step_done(i, tensors["latents"])
                return {}

            kwargs.update(callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
        elif "callback" in params:  # older pipelines (TextToVideoSD): callback(step, timestep, latents)
            kwargs.update(callback=lambda i, t, latents: step_done(i, latents), callback_steps=1)
        else:
            raise Unavailable(f"{type(pipe).__name__} has no step callback; progress and cancel need one")
        try:
            with torch.inference_mode():
                frames = pipe(**kwargs).frames
        except _Stop:
            raise Cancelled(f"cancelled at step {state['step']} of {r.steps}") from None
        clip = np.asarray(frames[0] if isinstance(frames, list | tuple) or np.ndim(frames) == 5 else frames)
        if clip.ndim == 4 and clip.shape[-1] not in (1, 3, 4) and clip.shape[1] in (1, 3, 4):
            clip = clip.transpose(0, 2, 3, 1)  # [F, C, H, W] -> [F, H, W, C]
        if clip.dtype != np.uint8:
            clip = (np.clip(clip.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
        if clip.shape[-1] == 1:
            clip = np.repeat(clip, 3, axis=-1)
        return np.ascontiguousarray(clip[..., :3])

    @staticmethod
    def _scheduler(pipe, name: str):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

        config = pipe.scheduler.config
        if name == "ddim":
            return DDIMScheduler.from_config(config)
        if name == "dpm-solver++":
            return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
        return EulerDiscreteScheduler.from_config(config)

    def _previews(self, pipe, latents, indices: list[int], size: int) -> list[bytes]:
        """Low-resolution PNGs of chosen frames of the current (noisy) state, decoded the cheapest way."""
        import torch
        from PIL import Image

        with torch.inference_mode():
            x = latents[0][:, indices]  # C, k, h, w
            x = x.permute(1, 0, 2, 3)  # k, C, h, w
            vae = getattr(pipe, "vae", None)
            if vae is not None:
                x = vae.decode((x / getattr(vae.config, "scaling_factor", 1.0)).to(vae.dtype)).sample
            x = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for img in x:
            pil = Image.fromarray((img[..., :3] * 255).round().astype(np.uint8))
            pil.thumbnail((size, size))
            out.append(_png_bytes(pil))
        return out


# -- encoders -----------------------------------------------------------------------------------


def _png_bytes(pil, info=None) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def encode_png(frame: np.ndarray, meta: dict) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("genstack", json.dumps(meta, sort_keys=True))
    return _png_bytes(Image.fromarray(frame), info)


def encode_gif(frames: np.ndarray, fps: int) -> bytes:
    """Animated GIF, looping; Pillow folds a frame identical to the previous one into its duration."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   optimize=False, disposal=1)
    return buf.getvalue()


def encode_mp4(frames: np.ndarray, fps: int, meta: dict | None = None, crf: int = 18) -> bytes:
    """H.264 (yuv420p) MP4 of [F, H, W, 3] uint8 frames, with imageio-ffmpeg's bundled ffmpeg (libx264).
    Bit-exact flags and one encoder thread keep the bytes the same for the same frames."""
    import imageio_ffmpeg

    f, h, w, _ = frames.shape
    params = ["-crf", str(crf), "-preset", "medium", "-threads", "1", "-movflags", "+faststart",
              "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1"]
    if meta:
        params += ["-metadata", f"comment={json.dumps(meta, sort_keys=True)}"]
    with tempfile.TemporaryDirectory(prefix="genstack-video-") as tmp:
        path = str(Path(tmp) / "clip.mp4")
        writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                             pix_fmt_out="yuv420p", macro_block_size=2, ffmpeg_log_level="error",
                                             output_params=params)
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return Path(path).read_bytes()


def decode_mp4(data: bytes) -> np.ndarray:
    """[F, H, W, 3] uint8 frames of an MP4 (for tests and benchmarks)."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory(prefix="genstack-video-") as tmp:
        path = Path(tmp) / "clip.mp4"
        path.write_bytes(data)
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = reader.__next__()
        w, h = meta["size"]
        frames = [np.frombuffer(b, dtype=np.uint8).reshape(h, w, 3) for b in reader]
    return np.stack(frames)
