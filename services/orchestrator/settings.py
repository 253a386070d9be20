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
    screen_cache_s: float = Field(
        600.0, ge=0, description="How long the injection verdict on a retrieved chunk's text is remembered, so that "
        "the validator is asked only about chunks not seen lately (0 = ask about every chunk of every job)"
    )
    screen_cache_entries: int = Field(50_000, gt=0, description="Most chunk verdicts remembered (least recently used "
                                      "go first)")
    pipelines_file: str = Field("", description="YAML/JSON file with extra or overriding pipeline definitions")
    # -- durability (docs/reliability.md) --
    lease_s: float = Field(
        30.0, gt=0, description="Lease on a job held (and renewed every third of it) by the process running it; a "
        "job whose lease lapsed (its orchestrator died) is resumed or ended by another orchestrator"
    )
    recovery_interval_s: float = Field(
        10.0, gt=0, description="How often an orchestrator looks for jobs whose lease lapsed (also once at start-up)"
    )
    recover: bool = Field(True, description="Whether this process takes over orphaned jobs (servers and workers)")
    drain_s: float = Field(
        25.0, ge=0, description="On shutdown, how long running jobs may finish before their leases are left to lapse "
        "(queued jobs are handed back at once)"
    )
    store_outage_s: float = Field(
        60.0, gt=0, description="How long job-store writes are retried while Redis is unreachable before the job fails"
    )
    call_retries: int = Field(
        6, ge=0, le=100, description="Retries of a service call that failed with UNAVAILABLE (or a single call's "
        "DEADLINE_EXCEEDED), inside the job's deadline"
    )
    retry_initial_backoff_s: float = Field(0.2, gt=0, description="First backoff before a retried call (doubles)")
    retry_max_backoff_s: float = Field(3.0, gt=0, description="Longest backoff between retried calls")
    # -- limits at the edge --
    max_text_chars: int = Field(
        200_000, gt=0, description="Longest prompt (generate.prompt, all generate.messages together) or question "
        "a job accepts, in characters; checked before anything is stored"
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest SubmitJobRequest (ingest documents included)"
    )
    record_inline_bytes: int = Field(
        256 * 1024, gt=0, description="Requests larger than this are stored once as an artifact and referenced from "
        "the job record, which keeps a copy without the large fields"
    )
    max_step_json_chars: int = Field(
        64 * 1024, gt=0, description="Longest step input/output JSON kept in a record (longer ones are summarised)"
    )
    list_response_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="ListJobs stops adding jobs to a page past this size (next_page_token "
        "continues)"
    )
