"""The check catalogue: how a check declares itself, its parameters and what it may read.

A check is a function ``(params, subject) -> CheckOutcome`` registered with `@check(...)`. Its
parameters are a pydantic model that forbids unknown keys, so a typo in a policy is an error
rather than a silently ignored setting. `Subject` hands a check the artifact, its context and
lazily decoded media, so two image checks decode the image once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from services.validator.datatypes import Artifact, CheckOutcome, Context
from shared.errors import InvalidArgument


class Params(BaseModel):
    """Base of every check's parameters: unknown keys are rejected."""

    # NaN and Infinity are never meaningful thresholds (a NaN compares false with everything)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class CheckDef:
    name: str
    description: str
    kinds: tuple[str, ...]
    params: type[Params]
    fn: Callable[[Any, Subject], CheckOutcome]
    #: the check cannot run without context.sources
    needs_sources: bool = False

    def parse_params(self, raw: dict[str, Any] | None, field: str) -> Params:
        try:
            return self.params.model_validate(raw or {})
        except ValidationError as exc:
            allowed = ", ".join(self.params.model_fields) or "none"
            problems = "; ".join(_describe(err) for err in exc.errors())
            raise InvalidArgument(
                f"invalid parameters for check {self.name!r}: {problems} (allowed parameters: {allowed})", field=field
            ) from None

    def default_params(self) -> dict[str, Any]:
        """Every parameter with its default (required ones such as regex's pattern show as empty)."""
        return self.params.model_construct().model_dump(mode="json", by_alias=True)


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ())) or "params"
    if err.get("type") == "extra_forbidden":
        return f"unknown parameter {loc!r}"
    msg = err.get("msg", "invalid")
    # pydantic prefixes messages from our own validators with "Value error, ".
    return f"{loc}: {msg.removeprefix('Value error, ')}"


CHECKS: dict[str, CheckDef] = {}


def check(name: str, *, kinds: tuple[str, ...], params: type[Params], description: str, needs_sources: bool = False):
    """Register a check function under `name` for the artifact kinds it applies to."""

    def register(fn: Callable[[Any, Subject], CheckOutcome]):
        if name in CHECKS:
            raise RuntimeError(f"check {name!r} registered twice")
        CHECKS[name] = CheckDef(name, description, kinds, params, fn, needs_sources)
        return fn

    return register


class Subject:
    """What a check reads: the artifact, its context, shared models and decoded media (cached)."""

    def __init__(self, artifact: Artifact, context: Context, resources, alive: Callable[[], None] | None = None):
        self.artifact = artifact
        self.context = context
        #: raises when the caller has gone away or its deadline passed; long checks call it as they go
        self.alive = alive or (lambda: None)
        #: services.validator.core.Resources: embedder, tokenizer, injection detector, settings
        self.resources = resources
        self._cache: dict[str, Any] = {}

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def text(self) -> str:
        return self.artifact.text

    def image(self):
        from services.validator.media import decode_image

        return self.cached("image", lambda: decode_image(self.artifact.data, self.resources.settings, "artifact.image"))

    def video(self):
        from services.validator.media import decode_frames, decode_video

        def make():
            if self.artifact.kind == "frames":
                return decode_frames(self.artifact.frames, self.artifact.fps, self.resources.settings)
            return decode_video(self.artifact.data, self.resources.settings, "artifact.video")

        return self.cached("video", make)


def quote(text: str, limit: int = 160) -> str:
    """A sentence or span quoted for a message or feedback, shortened in the middle when long."""
    text = " ".join(text.split())
    if len(text) > limit:
        half = (limit - 5) // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return f"'{text}'"
