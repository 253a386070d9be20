"""Orchestrator settings (prefix GENSTACK_ORCHESTRATOR_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class OrchestratorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSTACK_ORCHESTRATOR_", extra="ignore")

    store: Literal["auto", "sqlite", "memory", "redis"] = Field(
        "auto",
        description="Job state: sqlite (embedded, <data dir>/orchestrator/jobs.sqlite3), memory (this process only), "
        "redis (distributed); auto = redis unless every step is inproc, then sqlite",
    )
    step_transports: dict[str, str] = Field(
        default_factory=dict,
        description='Transport per step, JSON, e.g. {"generate": "celery"}; unset steps use GENSTACK_TRANSPORT',
    )
    max_concurrent_jobs: int = Field(4, description="Jobs run at once by one orchestrator process")
    default_deadline_s: float = Field(600.0, description="Job deadline when a request gives none")
    max_deadline_s: float = Field(3600.0, description="Largest deadline a request may ask for")
    retention_s: int = Field(7 * 24 * 3600, description="How long finished jobs and their events are kept")
    default_collection: str = Field("default", description="Collection answer jobs search when none is given")
    answer_models: list[str] = Field(
        default_factory=list, description="Cascade for answer jobs (small first); empty = the generator's default"
    )
    answer_top_k: int = Field(4, description="Chunks retrieved for answer jobs")
    answer_max_new_tokens: int = Field(160, description="Answer length cap in tokens")
    context_tokens: int = Field(1536, description="Token budget for prompt + sources + answer in answer jobs")
    pipelines_file: str = Field("", description="YAML/JSON file with extra or overriding pipeline definitions")
