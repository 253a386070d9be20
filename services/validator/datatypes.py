"""Plain data types of the validator core (no protobuf): what goes in and what comes out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ArtifactKind = Literal["text", "image", "video", "frames"]


@dataclass
class Artifact:
    """One artifact: `text` for text/JSON, `data` for image/video bytes, `frames` for encoded frames."""

    kind: ArtifactKind
    text: str = ""
    data: bytes = b""
    frames: list[bytes] = field(default_factory=list)
    fps: float = 0.0

    @classmethod
    def of_text(cls, text: str) -> Artifact:
        return cls("text", text=text)

    @classmethod
    def of_image(cls, data: bytes) -> Artifact:
        return cls("image", data=data)

    @classmethod
    def of_video(cls, data: bytes) -> Artifact:
        return cls("video", data=data)

    @classmethod
    def of_frames(cls, frames: list[bytes], fps: float = 0.0) -> Artifact:
        return cls("frames", frames=list(frames), fps=fps)

    @property
    def family(self) -> str:
        """The kind checks are declared for: frames are a video."""
        return "video" if self.kind == "frames" else self.kind

    def size_bytes(self) -> int:
        return len(self.text.encode("utf-8")) + len(self.data) + sum(len(f) for f in self.frames)


@dataclass
class Source:
    id: str = ""
    text: str = ""


@dataclass
class ExpectedMedia:
    width: int = 0
    height: int = 0
    num_frames: int = 0
    fps: float = 0.0


@dataclass
class Context:
    request: str = ""
    sources: list[Source] = field(default_factory=list)
    expected: ExpectedMedia = field(default_factory=ExpectedMedia)

    def size_bytes(self) -> int:
        return len(self.request.encode("utf-8")) + sum(
            len(s.text.encode("utf-8")) + len(s.id.encode("utf-8")) for s in self.sources
        )


@dataclass
class CheckSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    advisory: bool = False

    @property
    def key(self) -> str:
        """What results are reported under and what inline overrides match."""
        return self.label or self.name


@dataclass
class Evidence:
    kind: str
    text: str = ""
    where: str = ""
    start: int = 0
    end: int = 0
    value: float = 0.0


@dataclass
class CheckOutcome:
    """What a check function returns; the core adds the name, timing and advisory flag."""

    passed: bool
    score: float
    message: str
    evidence: list[Evidence] = field(default_factory=list)
    feedback: str = ""


@dataclass
class CheckResult:
    name: str
    check: str
    passed: bool
    score: float
    message: str
    evidence: list[Evidence] = field(default_factory=list)
    feedback: str = ""
    advisory: bool = False
    duration_ms: float = 0.0


@dataclass
class Verdict:
    passed: bool
    score: float
    results: list[CheckResult]
    feedback: str
    policy: str
    duration_ms: float = 0.0

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)


@dataclass
class Policy:
    name: str
    description: str
    checks: list[CheckSpec]
    origin: str = "shipped"
