"""Job kinds: each module here registers one kind with its request validation, its steps, its
shipped pipelines and how its result is filled. The orchestrator core and the runner have no
kind-specific code; a new kind is a new module here plus its input and result in the proto."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.orchestrator.pipelines import Pipeline


@dataclass(frozen=True)
class JobKind:
    #: the SubmitJobRequest input field that selects it, and the Job field its result goes in
    name: str
    #: raise InvalidArgument (via shared.errors.require) for a bad input; gets (input, settings)
    validate: Callable[[Any, Any], None]
    #: fill the job's result from the run state; gets (job, state)
    fill_result: Callable[[Any, Any], None]
    #: shipped pipelines; the one named like the kind is its default
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    #: run-state slots the result is filled from: a pipeline of this kind must provide them
    result_needs: tuple[str, ...] = ()
    #: the input's override of the retry rule's max_retries, or None
    max_retries: Callable[[Any], int | None] = lambda _input: None


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    for p in kind.pipelines.values():
        if p.kind != kind.name:
            raise ValueError(f"kind {kind.name!r} ships a pipeline for {p.kind!r}")
    KINDS[kind.name] = kind
    return kind


def load_kinds() -> dict[str, JobKind]:
    """Import every kind module in this package (each registers itself) and return the registry."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return KINDS


def get_kind(name: str) -> JobKind:
    return load_kinds()[name]
