"""Image core: validates requests, loads one diffusers pipeline by config, denoises with progress.

Any diffusers text-to-image pipeline works (the bundled pixel-space default, Stable Diffusion
1.5/2.1, SDXL, SD-Turbo, ...): it is loaded with `DiffusionPipeline.from_pretrained` from a
folder or the local Hugging Face cache, on the configured device and dtype. Progress, previews
and cancellation use diffusers' standard `callback_on_step_end`, which those pipelines share.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.image.settings import ImageSettings
from shared import metrics, tracing
from shared.artifacts import Artifact, ArtifactStore
from shared.config import Settings
from shared.diffusion import DiffusionCore
from shared.errors import Cancelled, InvalidArgument

log = logging.getLogger(__name__)

#: The project's own model, trained by services/image/train.py (`make train-image`).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "image"
SCHEDULERS = ("ddim", "dpm-solver++", "euler")
OUTPUTS = ("auto", "inline", "artifact")
MAX_SEED = 2**63 - 1024  # seed + image index must stay a valid int64


@dataclass
class ImageRequest:
    """A generation request in plain Python; None means "use the default"."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int | None = None
    scheduler: str | None = None
    output: str = "auto"
    preview_every: int = 0
    preview_size: int | None = None


@dataclass
class Progress:
    step: int  # 1-based
    total: int
    elapsed_ms: float
    previews: list[bytes] = field(default_factory=list)


@dataclass
class OutputImage:
    seed: int
    width: int
    height: int
    png: bytes = b""
    artifact: Artifact | None = None


@dataclass
class ImageResult:
    images: list[OutputImage]
    model: str
    scheduler: str
    steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    timings: dict[str, float]  # milliseconds per phase
    seconds_per_image: float
    steps_per_second: float


class _Stop(Exception):
    """Raised inside the step callback to leave the denoising loop at once."""


class ImageCore(DiffusionCore):
    MEDIA = "image"
    DEFAULT_MODEL_DIR = DEFAULT_MODEL_DIR
    TRAIN_TARGET = "train-image"

    def __init__(
        self,
        settings: ImageSettings | None = None,
        base: Settings | None = None,
        store: ArtifactStore | None = None,
    ):
        super().__init__(settings or ImageSettings(), base, store)

    def _register_pipelines(self) -> None:
        import services.image.pipeline  # noqa: F401 - registers GenstackPixelPipeline with diffusers

    # -- model facts --------------------------------------------------------------------------

    def native_size(self) -> int:
        pipe = self.pipeline()
        scale = getattr(pipe, "vae_scale_factor", None) if getattr(pipe, "vae", None) is not None else 1
        return int(pipe.unet.config.sample_size) * int(scale or 1)

    def default_size(self) -> int:
        return self.settings.default_size or self.native_size()

    # -- validation ---------------------------------------------------------------------------

    def resolve(self, req: ImageRequest) -> ImageRequest:
        """A copy of the request with defaults filled in; InvalidArgument naming the field otherwise."""
        s = self.settings
        if not req.prompt or not req.prompt.strip():
            raise InvalidArgument("must not be empty", field="prompt")
        for name in ("prompt", "negative_prompt"):
            if len(getattr(req, name)) > s.max_prompt_chars:
                raise InvalidArgument(f"must be at most {s.max_prompt_chars} characters", field=name)
        steps = s.default_steps if req.steps is None else req.steps
        if not 1 <= steps <= s.max_steps:
            raise InvalidArgument(f"must be between 1 and {s.max_steps} (got {steps})", field="steps")
        guidance = s.default_guidance_scale if req.guidance_scale is None else req.guidance_scale
        if not (0 <= guidance <= s.max_guidance_scale):  # also rejects NaN
            raise InvalidArgument(
                f"must be between 0 and {s.max_guidance_scale} (got {guidance})", field="guidance_scale"
            )
        size = {}
        for name in ("width", "height"):
            value = getattr(req, name)
            value = self.default_size() if value is None else value
            if value % 8 or not s.min_size <= value <= s.max_size:
                raise InvalidArgument(
                    f"must be a multiple of 8 between {s.min_size} and {s.max_size} (got {value})", field=name
                )
            size[name] = value
        n = 1 if req.num_images is None else req.num_images
        if not 1 <= n <= s.max_images:
            raise InvalidArgument(f"must be between 1 and {s.max_images} (got {n})", field="num_images")
        seed = req.seed
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise InvalidArgument(f"must be between 0 and {MAX_SEED} (got {seed})", field="seed")
        scheduler = req.scheduler or s.default_scheduler
        if scheduler not in SCHEDULERS:
            raise InvalidArgument(f"must be one of {', '.join(SCHEDULERS)} (got {scheduler!r})", field="scheduler")
        if req.output not in OUTPUTS:
            raise InvalidArgument(f"must be one of {', '.join(OUTPUTS)} (got {req.output!r})", field="output")
        if req.preview_every < 0:
            raise InvalidArgument(f"must be >= 0 (got {req.preview_every})", field="preview_every")
        preview_size = s.preview_size if not req.preview_size else req.preview_size
        if preview_size < 8 or preview_size > s.max_size:
            raise InvalidArgument(f"must be between 8 and {s.max_size} (got {preview_size})", field="preview_size")
        if seed is None:
            seed = random.SystemRandom().randrange(0, 2**31)
        return ImageRequest(
            prompt=req.prompt, negative_prompt=req.negative_prompt, steps=steps, guidance_scale=guidance, seed=seed,
            width=size["width"], height=size["height"], num_images=n, scheduler=scheduler, output=req.output,
            preview_every=req.preview_every, preview_size=preview_size,
        )

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        req: ImageRequest,
        stopped: Callable[[], bool] = lambda: False,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> ImageResult:
        """Run one request; raises Cancelled when `stopped()` turns true (checked before every step)."""
        t_start = time.perf_counter()
        pipe = self.pipeline()
        r = self.resolve(req)
        timings: dict[str, float] = {}
        with self.exclusive_run(stopped, timings, t_start):
            t0 = time.perf_counter()
            pixels = self._denoise(pipe, r, stopped, on_progress, t0)
            timings["denoise"] = (time.perf_counter() - t0) * 1000

        t1 = time.perf_counter()
        pngs = [self._png(img, r, i) for i, img in enumerate(pixels)]
        timings["encode"] = (time.perf_counter() - t1) * 1000
        as_artifact = r.output == "artifact" or (
            r.output == "auto" and r.width * r.height > self.settings.inline_max_pixels
        )
        images = []
        t2 = time.perf_counter()
        for i, png in enumerate(pngs):
            img = OutputImage(seed=r.seed + i, width=r.width, height=r.height)
            if as_artifact:
                img.artifact = self.store.put(png, "image/png", kind="image")
            else:
                img.png = png
            images.append(img)
        if as_artifact:
            timings["store"] = (time.perf_counter() - t2) * 1000
        total_s = time.perf_counter() - t_start
        denoise_s = timings["denoise"] / 1000
        metrics.observe_steps("image", r.steps, denoise_s, r.num_images)
        tracing.record("image.denoise", denoise_s, {"genstack.steps": r.steps})
        return ImageResult(
            images=images, model=self.model_name, scheduler=r.scheduler, steps=r.steps,
            guidance_scale=r.guidance_scale, seed=r.seed, width=r.width, height=r.height, timings=timings,
            seconds_per_image=total_s / r.num_images, steps_per_second=r.steps / denoise_s if denoise_s else 0.0,
        )

    def _denoise(self, pipe, r: ImageRequest, stopped, on_progress, t0: float) -> np.ndarray:
        import torch

        pipe.scheduler = self._scheduler(pipe, r.scheduler)
        device = torch.device(self.settings.device)
        gen_device = "cpu" if device.type == "mps" else device
        generators = [torch.Generator(device=gen_device).manual_seed(r.seed + i) for i in range(r.num_images)]
        state = {"step": 0}

        def on_step(pipe_, i, t, tensors):
            state["step"] = i + 1
            if stopped():
                raise _Stop
            if on_progress is not None:
                previews = []
                if r.preview_every and ((i + 1) % r.preview_every == 0 or i + 1 == r.steps):
                    previews = self._previews(pipe_, tensors["latents"], r.preview_size)
                on_progress(Progress(i + 1, r.steps, (time.perf_counter() - t0) * 1000, previews))
            return {}

        if stopped():
            raise Cancelled(f"cancelled before step 1 of {r.steps}")
        kwargs = dict(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt or None,
            num_inference_steps=r.steps,
            guidance_scale=r.guidance_scale,
            height=r.height,
            width=r.width,
            num_images_per_prompt=r.num_images,
            generator=generators,
            output_type="np",
            callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        try:
            with torch.inference_mode():
                images = pipe(**kwargs).images
        except _Stop:
            raise Cancelled(f"cancelled at step {state['step']} of {r.steps}") from None
        return np.asarray(images)

    @staticmethod
    def _scheduler(pipe, name: str):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

        config = pipe.scheduler.config
        if name == "ddim":
            return DDIMScheduler.from_config(config)
        if name == "dpm-solver++":
            return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
        return EulerDiscreteScheduler.from_config(config)

    @staticmethod
    def _previews(pipe, latents, size: int) -> list[bytes]:
        """Low-resolution PNGs of the current (noisy) state, decoded the cheapest way the pipeline allows."""
        import torch
        from PIL import Image

        with torch.inference_mode():
            vae = getattr(pipe, "vae", None)
            if vae is not None:
                scaled = latents / getattr(vae.config, "scaling_factor", 1.0)
                x = vae.decode(scaled.to(vae.dtype)).sample
            else:
                x = latents
            x = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for img in x:
            pil = Image.fromarray((img * 255).round().astype(np.uint8))
            pil.thumbnail((size, size))
            buf = io.BytesIO()
            pil.save(buf, format="PNG")
            out.append(buf.getvalue())
        return out

    def _png(self, pixels: np.ndarray, r: ImageRequest, index: int) -> bytes:
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        img = Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))
        info = PngInfo()
        info.add_text(
            "genstack",
            json.dumps(
                {"prompt": r.prompt, "negative_prompt": r.negative_prompt, "seed": r.seed + index, "steps": r.steps,
                 "guidance_scale": r.guidance_scale, "scheduler": r.scheduler, "model": self.model_name},
                sort_keys=True,
            ),
        )
        buf = io.BytesIO()
        img.save(buf, format="PNG", pnginfo=info)
        return buf.getvalue()
