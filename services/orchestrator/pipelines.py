"""Pipelines are data: an ordered list of named steps with parameters, plus an optional retry rule.

Each job kind ships its pipelines (services/orchestrator/kinds/). A file named by
GENSTACK_ORCHESTRATOR_PIPELINES_FILE (JSON or YAML, a mapping of pipeline name -> definition) adds
pipelines or overrides shipped ones. Every pipeline is checked when it loads: its kind exists, its
steps exist and take that kind's input, each step's inputs come from an earlier step, the kind's
result is provided, and the retry rule names steps of the pipeline in a workable order.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from shared.errors import FailedPrecondition, InvalidArgument


class StepDef(BaseModel):
    name: str = Field(description="A registered step (services.orchestrator.steps.STEPS)")
    params: dict = Field(default_factory=dict)


class RetryRule(BaseModel):
    on: str = Field(description="The step whose failure (a failed verdict) triggers a retry")
    restart_at: str = Field(description="The step the pipeline goes back to")
    max_retries: int = Field(2, ge=0, le=5)


class Pipeline(BaseModel):
    kind: str
    steps: list[StepDef]
    retry: RetryRule | None = None
    description: str = ""


def shipped() -> dict[str, Pipeline]:
    """Every job kind's own pipelines."""
    from services.orchestrator.kinds import load_kinds

    out: dict[str, Pipeline] = {}
    for kind in load_kinds().values():
        out.update(kind.pipelines)
    return out


def check_pipeline(name: str, p: Pipeline) -> None:
    """Raise FailedPrecondition naming the pipeline, the step and what is missing."""
    from services.orchestrator.kinds import load_kinds
    from services.orchestrator.steps import check_steps

    kinds = load_kinds()
    kind = kinds.get(p.kind)
    if kind is None:
        raise FailedPrecondition(f"pipeline {name!r}: unknown kind {p.kind!r}; known: {', '.join(sorted(kinds))}")
    try:
        check_steps(name, p.kind, [s.name for s in p.steps], kind.result_needs,
                    p.retry.on if p.retry else None, p.retry.restart_at if p.retry else None)
    except ValueError as exc:
        raise FailedPrecondition(str(exc)) from None


def load_pipelines(path: str) -> dict[str, Pipeline]:
    pipelines = shipped()
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise FailedPrecondition(f"pipelines file {path}: cannot be read ({exc.strerror})") from None
        try:
            if path.endswith((".yaml", ".yml")):
                import yaml

                doc = yaml.safe_load(text)
            else:
                doc = json.loads(text)
            for name, definition in (doc or {}).items():
                pipelines[name] = Pipeline.model_validate(definition)
        except Exception as exc:  # noqa: BLE001 - a bad file stops start-up with the reason
            raise FailedPrecondition(f"pipelines file {path}: {exc}") from None
    for name, p in pipelines.items():
        check_pipeline(name, p)
    return pipelines


def pick(pipelines: dict[str, Pipeline], name: str, kind: str) -> tuple[str, Pipeline]:
    chosen = name or kind
    p = pipelines.get(chosen)
    if p is None:
        raise InvalidArgument(f"unknown pipeline {chosen!r}; known: {', '.join(sorted(pipelines))}", field="pipeline")
    if p.kind != kind:
        raise InvalidArgument(f"pipeline {chosen!r} runs {p.kind!r} jobs, not {kind!r}", field="pipeline")
    return chosen, p
