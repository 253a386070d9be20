"""Pipeline steps: what each reads and provides, the typed run state they share, and the checks
that a pipeline's steps fit together before any job runs.

A step is a function `(run, params) -> "failed" | None` registered with `@step(...)`. It declares
the run-state slots it reads (each must be provided by an earlier step of the pipeline), the ones
it may read when present (a retry's feedback), the ones it provides, and the job input it needs
(the SubmitJobRequest field, e.g. "answer"). Slots and their types are declared once with
`slot()`. Returning "failed" triggers the pipeline's retry rule (a failed verdict).

The steps themselves live next to their job kind in `services/orchestrator/kinds/`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from shared.errors import Internal

StepFn = Callable[[Any, dict], str | None]


@dataclass(frozen=True)
class StepSpec:
    name: str
    fn: StepFn
    #: slots that an earlier step must have provided
    reads: tuple[str, ...] = ()
    #: slots read when present (e.g. feedback written by a later step before a retry)
    optional: tuple[str, ...] = ()
    #: slots this step writes
    provides: tuple[str, ...] = ()
    #: the SubmitJobRequest input it reads ("answer", ...); None: it works for any kind
    input: str | None = None
    #: whether running it a second time is harmless (a job resumed after its orchestrator died
    #: reruns the step that was interrupted); False: such a job fails instead
    rerun_safe: bool = True


STEPS: dict[str, StepSpec] = {}
#: slot name -> the type its value must have
SLOTS: dict[str, type | tuple[type, ...]] = {}


def slot(name: str, type_: type | tuple[type, ...]) -> str:
    """Declare a run-state slot (once per name; the same declaration again is fine)."""
    if SLOTS.get(name, type_) != type_:
        raise ValueError(f"slot {name!r} is already declared with type {SLOTS[name]}")
    SLOTS[name] = type_
    return name


def step(name: str, *, reads: tuple[str, ...] = (), optional: tuple[str, ...] = (),
         provides: tuple[str, ...] = (), input: str | None = None,  # noqa: A002 - the job input's name
         rerun_safe: bool = True):
    def register(fn: StepFn) -> StepFn:
        for s in (*reads, *optional, *provides):
            if s not in SLOTS:
                raise ValueError(f"step {name!r} names undeclared slot {s!r}")
        STEPS[name] = StepSpec(name, fn, tuple(reads), tuple(optional), tuple(provides), input, rerun_safe)
        return fn

    return register


class RunState:
    """A job's working state: only declared slots, each holding a value of its declared type."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def view(self, spec: StepSpec) -> StepView:
        return StepView(self, spec)

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def set(self, name: str, value: Any) -> None:
        expected = SLOTS.get(name)
        if expected is None:
            raise Internal(f"run state has no slot {name!r}")
        if not isinstance(value, expected):
            raise Internal(f"run state slot {name!r} takes {expected}, not {type(value).__name__}")
        self._values[name] = value


class StepView:
    """What one step sees of the run state: reads and writes outside its declaration are bugs."""

    def __init__(self, state: RunState, spec: StepSpec):
        self._state = state
        self._spec = spec

    def _readable(self, name: str) -> None:
        s = self._spec
        if name not in s.reads and name not in s.optional and name not in s.provides:
            raise Internal(f"step {s.name!r} reads {name!r}, which it does not declare")

    def __getitem__(self, name: str) -> Any:
        self._readable(name)
        if name not in self._state:
            raise Internal(f"step {self._spec.name!r} needs {name!r}, which no earlier step provided")
        return self._state.get(name)

    def get(self, name: str, default: Any = None) -> Any:
        self._readable(name)
        return self._state.get(name, default)

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in self._spec.provides:
            raise Internal(f"step {self._spec.name!r} writes {name!r}, which it does not declare")
        self._state.set(name, value)

    def update(self, **values: Any) -> None:
        for name, value in values.items():
            self[name] = value


def check_steps(pipeline_name: str, kind: str, step_names: list[str], needs: tuple[str, ...],
                retry_on: str | None, restart_at: str | None) -> None:
    """Raise ValueError naming the pipeline, the step and what is missing when the steps do not fit."""
    where = f"pipeline {pipeline_name!r}"
    if not step_names:
        raise ValueError(f"{where}: no steps")
    provided: dict[str, str] = {}
    for name in step_names:
        spec = STEPS.get(name)
        if spec is None:
            raise ValueError(f"{where}: unknown step {name!r}; known: {', '.join(sorted(STEPS))}")
        if spec.input is not None and spec.input != kind:
            raise ValueError(f"{where}: step {name!r} reads the {spec.input!r} job input, but the pipeline "
                             f"runs {kind!r} jobs")
        for s in spec.reads:
            if s not in provided:
                later = [n for n in step_names if s in STEPS.get(n, StepSpec(n, print)).provides]
                hint = f" ({', '.join(later)} provides it, but runs later)" if later else ""
                raise ValueError(f"{where}: step {name!r} reads {s!r}, which no earlier step provides{hint}")
        for s in spec.provides:
            provided.setdefault(s, name)
    for s in needs:
        if s not in provided:
            raise ValueError(f"{where}: a {kind!r} job's result needs {s!r}, which no step provides")
    for role, name in (("on", retry_on), ("restart_at", restart_at)):
        if name is not None and name not in step_names:
            raise ValueError(f"{where}: retry {role} {name!r} is not a step of the pipeline "
                             f"(steps: {', '.join(step_names)})")
    if retry_on is not None and restart_at is not None and step_names.index(restart_at) > step_names.index(retry_on):
        raise ValueError(f"{where}: retry restart_at {restart_at!r} comes after its trigger {retry_on!r}")


# -- helpers the steps share ---------------------------------------------------------------------

def to_json(msg) -> dict:
    return json_format.MessageToDict(msg)


def dumps(doc: dict) -> str:
    return json.dumps(doc, default=str)


def follow_denoising(run, stream, event: str, step_name: str, attempt: int, previews: Callable[[Any], list[bytes]]):
    """Read an image or video stream to its result, emitting `event` per denoising step (step, total,
    elapsed, the previews as base64 PNGs) so that watchers see progress; a job cancel stops it."""
    import base64

    from shared.errors import Cancelled, Unavailable

    response = None
    try:
        for msg in stream:
            if run.cancelled():
                raise Cancelled(f"job cancelled during {step_name}")
            if msg.HasField("result"):
                response = msg.result
            else:
                p = msg.progress
                run.emit(event, step_name, {
                    "step": p.step, "total_steps": p.total_steps, "elapsed_ms": round(p.elapsed_ms, 1),
                    "attempt": attempt, "previews": [base64.b64encode(png).decode() for png in previews(p)]})
    finally:
        if response is None:
            stream.cancel()
    if response is None:
        raise Unavailable(f"the {step_name} stream ended without a result")
    return response
