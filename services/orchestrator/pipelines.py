"""Pipelines are data: an ordered list of named steps with parameters, plus an optional retry rule.

The step names refer to functions in `steps.py`. A file named by GENSTACK_ORCHESTRATOR_PIPELINES_FILE
(JSON or YAML, a mapping of pipeline name -> definition) adds pipelines or overrides shipped ones.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from shared.errors import FailedPrecondition, InvalidArgument


class StepDef(BaseModel):
    name: str = Field(description="A step function from services.orchestrator.steps")
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


SHIPPED: dict[str, Pipeline] = {
    "answer": Pipeline(
        kind="answer",
        description="RAG: retrieve, build a numbered context, generate a cited answer, attach citations the model "
        "left out where one source clearly supports a sentence, validate; re-ask with the validator's feedback "
        "(escalating along the model cascade) until it passes or retries run out",
        steps=[
            StepDef(name="retrieve"),
            StepDef(name="build_context"),
            StepDef(name="generate_answer"),
            StepDef(name="cite_answer", params={"min_support": 0.6}),
            StepDef(name="validate_answer", params={"policy": "rag-answer"}),
        ],
        retry=RetryRule(on="validate_answer", restart_at="generate_answer", max_retries=2),
    ),
    "generate": Pipeline(kind="generate", description="One generation", steps=[StepDef(name="generate")]),
    "ingest": Pipeline(kind="ingest", description="Documents into the retriever", steps=[StepDef(name="ingest")]),
    "image": Pipeline(
        kind="image",
        description="Text-to-image, then the validator's image-default policy; a failed verdict retries once "
        "with the next seed",
        steps=[StepDef(name="generate_image"), StepDef(name="validate_image", params={"policy": "image-default"})],
        retry=RetryRule(on="validate_image", restart_at="generate_image", max_retries=1),
    ),
}


def load_pipelines(path: str) -> dict[str, Pipeline]:
    pipelines = dict(SHIPPED)
    if not path:
        return pipelines
    text = Path(path).read_text()
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
    from services.orchestrator.steps import STEPS

    for name, p in pipelines.items():
        for step in p.steps:
            if step.name not in STEPS:
                raise FailedPrecondition(f"pipeline {name!r}: unknown step {step.name!r}; known: {sorted(STEPS)}")
    return pipelines


def pick(pipelines: dict[str, Pipeline], name: str, kind: str) -> tuple[str, Pipeline]:
    chosen = name or kind
    p = pipelines.get(chosen)
    if p is None:
        raise InvalidArgument(f"unknown pipeline {chosen!r}; known: {', '.join(sorted(pipelines))}", field="pipeline")
    if p.kind != kind:
        raise InvalidArgument(f"pipeline {chosen!r} runs {p.kind!r} jobs, not {kind!r}", field="pipeline")
    return chosen, p
