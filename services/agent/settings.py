"""Agent service settings (prefix GENSTACK_AGENT_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class AgentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSTACK_AGENT_", extra="ignore")

    default_tools: list[str] = Field(["search", "calculator"],
                                     description="Tools a run allows when its request lists none (final_answer always)")
    models: list[str] = Field(default_factory=list,
                              description="Generator model cascade when a request names none; empty = the generator's "
                              "default model")
    default_collection: str = Field("default", description="Collection the search tool looks in when a run names none")
    default_max_steps: int = Field(6, description="Tool steps when a request sets none")
    max_steps: int = Field(32, description="Upper bound on a request's max_steps")
    default_max_seconds: float = Field(300.0, description="Wall-clock budget when a request sets none")
    max_seconds: float = Field(600.0, description="Upper bound on a request's max_seconds")
    default_max_tokens: int = Field(1024, description="Generated-token budget when a request sets none")
    max_tokens: int = Field(8192, description="Upper bound on a request's max_tokens")
    decision_max_tokens: int = Field(96, description="Most tokens one decision may generate")
    min_decision_tokens: int = Field(24, description="Below this many tokens left, the loop forces the final answer")
    choose_then_call: bool = Field(
        True, description="After an observation, decide in two halves: pick the kind of next step from short "
        "options, then write that tool's call (docs/agent.md); off: one generation over every allowed tool")
    check_answer_support: bool = Field(
        True, description="A final answer that names things (names, numbers) no tool result or the goal contains is "
        "sent back once with the reason, then replaced by a statement that the results do not hold the answer; one "
        "that answers only some of the subjects the goal names is sent back once for the missing part; a calculator "
        "expression with numbers from neither the goal nor the results is not run; a found number given where the goal "
        "asks for arithmetic is sent back once"
    )
    final_answer_tokens: int = Field(
        64, description="Tokens the forced final answer may use beyond an exhausted token budget")
    final_answer_seconds: float = Field(
        120.0, description="Seconds the forced final answer may take beyond an exhausted time budget")
    answer_max_chars: int = Field(600, description="Longest final answer (the final_answer schema's maxLength)")
    search_top_k: int = Field(2, description="Passages the search tool returns when the model sets no top_k")
    search_min_relative_score: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Search hits scoring under this share of the best hit's score are left out of the observation: "
        "a small model tends to answer from the last passage it read, relevant or not (0: keep all)")
    observation_chars: int = Field(1200, description="Longest tool observation shown to the model (longer is cut)")
    hit_chars: int = Field(400, description="Longest passage text per search hit shown to the model")
    injection_check: bool = Field(True, description="Screen tool and document text with the validator's injection "
                                  "check before the model sees it")
    injection_policy: str = Field("", description="Validator policy for the injection screen; empty = the inline "
                                  "prompt_injection check on the text")
    validate_policy: str = Field("", description="Policy of the validate tool when the model names none; empty = "
                                 "length, repetition, pii and prompt_injection checks")
    approval_tools: list[str] = Field(default_factory=list, description="Tools that always need ApproveStep")
    tools_file: str = Field("", description="YAML/JSON file adding tools: an RPC of any genstack service, or a "
                            "Python entry point (see docs/agent.md)")
    store: Literal["auto", "memory", "redis"] = Field(
        "auto", description="Run records and approvals: memory (this process) or redis (shared by servers and "
        "workers); auto = memory when GENSTACK_TRANSPORT is inproc, else redis")
    retention_s: int = Field(7 * 24 * 3600, description="How long run records are kept in Redis")
    approval_timeout_s: float = Field(3600.0, description="Longest wait for ApproveStep/RejectStep before the step "
                                      "counts as rejected")
