"""The agent's plain data: run specs, steps, usage and records (no protobuf, no transports)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# step statuses
OK = "ok"
TOOL_ERROR = "tool_error"
REFUSED = "refused"
AWAITING = "awaiting_approval"
REJECTED = "rejected"
REPEATED = "repeated"
FINAL = "final"
STEP_CANCELLED = "cancelled"

# run states
RUNNING = "running"
AWAITING_APPROVAL = "awaiting_approval"
COMPLETED = "completed"
BUDGET_EXHAUSTED = "budget_exhausted"
CANCELLED = "cancelled"
FAILED = "failed"
ENDED = (COMPLETED, BUDGET_EXHAUSTED, CANCELLED, FAILED)

FINAL_ANSWER = "final_answer"


@dataclass
class Budget:
    max_steps: int
    max_seconds: float
    max_tokens: int


@dataclass
class RunSpec:
    """A validated run request; defaults already applied."""

    goal: str
    allowed_tools: list[str]
    budget: Budget
    models: list[str]
    collection: str
    run_id: str
    approval_tools: list[str] = field(default_factory=list)
    temperature: float = 0.0
    seed: int | None = None


@dataclass
class Step:
    index: int
    status: str = ""
    tool: str = ""
    arguments: dict | None = None
    observation: str = ""
    decision: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    decision_ms: float = 0.0
    tool_ms: float = 0.0
    injection_flagged: bool = False
    injection_detail: str = ""
    note: str = ""
    forced: bool = False
    decision_complete: bool = True


@dataclass
class Usage:
    steps: int = 0
    seconds: float = 0.0
    completion_tokens: int = 0
    prompt_tokens: int = 0


@dataclass
class Decision:
    """One generation under the decision schema."""

    text: str
    complete: bool
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ms: float = 0.0
    #: the next-step option chosen before the call was written ("" when the decision was one generation)
    choice: str = ""


@dataclass
class Event:
    """What the loop reports after each step (and once more when it ends)."""

    run_id: str
    step: Step
    state: str
    usage: Usage
    final_answer: str = ""
    error: str = ""
    last: bool = False


@dataclass
class RunRecord:
    run_id: str
    request: dict[str, Any]
    state: str
    steps: list[Step] = field(default_factory=list)
    final_answer: str = ""
    error: str = ""
    usage: Usage = field(default_factory=Usage)
    created_at: str = ""
    updated_at: str = ""
    allowed_tools: list[str] = field(default_factory=list)
    approval_tools: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> RunRecord:
        doc = dict(doc)
        doc["steps"] = [Step(**s) for s in doc.get("steps", [])]
        doc["usage"] = Usage(**doc.get("usage", {}))
        return cls(**doc)

    def put_step(self, step: Step) -> None:
        """Add a step, or replace the one with the same index (a step that waited for approval)."""
        for i, s in enumerate(self.steps):
            if s.index == step.index:
                self.steps[i] = step
                return
        self.steps.append(step)
