"""Generator settings (prefix GENSTACK_GENERATOR_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class GeneratorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSTACK_GENERATOR_", extra="ignore")

    default_model: str = Field("qwen2.5-0.5b", description="Model used when a request names none")
    preload: list[str] = Field(default_factory=list, description="Models loaded at warm-up (default: default_model)")
    dtype: str = Field(
        "auto",
        description="torch dtype for weights: auto, bfloat16, float16 or float32 (auto: float32 on CPUs without native "
        "bfloat16 arithmetic, where bfloat16 prefill runs several times slower; bfloat16 elsewhere)",
    )
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda")
    max_new_tokens_cap: int = Field(2048, description="Upper bound a request may ask for")
    default_max_new_tokens: int = Field(256, description="max_new_tokens when a request sets none")
    default_temperature: float = Field(0.7, description="temperature when a request sets none")
    max_context_tokens: int = Field(0, description="Cap on prompt+completion tokens (0: the model's own context)")
    max_queue: int = Field(64, description="Requests waiting per model before RESOURCE_EXHAUSTED")
    engine: str = Field(
        "batching", description="'batching': continuous batching, running requests decode together "
        "(services/generator/batching.py); 'sequential': one request at a time per model"
    )
    max_batch_size: int = Field(8, description="Requests decoding together per model (batching engine)")
    max_batch_tokens: int = Field(
        16384, description="Prompt plus max new tokens, summed over a model's running requests; beyond it "
        "requests wait in the queue (batching engine)"
    )
    prefill_chunk: int = Field(64, description="Prompt tokens prefilled per step, so a long prompt does not stall "
                               "running streams; also the granularity of prefix reuse (batching engine)")
    prefix_cache_tokens: int = Field(4096, description="Tokens of prompt-prefix K/V kept per model for reuse, LRU "
                                     "(0 = off; batching engine)")
    max_loaded_models: int = Field(3, description="Models kept in memory at once")
    allow_any_model: bool = Field(
        False, description="Accept Hugging Face ids and local folders beyond the registry (off: clients pick only "
        "registered models, so they cannot make the server load arbitrary folders)"
    )
