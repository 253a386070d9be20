"""Executes one job: walks its pipeline's steps, applies the retry rule, records every step and
publishes events. The job's deadline bounds each call; a cancel request stops the running step."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format

from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from services.orchestrator.kinds import get_kind
from services.orchestrator.pipelines import Pipeline
from services.orchestrator.steps import STEPS, RunState, dumps
from shared import metrics, tracing
from shared.auth import acting_for_var
from shared.errors import Cancelled, DeadlineExceeded, GenstackError
from shared.logging import job_id_var
from shared.timefmt import iso_utc

log = logging.getLogger(__name__)

_EVENT_STATE = {
    "job.succeeded": opb.JOB_STATE_SUCCEEDED,
    "job.failed": opb.JOB_STATE_FAILED,
    "job.cancelled": opb.JOB_STATE_CANCELLED,
}


@dataclass
class _StepRec:
    output: dict = field(default_factory=dict)
    status: str = "ok"
    service_ms: float = 0.0


class JobRun:
    def __init__(self, core, job: opb.Job, pipeline: Pipeline, deadline_s: float):
        self.core = core
        self.settings = core.settings
        self.store = core.store
        self.job = job
        self.pipeline = pipeline
        self.kind = get_kind(job.kind)
        self.deadline = time.monotonic() + deadline_s
        self._state = RunState()
        #: what the running step sees of the run state (see steps.StepView)
        self.state = None
        self._next_cancel_poll = 0.0
        self._cancelled = False

    # -- helpers for steps ----------------------------------------------------------------------

    def emit(self, type_: str, step: str = "", data: dict | None = None) -> None:
        state = _EVENT_STATE.get(type_, self.job.state)
        self.job.last_event_id = self.store.append_event(self.job.job_id, type_, step, data or {}, state,
                                                         after=self.job.last_event_id)

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now >= self._next_cancel_poll:
            self._next_cancel_poll = now + 0.05
            self._cancelled = self.store.cancel_requested(self.job.job_id)
        return self._cancelled

    def timeout(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the job's deadline passed")
        return remaining

    def client(self, service: str, step: str):
        return self.core.client(service, self.core.transport_for(step))

    @contextlib.contextmanager
    def step(self, name: str, service: str, input_doc: dict, attempt: int = 1):
        transport = self.core.transport_for(name) if service else ""
        rec = _StepRec()
        started, t0 = iso_utc(), time.perf_counter()
        self.emit("step.started", name, {"service": service, "transport": transport, "attempt": attempt})
        record = opb.StepRecord(name=name, service=service, transport=transport, attempt=attempt,
                                started_at=started, input_json=dumps(input_doc))
        try:
            with tracing.span(f"step {name}", {"genstack.step": name, "genstack.service": service,
                                               "genstack.transport": transport, "genstack.attempt": attempt}):
                yield rec
        except BaseException as exc:
            record.status = "cancelled" if isinstance(exc, Cancelled) else "failed"
            record.error = exc.message if isinstance(exc, GenstackError) else f"{type(exc).__name__}: {exc}"
            record.duration_ms = (time.perf_counter() - t0) * 1000
            metrics.STEP_SECONDS.labels(name, record.status).observe(record.duration_ms / 1000)
            self.job.steps.append(record)
            with self.store.batch():
                self.emit("step.failed", name, {"error": record.error, "attempt": attempt})
                self._save()
            raise
        record.status = rec.status
        record.output_json = dumps(rec.output)
        record.service_ms = rec.service_ms
        record.duration_ms = (time.perf_counter() - t0) * 1000
        metrics.STEP_SECONDS.labels(name, record.status).observe(record.duration_ms / 1000)
        self.job.steps.append(record)
        with self.store.batch():
            self.emit("step.finished", name, {"status": rec.status, "duration_ms": record.duration_ms,
                                              "attempt": attempt})
            self._save()

    def _save(self) -> None:
        self.job.updated_at = iso_utc()
        # A snapshot costs microseconds; turning it into the stored JSON happens in the writer.
        self.store.save(self.job.job_id, functools.partial(_record, self.job.SerializeToString()), self.job.state)

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> opb.Job:
        job_id_var.set(self.job.job_id)
        acting_for_var.set(self.job.principal or None)  # the services' calls act for the job's owner
        t0 = time.perf_counter()
        try:
            if self.cancelled():
                raise Cancelled("cancelled before it started")
            self.job.state = opb.JOB_STATE_RUNNING
            with self.store.batch():
                self.emit("job.started")
                self._save()
            verdict_failed = self._walk()
            self.kind.fill_result(self.job, self._state)
            if verdict_failed:
                self.job.state = opb.JOB_STATE_FAILED
                self.job.error = "validation failed after all retries: " + (self._state.get("feedback") or "")
                self.job.error_code = "FAILED_PRECONDITION"
                ending = "job.failed"
            else:
                self.job.state = opb.JOB_STATE_SUCCEEDED
                ending = "job.succeeded"
        except Cancelled as exc:
            self.job.state, self.job.error, self.job.error_code = opb.JOB_STATE_CANCELLED, exc.message, "CANCELLED"
            ending = "job.cancelled"
        except GenstackError as exc:
            self.job.state, self.job.error, self.job.error_code = opb.JOB_STATE_FAILED, exc.message, exc.code.name
            ending = "job.failed"
        except Exception as exc:  # noqa: BLE001 - recorded as rigorously as a success
            log.exception("job failed")
            self.job.state, self.job.error = opb.JOB_STATE_FAILED, f"internal error: {type(exc).__name__}"
            self.job.error_code = grpc.StatusCode.INTERNAL.name
            ending = "job.failed"
        self.job.duration_ms = (time.perf_counter() - t0) * 1000
        with self.store.batch():  # a watcher that sees the ending finds the final record
            self.emit(ending, "", {"state": opb.JobState.Name(self.job.state), "error": self.job.error})
            self._save()
            self.store.finish(self.job.job_id)
        self.store.flush(self.job.job_id)
        return self.job

    def _walk(self) -> bool:
        """Run the steps; True when the retry rule's step still fails after all retries."""
        steps = self.pipeline.steps
        rule = self.pipeline.retry
        max_retries = rule.max_retries if rule else 0
        override = self.kind.max_retries(getattr(self.job.request, self.job.kind))
        if rule and override is not None:
            max_retries = override
        retries, i = 0, 0
        while i < len(steps):
            if self.cancelled():
                raise Cancelled("job cancelled")
            self.timeout()  # raises once the deadline has passed
            s = steps[i]
            spec = STEPS[s.name]
            self.state = self._state.view(spec)
            outcome = spec.fn(self, dict(s.params))
            if outcome == "failed" and rule and s.name == rule.on:
                if retries >= max_retries:
                    return True
                retries += 1
                self.emit("job.retry", s.name, {"retry": retries, "feedback": self._state.get("feedback", "")})
                metrics.RETRIES.labels(self.job.kind, s.name).inc()
                i = next(k for k, st in enumerate(steps) if st.name == rule.restart_at)
                continue
            i += 1
        return False


def _record(snapshot: bytes) -> dict:
    return json_format.MessageToDict(opb.Job.FromString(snapshot))
