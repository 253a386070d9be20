"""Image service settings (prefix GENSTACK_IMAGE_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class ImageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSTACK_IMAGE_", extra="ignore")

    model: str = Field(
        "default",
        description="'default' (the bundled models/image), a diffusers pipeline folder, or a cached Hugging Face id",
    )
    device: str = Field("cpu", description="torch device, e.g. cpu, cuda or cuda:1")
    dtype: str = Field("float32", description="torch dtype of the weights: float32, bfloat16 or float16")
    torch_threads: int = Field(0, description="torch intra-op threads for this service (0: leave as is)")
    default_steps: int = Field(25, description="Denoising steps when a request sets none")
    default_guidance_scale: float = Field(1.5, description="Guidance scale when a request sets none")
    default_size: int = Field(0, description="Width/height when a request sets none (0: the model's native size)")
    default_scheduler: str = Field("ddim", description="Sampler when a request names none: ddim, dpm-solver++ or euler")
    min_size: int = Field(16, description="Smallest width/height a request may ask for")
    max_size: int = Field(512, description="Largest width/height a request may ask for")
    max_steps: int = Field(100, description="Upper bound on denoising steps per request")
    max_images: int = Field(8, description="Upper bound on images per request")
    max_guidance_scale: float = Field(30.0, description="Upper bound on the guidance scale")
    max_prompt_chars: int = Field(2000, description="Upper bound on prompt and negative prompt length")
    inline_max_pixels: int = Field(
        256 * 256, description="Images with more pixels than this go out as artifacts instead of inline PNG bytes"
    )
    preview_size: int = Field(64, description="Longest side of streamed previews when a request sets none")
