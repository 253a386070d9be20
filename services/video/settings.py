"""Video service settings (prefix GENSTACK_VIDEO_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class VideoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSTACK_VIDEO_", extra="ignore")

    model: str = Field(
        "default",
        description="'default' (the bundled models/video), a diffusers text-to-video pipeline folder, "
                    "or a cached Hugging Face id",
    )
    device: str = Field("cpu", description="torch device, e.g. cpu, cuda or cuda:1")
    dtype: str = Field("float32", description="torch dtype of the weights: float32, bfloat16 or float16")
    torch_threads: int = Field(0, description="torch intra-op threads for this service (0: leave as is)")
    default_steps: int = Field(25, description="Denoising steps when a request sets none")
    default_guidance_scale: float = Field(1.5, description="Guidance scale when a request sets none")
    default_frames: int = Field(16, description="Frames when a request sets none")
    default_fps: int = Field(8, description="Frames per second when a request sets none")
    default_size: int = Field(0, description="Width/height when a request sets none (0: the model's native size)")
    default_scheduler: str = Field("ddim", description="Sampler when a request names none: ddim, dpm-solver++ or euler")
    default_frame_noise: str = Field(
        "shared", description="Starting noise when a request names none: shared (coherence technique) or independent"
    )
    noise_share: float = Field(0.5, description="Share of the noise variance common to all frames with shared noise")
    min_size: int = Field(16, description="Smallest width/height a request may ask for")
    max_size: int = Field(256, description="Largest width/height a request may ask for")
    max_frames: int = Field(64, description="Upper bound on frames per clip")
    max_fps: int = Field(60, description="Upper bound on frames per second")
    max_steps: int = Field(100, description="Upper bound on denoising steps per request")
    max_guidance_scale: float = Field(30.0, description="Upper bound on the guidance scale")
    max_prompt_chars: int = Field(2000, description="Upper bound on prompt and negative prompt length")
    inline_max_bytes: int = Field(
        1024 * 1024, description="Clips whose encoded size is above this go out as artifacts instead of inline bytes"
    )
    preview_size: int = Field(64, description="Longest side of streamed preview frames when a request sets none")
    preview_frames: int = Field(4, description="Frames per streamed preview when a request sets none")
    crf: int = Field(18, description="H.264 constant rate factor of MP4 output (0 lossless - 51 worst)")
