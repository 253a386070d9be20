"""Validator settings (prefix GENSTACK_VALIDATOR_)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class ValidatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSTACK_VALIDATOR_", extra="ignore")

    policies_file: Path | None = Field(
        None,
        description="User policy file (YAML or JSON) adding named policies to the shipped ones; unset: none",
    )
    injection_detector: Literal["auto", "nanoguard", "rules"] = Field(
        "auto",
        description="Prompt-injection detector: nanoguard (the metatronnanoguard classifier, loaded with "
        "torch.load(weights_only=True)), rules (the built-in rule set), or auto (nanoguard if it loads, else rules)",
    )
    warm_up_models: bool = Field(
        True, description="Load the embedding model and the injection classifier at warm-up instead of on first use"
    )
    embedding_cache_size: int = Field(
        4096,
        description="Sentence vectors kept in memory (LRU) so that sources re-sent in a retry loop are embedded "
        "once; 0 turns the cache off",
    )
    max_payload_bytes: int = Field(
        8 * 1024 * 1024,
        description="Largest artifact plus context (text, bytes, frames, sources) accepted; larger: RESOURCE_EXHAUSTED",
    )
    max_sources: int = Field(256, description="Most source chunks in a request; more: RESOURCE_EXHAUSTED")
    max_checks: int = Field(64, description="Most checks a policy may run in one request; more: RESOURCE_EXHAUSTED")
    max_image_pixels: int = Field(
        4096 * 4096, description="Most pixels in one image or video frame (decompression bombs): RESOURCE_EXHAUSTED"
    )
    max_frames: int = Field(1024, description="Most frames decoded from one video; more: RESOURCE_EXHAUSTED")
    max_decoded_video_bytes: int = Field(
        512 * 1024 * 1024, description="Most bytes of decoded RGB frames held for one video; more: RESOURCE_EXHAUSTED"
    )
    video_decode_timeout_s: float = Field(60.0, description="Time ffmpeg may take to decode one video")
    check_budget_s: float = Field(
        120.0, gt=0, description="Time one check may take on one request; past it the request ends "
        "DEADLINE_EXCEEDED naming the check (the caller's own deadline ends it sooner)",
    )
    artifact_root: Path | None = Field(
        None,
        description="Folder that Artifact.ref file:// URIs must lie in; defaults to the data dir "
        "(GENSTACK_DATA_DIR or <home>/data)",
    )


@functools.cache
def get_validator_settings() -> ValidatorSettings:
    return ValidatorSettings()
