"""Agent core: checks run requests, wires the loop to the generator (decisions under a JSON Schema),
the validator (injection screen) and the tools, keeps run records, approvals and cancellations.
No gRPC or Celery here: other services are reached through their typed clients."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable

from services.agent import datatypes as dt
from services.agent.datatypes import FINAL_ANSWER, Budget, Decision, Event, RunRecord, RunSpec, Step
from services.agent.loop import AgentLoop, LoopConfig
from services.agent.settings import AgentSettings
from services.agent.store import MemoryBackend, RedisBackend, RunStore
from services.agent.tools import Tool, ToolContext, build_registry
from shared.config import Settings, get_settings
from shared.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    GenstackError,
    InvalidArgument,
    NotFound,
    require,
)
from shared.timefmt import iso_utc

log = logging.getLogger(__name__)

MAX_GOAL_CHARS = 2000
MAX_REASON_CHARS = 2000
_RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@functools.cache
def default_registry() -> dict[str, Tool]:
    """The registry built from the environment's settings (for request checks outside the service)."""
    return build_registry(AgentSettings())


def check_request(
    settings: AgentSettings,
    tools: dict[str, Tool],
    *,
    goal: str,
    allowed_tools: list[str],
    max_steps: int = 0,
    max_seconds: float = 0.0,
    max_tokens: int = 0,
    model: str = "",
    models: list[str] | None = None,
    collection: str = "",
    run_id: str = "",
    require_approval: list[str] | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    prefix: str = "",
) -> RunSpec:
    """A RunSpec with defaults applied, or InvalidArgument naming the field (with `prefix`)."""
    f = prefix.__add__
    require(bool(goal.strip()), f("goal"), "a non-empty goal")
    require(len(goal) <= MAX_GOAL_CHARS, f("goal"), f"at most {MAX_GOAL_CHARS} characters", len(goal))
    names = list(dict.fromkeys(allowed_tools or settings.default_tools))
    for name in names:
        tool = tools.get(name)
        if tool is None:
            raise InvalidArgument(f"unknown tool {name!r}; registered: {', '.join(sorted(tools))}",
                                  field=f("allowed_tools"))
        if not tool.available:
            raise InvalidArgument(f"tool {name!r} is not available: {tool.unavailable}", field=f("allowed_tools"))
    require(0 <= max_steps <= settings.max_steps, f("budget.max_steps"),
            f"between 1 and {settings.max_steps} (0 = {settings.default_max_steps})", max_steps)
    require(0 <= max_seconds <= settings.max_seconds, f("budget.max_seconds"),
            f"between 1 and {settings.max_seconds:g} seconds (0 = {settings.default_max_seconds:g})", max_seconds)
    require(max_seconds == 0 or max_seconds >= 1, f("budget.max_seconds"),
            f"at least 1 second (0 = {settings.default_max_seconds:g})", max_seconds)
    require(0 <= max_tokens <= settings.max_tokens, f("budget.max_tokens"),
            f"between 16 and {settings.max_tokens} (0 = {settings.default_max_tokens})", max_tokens)
    require(max_tokens == 0 or max_tokens >= 16, f("budget.max_tokens"),
            f"at least 16 (0 = {settings.default_max_tokens})", max_tokens)
    if temperature is not None:
        require(0 <= temperature <= 2, f("temperature"), "between 0 and 2", temperature)
    if run_id:
        require(bool(_RUN_ID.match(run_id)), f("run_id"), "1-128 characters of letters, digits, '.', '_' or '-'",
                run_id)
    approvals = []
    for name in require_approval or []:
        require(name in names, f("require_approval"), f"tools the run allows ({', '.join(names)})", name)
        approvals.append(name)
    approvals += [n for n in names if tools[n].approval and n not in approvals]
    chosen = [m for m in (models or []) if m] or ([model] if model else []) or list(settings.models)
    return RunSpec(
        goal=goal.strip(),
        allowed_tools=[n for n in names if n != FINAL_ANSWER],
        budget=Budget(max_steps or settings.default_max_steps, float(max_seconds or settings.default_max_seconds),
                      max_tokens or settings.default_max_tokens),
        models=chosen,
        collection=collection or settings.default_collection,
        run_id=run_id or uuid.uuid4().hex,
        approval_tools=approvals,
        temperature=float(temperature or 0.0),
        seed=seed,
    )


class AgentCore:
    def __init__(self, settings: AgentSettings | None = None, base: Settings | None = None,
                 store: RunStore | None = None, client: Callable[[str], object] | None = None):
        self.settings = settings or AgentSettings()
        self.base = base or get_settings()
        self.tools = build_registry(self.settings)
        self.store = store or self._make_store()
        self._client = client
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()

    def _make_store(self) -> RunStore:
        kind = self.settings.store
        if kind == "auto":
            kind = "memory" if self.base.transport == "inproc" else "redis"
        backend = MemoryBackend() if kind == "memory" else RedisBackend(self.base.redis_url)
        return RunStore(backend, self.settings.retention_s)

    def warm_up(self) -> None:
        """The agent has no model of its own; embedded (inproc), the generator and the validator it
        calls run in this process, so they start loading now rather than at the first decision."""
        if self.base.transport == "inproc" and self._client is None:
            # on a thread: inproc_api holds its lock while this warm-up runs, so loading them here
            # directly would wait for ourselves
            def preload() -> None:
                from shared.client import inproc_api

                try:
                    inproc_api("generator")
                    if self.settings.injection_check:
                        inproc_api("validator")
                except Exception:  # noqa: BLE001 - the first decision reports the same error
                    log.warning("preloading the in-process generator/validator failed", exc_info=True)

            threading.Thread(target=preload, name="agent-preload", daemon=True).start()

    def client(self, service: str):
        if self._client is not None:
            return self._client(service)
        with self._lock:
            if service not in self._clients:
                from shared.clients import client_for

                self._clients[service] = client_for(service, self.base.transport)
            return self._clients[service]

    def check(self, **request) -> RunSpec:
        return check_request(self.settings, self.tools, **request)

    # -- the run -------------------------------------------------------------------------------------

    def run(self, spec: RunSpec, request_doc: dict, stopped: Callable[[], bool],
            emit: Callable[[Event], None] = lambda e: None, time_left: float | None = None) -> Event:
        """Run the loop to its end. `time_left` (the caller's deadline, in seconds) caps the time
        budget so that the forced final answer still fits before the caller gives up."""
        s = self.settings
        final_seconds = s.final_answer_seconds
        if time_left is not None:
            final_seconds = min(final_seconds, max(1.0, 0.25 * time_left))
            cap = max(1.0, time_left - final_seconds)
            if cap < spec.budget.max_seconds:
                spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, max_seconds=round(cap, 1)))
        now = iso_utc()
        record = RunRecord(run_id=spec.run_id, request=request_doc, state=dt.RUNNING, created_at=now, updated_at=now,
                           allowed_tools=[*spec.allowed_tools, FINAL_ANSWER], approval_tools=spec.approval_tools)
        self.store.create(record)
        next_poll = [0.0]
        cancelled = [False]

        def is_stopped() -> bool:
            if cancelled[0] or stopped():
                return True
            t = time.monotonic()
            if t >= next_poll[0]:
                next_poll[0] = t + 0.05
                cancelled[0] = self.store.cancel_requested(spec.run_id)
            return cancelled[0]

        def on_event(event: Event) -> None:
            record.put_step(event.step)
            record.state, record.usage, record.updated_at = event.state, event.usage, iso_utc()
            if event.last:
                record.final_answer, record.error = event.final_answer, event.error
            self.store.save(record)
            emit(event)

        loop = AgentLoop(
            spec, self.tools,
            decide=functools.partial(self._decide, spec, is_stopped),
            tool_context=lambda timeout: ToolContext(self.client, spec.collection, s, timeout, is_stopped),
            config=LoopConfig(s.decision_max_tokens, s.min_decision_tokens, s.final_answer_tokens,
                              final_seconds, s.observation_chars, s.approval_timeout_s,
                              choose_then_call=s.choose_then_call, check_support=s.check_answer_support),
            screen=self._screen if s.injection_check else None,
            wait_for_approval=functools.partial(self._wait_for_approval, spec.run_id, is_stopped),
            stopped=is_stopped,
            emit=on_event,
        )
        try:
            return loop.run()
        except BaseException as exc:
            if record.state not in dt.ENDED:
                record.state = dt.FAILED
                record.error = (exc.message if isinstance(exc, GenstackError)
                                else f"internal error: {type(exc).__name__}")
                record.updated_at = iso_utc()
                self.store.save(record)
            raise

    def _decide(self, spec: RunSpec, stopped: Callable[[], bool], messages: list[tuple[str, str]],
                schema: dict | list[str], max_new_tokens: int, model: str, timeout: float) -> Decision:
        from genstack.generator.v1 import generator_pb2 as gpb

        sampling = gpb.SamplingParams(max_new_tokens=max(1, max_new_tokens), temperature=spec.temperature)
        if spec.seed is not None:
            sampling.seed = spec.seed
        request = gpb.GenerateStreamRequest(
            model=model, messages=[gpb.ChatMessage(role=r, content=c) for r, c in messages], sampling=sampling,
            response_format=(gpb.ResponseFormat(choices=gpb.Choices(values=schema)) if isinstance(schema, list)
                             else gpb.ResponseFormat(json_schema=json.dumps(schema))),
        )
        t0 = time.perf_counter()
        stream = self.client("generator").generate_stream(request, timeout=timeout)
        parts: list[str] = []
        final = None
        try:
            for msg in stream:
                if stopped():
                    raise Cancelled("the run was cancelled during a decision")
                parts.append(msg.delta)
                final = msg
        finally:
            if final is None or final.finish_reason == gpb.FINISH_REASON_UNSPECIFIED:
                stream.cancel()
        if final is None:
            raise DeadlineExceeded("the decision produced nothing in time")
        if final.finish_reason == gpb.FINISH_REASON_CANCELLED:
            if stopped():
                raise Cancelled("the run was cancelled during a decision")
            raise DeadlineExceeded("the decision ran out of time")
        return Decision(
            text="".join(parts), complete=final.constraint_status == gpb.CONSTRAINT_STATUS_COMPLETE,
            model=final.model, prompt_tokens=final.stats.prompt_tokens,
            completion_tokens=final.stats.completion_tokens, ms=(time.perf_counter() - t0) * 1000,
        )

    def _screen(self, text: str, timeout: float) -> tuple[bool, str]:
        """(flagged, evidence) from the validator's injection check on a tool's output."""
        from google.protobuf import struct_pb2

        from genstack.validator.v1 import validator_pb2 as vpb

        policy = self.settings.injection_policy
        request = vpb.ValidateRequest(artifact=vpb.Artifact(text=text), policy=policy)
        if not policy:
            params = struct_pb2.Struct()
            params.update({"targets": ["artifact"]})
            request.checks.append(vpb.CheckSpec(name="prompt_injection", params=params))
        try:
            verdict = self.client("validator").validate(request, timeout=min(timeout, 60.0))
        except GenstackError as exc:
            # fail closed: text that could not be checked is still shown only as quoted data
            return True, f"the injection check could not run ({exc.message}); quoted as a precaution"
        if verdict.passed:
            return False, ""
        details = []
        for r in verdict.results:
            if not r.passed:
                evidence = "; ".join(f"{e.text!r}" for e in r.evidence[:3] if e.text)
                details.append(f"{r.name}: {r.message}" + (f" ({evidence})" if evidence else ""))
        return True, " | ".join(details) or "flagged"

    def _wait_for_approval(self, run_id: str, stopped: Callable[[], bool], step: Step,
                           timeout: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            if stopped():
                raise Cancelled("the run was cancelled while waiting for approval")
            verdict = self.store.take_verdict(run_id, step.index)
            if verdict is not None:
                return verdict
            if time.monotonic() >= deadline:
                return "reject", f"no reviewer answered within {timeout:g} s"
            time.sleep(0.05)

    # -- queries and controls ------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord:
        require(bool(run_id), "run_id", "a run id")
        record = self.store.load(run_id)
        if record is None:
            raise NotFound(f"no agent run with id {run_id!r}")
        return record

    def _verdict(self, run_id: str, step: int, verdict: str, text: str) -> str:
        record = self.get(run_id)
        waiting = [s for s in record.steps if s.status == dt.AWAITING]
        if record.state != dt.AWAITING_APPROVAL or not waiting:
            raise FailedPrecondition(f"run {run_id!r} has no step waiting for approval (it is {record.state})")
        if step != waiting[-1].index:
            raise InvalidArgument(f"step {step} is not waiting for approval; step {waiting[-1].index} is",
                                  field="step")
        if not self.store.put_verdict(run_id, step, verdict, text):
            raise FailedPrecondition(f"step {step} of run {run_id!r} already has a verdict")
        return dt.RUNNING

    def approve(self, run_id: str, step: int, comment: str = "") -> str:
        return self._verdict(run_id, step, "approve", comment)

    def reject(self, run_id: str, step: int, reason: str = "") -> str:
        require(len(reason) <= MAX_REASON_CHARS, "reason", f"at most {MAX_REASON_CHARS} characters", len(reason))
        return self._verdict(run_id, step, "reject", reason)

    def cancel(self, run_id: str) -> tuple[str, bool]:
        record = self.get(run_id)
        if record.state in dt.ENDED:
            return record.state, False
        self.store.request_cancel(run_id)
        return record.state, True
