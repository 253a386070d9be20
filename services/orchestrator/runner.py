"""Executes one job: walks its pipeline's steps, applies the retry rule, records every step and
publishes events. The job's deadline bounds each call; a cancel request stops the running step.

Durability: after each step the run state it produced is stored as the job's checkpoint, so a job
whose orchestrator died resumes at the step after the last completed one (that step may then run
a second time: at-least-once per step; a step declared `rerun_safe=False` is not rerun, the job
fails saying so). Calls to services are retried on transient errors (UNAVAILABLE, and a single
call's DEADLINE_EXCEEDED while the job's deadline allows) with exponential backoff inside the
job's deadline; each retry is recorded on the step.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import importlib
import logging
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc
import redis
from google.protobuf import descriptor_pool, json_format, message, message_factory

from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from services.orchestrator.kinds import get_kind
from services.orchestrator.pipelines import Pipeline
from services.orchestrator.steps import STEPS, RunState, dumps
from shared import metrics, tracing
from shared.auth import acting_for_var
from shared.client import Stream
from shared.errors import Cancelled, DeadlineExceeded, GenstackError
from shared.logging import job_id_var
from shared.timefmt import iso_utc

log = logging.getLogger(__name__)

_EVENT_STATE = {
    "job.succeeded": opb.JOB_STATE_SUCCEEDED,
    "job.failed": opb.JOB_STATE_FAILED,
    "job.cancelled": opb.JOB_STATE_CANCELLED,
}


class LeaseLost(Exception):  # noqa: N818 - not an error of the job: another orchestrator has it now
    """This process no longer holds the job's lease (it stalled past the lease); stop quietly."""


@dataclass
class _StepRec:
    output: dict = field(default_factory=dict)
    status: str = "ok"
    service_ms: float = 0.0
    #: transient errors retried by the step's calls, in order
    retries: list[str] = field(default_factory=list)


class JobRun:
    def __init__(self, core, job: opb.Job, pipeline: Pipeline, deadline_s: float, resume: bool = False):
        self.core = core
        self.settings = core.settings
        self.store = core.store
        self.job = job
        self.pipeline = pipeline
        self.kind = get_kind(job.kind)
        self.deadline = time.monotonic() + deadline_s
        self.resume = resume
        self._state = RunState()
        #: what the running step sees of the run state (see steps.StepView)
        self.state = None
        #: set by the core's heartbeat when another orchestrator took the job over
        self.lost = threading.Event()
        #: set by the core's cancel watcher (or the first look at the store) once a cancel was asked for
        self.cancel_seen = threading.Event()
        #: whether the store was asked about a cancel at the start (or need not be)
        self.cancel_checked = False
        #: whether the run gave its lease up with its final writes
        self.released = False
        #: calls a step started in the background for a later step, by name (that step waits for its own)
        self.side: dict[str, Future] = {}
        #: how many times the retry rule may send the pipeline back, and how many more times it still may
        #: (a step can act on its last chance)
        self.retries_allowed = self.retries_left = 0
        self._rec: _StepRec | None = None

    # -- helpers for steps ----------------------------------------------------------------------

    def emit(self, type_: str, step: str = "", data: dict | None = None) -> None:
        state = _EVENT_STATE.get(type_, self.job.state)
        self.job.last_event_id = self.store.append_event(self.job.job_id, type_, step, data or {}, state,
                                                         after=self.job.last_event_id)

    def cancelled(self) -> bool:
        """Whether a cancel was asked for. The store is asked once when the run starts; after that the
        core's cancel watcher asks for every running job at once in the background and sets
        `cancel_seen`, so a step boundary costs no round trip to the store."""
        if self.lost.is_set():
            raise LeaseLost(self.job.job_id)
        if self.cancel_seen.is_set():
            return True
        if not self.cancel_checked:
            self.cancel_checked = True
            try:
                if self.store.cancel_requested(self.job.job_id):
                    self.cancel_seen.set()
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # the store is down: the watcher asks again, the run keeps working
        return self.cancel_seen.is_set()

    def timeout(self) -> float:
        if self.lost.is_set():
            raise LeaseLost(self.job.job_id)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the job's deadline passed")
        return remaining

    def client(self, service: str, step: str):
        """The service's client for `step`, retrying transient errors inside the job's deadline."""
        return _RetryingClient(self.core.client(service, self.core.transport_for(step)), self, step)

    def note_retry(self, step: str, method: str, exc: GenstackError, attempt: int, wait_s: float) -> None:
        text = f"{method} attempt {attempt}: {exc.code.name}: {exc.message}"[:300]
        metrics.CALL_RETRIES.labels(step, exc.code.name).inc()
        if self._rec is not None:
            self._rec.retries.append(text)
        self.emit("step.retry", step, {"method": method, "attempt": attempt, "code": exc.code.name,
                                       "error": exc.message[:300], "wait_s": round(wait_s, 3)})

    @contextlib.contextmanager
    def step(self, name: str, service: str, input_doc: dict, attempt: int = 1):
        transport = self.core.transport_for(name) if service else ""
        rec = self._rec = _StepRec()
        started, t0 = iso_utc(), time.perf_counter()
        self.emit("step.started", name, {"service": service, "transport": transport, "attempt": attempt})
        record = opb.StepRecord(name=name, service=service, transport=transport, attempt=attempt,
                                started_at=started, input_json=self._bounded(dumps(input_doc)))
        try:
            with tracing.span(f"step {name}", {"genstack.step": name, "genstack.service": service,
                                               "genstack.transport": transport, "genstack.attempt": attempt}):
                yield rec
        except BaseException as exc:
            self._rec = None
            if isinstance(exc, LeaseLost):
                raise
            record.status = "cancelled" if isinstance(exc, Cancelled) else "failed"
            record.error = exc.message if isinstance(exc, GenstackError) else f"{type(exc).__name__}: {exc}"
            record.duration_ms = (time.perf_counter() - t0) * 1000
            metrics.STEP_SECONDS.labels(name, record.status).observe(record.duration_ms / 1000)
            record.call_retries = len(rec.retries)
            record.retry_errors.extend(rec.retries[-10:])
            self.job.steps.append(record)
            with self.store.batch():
                self.emit("step.failed", name, {"error": record.error, "attempt": attempt})
                self._save()
            raise
        self._rec = None
        record.status = rec.status
        record.output_json = self._bounded(dumps(rec.output))
        record.service_ms = rec.service_ms
        record.call_retries = len(rec.retries)
        record.retry_errors.extend(rec.retries[-10:])
        record.duration_ms = (time.perf_counter() - t0) * 1000
        metrics.STEP_SECONDS.labels(name, record.status).observe(record.duration_ms / 1000)
        self.job.steps.append(record)
        with self.store.batch():
            self.emit("step.finished", name, {"status": rec.status, "duration_ms": record.duration_ms,
                                              "attempt": attempt})
            self._save()

    def _bounded(self, text: str) -> str:
        """Step JSON kept in the record: a large one (a 10 MB prompt) is summarised, so that a record
        stays small enough for GetJob and ListJobs (the full request is kept once, see core.create)."""
        limit = self.settings.max_step_json_chars
        if len(text) <= limit:
            return text
        return dumps({"truncated": True, "chars": len(text), "head": text[: min(2000, limit // 2)]})

    def _save(self) -> None:
        self.job.updated_at = iso_utc()
        # A snapshot costs microseconds; turning it into the stored JSON happens in the writer.
        if self.job.HasField("request_ref"):  # the full request is in an artifact: keep the record small
            full = opb.SubmitJobRequest()
            full.CopyFrom(self.job.request)
            strip_large(self.job.request)
            snapshot = self.job.SerializeToString()
            self.job.request.CopyFrom(full)
        else:
            snapshot = self.job.SerializeToString()
        self.store.save(self.job.job_id, functools.partial(_record, snapshot), self.job.state)

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> opb.Job:
        job_id_var.set(self.job.job_id)
        acting_for_var.set(self.job.principal or None)  # the services' calls act for the job's owner
        t0 = time.perf_counter()
        start_at, retries = 0, 0
        try:
            if self.cancelled():
                raise Cancelled("cancelled before it started")
            if self.resume:
                start_at, retries = self._restore()
            else:
                self.job.state = opb.JOB_STATE_RUNNING
                with self.store.batch():
                    self.emit("job.started")
                    self._save()
            verdict_failed = self._walk(start_at, retries)
            self.kind.fill_result(self.job, self._state)
            if verdict_failed:
                self.job.state = opb.JOB_STATE_FAILED
                self.job.error = "validation failed after all retries: " + (self._state.get("feedback") or "")
                self.job.error_code = "FAILED_PRECONDITION"
                ending = "job.failed"
            else:
                self.job.state = opb.JOB_STATE_SUCCEEDED
                ending = "job.succeeded"
        except LeaseLost:
            log.warning("lost the job's lease to another orchestrator; stopping without writing")
            return self.job
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
        self.job.duration_ms += (time.perf_counter() - t0) * 1000
        if self.lost.is_set() or not self.core.confirm_lease(self.job.job_id):
            log.warning("another orchestrator has the job now; its ending is theirs to write")
            return self.job
        with self.store.batch():  # a watcher that sees the ending finds the final record
            self.emit(ending, "", {"state": opb.JobState.Name(self.job.state), "error": self.job.error})
            self._save()
            self.store.finish(self.job.job_id)
            self.store.release_later(self.job.job_id, self.core.owner)
        self.released = True
        self.store.flush(self.job.job_id)
        return self.job

    # -- checkpoints and resuming ------------------------------------------------------------------

    def _checkpoint(self, next_step: int, retries: int) -> None:
        """Store what the completed steps produced, so that a resumed run starts at `next_step`."""
        try:
            slots = {name: _encode(value) for name, value in self._state._values.items()}
        except TypeError as exc:
            doc = {"next_step": next_step, "retries": retries, "unsupported": str(exc)}
        else:
            doc = {"next_step": next_step, "retries": retries, "slots": slots, "steps": len(self.job.steps)}
        self.store.save_checkpoint(self.job.job_id, doc)

    def _restore(self) -> tuple[int, int]:
        """Pick a job up where its last orchestrator left it: (step index to run next, retries so far).
        Raises FailedPrecondition-like GenstackErrors (the job then fails with that reason)."""
        from shared.errors import FailedPrecondition

        self.job.last_event_id = self.store.last_event_id(self.job.job_id) or self.job.last_event_id
        doc = self.store.load_checkpoint(self.job.job_id) or {"next_step": 0, "retries": 0, "slots": {}}
        steps = self.pipeline.steps
        next_step = int(doc.get("next_step", 0))
        if "unsupported" in doc:
            raise FailedPrecondition(f"its orchestrator stopped and the job cannot be resumed: the state after step "
                                     f"{next_step} could not be stored ({doc['unsupported']})")
        for name, value in (doc.get("slots") or {}).items():
            self._state.set(name, _decode(value))
        if next_step < len(steps):
            spec = STEPS[steps[next_step].name]
            if not spec.rerun_safe:
                raise FailedPrecondition(f"its orchestrator stopped during step {spec.name!r}, which is not safe to "
                                         "run twice; submit the job again")
        previous = self.job.state
        self.job.state = opb.JOB_STATE_RUNNING
        with self.store.batch():
            self.emit("job.resumed", steps[next_step].name if next_step < len(steps) else "",
                      {"from_step": next_step, "owner": self.core.owner,
                       "previous_state": opb.JobState.Name(previous)})
            self._save()
        return next_step, int(doc.get("retries", 0))

    def _walk(self, start_at: int = 0, retries: int = 0) -> bool:
        """Run the steps; True when the retry rule's step still fails after all retries."""
        steps = self.pipeline.steps
        rule = self.pipeline.retry
        max_retries = rule.max_retries if rule else 0
        override = self.kind.max_retries(getattr(self.job.request, self.job.kind))
        if rule and override is not None:
            max_retries = override
        i = start_at
        while i < len(steps):
            if self.cancelled():
                raise Cancelled("job cancelled")
            self.timeout()  # raises once the deadline has passed
            s = steps[i]
            spec = STEPS[s.name]
            self.state = self._state.view(spec)
            self.retries_allowed = max_retries if rule else 0
            self.retries_left = self.retries_allowed - retries
            outcome = spec.fn(self, dict(s.params))
            if outcome == "failed" and rule and s.name == rule.on:
                if retries >= max_retries:
                    return True
                retries += 1
                self.emit("job.retry", s.name, {"retry": retries, "feedback": self._state.get("feedback", "")})
                metrics.RETRIES.labels(self.job.kind, s.name).inc()
                i = next(k for k, st in enumerate(steps) if st.name == rule.restart_at)
                self._checkpoint(i, retries)
                continue
            i += 1
            if i < len(steps) or not spec.rerun_safe:
                # (after the last step the ending follows at once; a resumed job would just rerun it)
                self._checkpoint(i, retries)
        return False


# -- retries of transient errors ---------------------------------------------------------------------

_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class _RetryingClient:
    """Wraps a typed service client: a call that fails with a transient error is made again after
    an exponential, jittered backoff, while the job's deadline leaves time for it; a stream is
    retried only until its first message arrived (a stream cut later is not replayed)."""

    def __init__(self, inner, run: JobRun, step: str):
        self._inner, self._run, self._step = inner, run, step

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_") or name in ("close",):
            return attr
        return functools.partial(self._call, name, attr)

    def _retryable(self, exc: GenstackError, started: float, timeout: float | None) -> bool:
        if exc.code not in _TRANSIENT:
            return False
        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # only a single call's own deadline, not the job's: the job must have time left
            return timeout is not None and self._run.deadline - time.monotonic() > 0.5
        return True

    def _call(self, name: str, fn, *args, **kwargs):
        settings = self._run.settings
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            if "timeout" in kwargs and kwargs["timeout"] is not None:
                kwargs["timeout"] = min(kwargs["timeout"], self._run.timeout())
            try:
                result = fn(*args, **kwargs)
                if isinstance(result, Stream):
                    return self._stream(result, name, fn, args, kwargs, attempt)
                return result
            except GenstackError as exc:
                self._backoff_or_raise(exc, name, attempt, started, kwargs.get("timeout"), settings)

    def _backoff_or_raise(self, exc, name, attempt, started, timeout, settings) -> None:
        if attempt > settings.call_retries or not self._retryable(exc, started, timeout):
            raise exc
        wait = min(settings.retry_max_backoff_s, settings.retry_initial_backoff_s * 2 ** (attempt - 1))
        wait *= 0.5 + random.random() / 2  # jitter: replicas that failed together do not retry together
        if self._run.deadline - time.monotonic() <= wait + 0.2:
            raise exc
        self._run.note_retry(self._step, name, exc, attempt, wait)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if self._run.cancelled():
                raise Cancelled("job cancelled while waiting to retry")
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def _stream(self, first: Stream, name, fn, args, kwargs, attempt: int) -> Stream:
        run, settings = self._run, self._run.settings
        current = {"stream": first}

        def iterate():
            nonlocal attempt
            received = False
            while True:
                started = time.monotonic()
                try:
                    for item in current["stream"]:
                        received = True
                        yield item
                    return
                except GenstackError as exc:
                    if received:
                        raise
                    self._backoff_or_raise(exc, name, attempt, started, kwargs.get("timeout"), settings)
                attempt += 1
                if kwargs.get("timeout") is not None:
                    kwargs["timeout"] = run.timeout()
                current["stream"] = fn(*args, **kwargs)

        return Stream(iterate(), lambda: current["stream"].cancel())


# -- run-state values in a checkpoint -----------------------------------------------------------------

def _encode(value):
    """A run-state value as JSON: protobuf messages, dataclasses from services/, tuples, lists, dicts."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, message.Message):
        return {"$pb": value.DESCRIPTOR.full_name, "b64": base64.b64encode(value.SerializeToString()).decode()}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"$dict": {str(k): _encode(v) for k, v in value.items()}}
    cls = type(value)
    if dataclasses.is_dataclass(value) and cls.__module__.startswith("services."):
        return {"$dc": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    raise TypeError(f"a {cls.__name__} cannot be stored in a checkpoint")


def _decode(doc):
    if isinstance(doc, list):
        return [_decode(v) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if "$pb" in doc:
        cls = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(doc["$pb"]))
        return cls.FromString(base64.b64decode(doc["b64"]))
    if "$tuple" in doc:
        return tuple(_decode(v) for v in doc["$tuple"])
    if "$dict" in doc:
        return {k: _decode(v) for k, v in doc["$dict"].items()}
    if "$dc" in doc:
        module, _, name = doc["$dc"].partition(":")
        if not module.startswith("services."):
            raise TypeError(f"checkpoint names a class outside services/: {doc['$dc']!r}")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: _decode(v) for k, v in doc["fields"].items()})
    raise TypeError("unknown checkpoint value")


#: text and bytes fields longer than this are left out of a record whose request is stored as an artifact
_STRIP_CHARS = 1024


def strip_large(msg) -> None:
    """Empty every text or bytes field (at any depth) longer than _STRIP_CHARS."""
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            if fd.is_repeated:
                if fd.message_type.GetOptions().map_entry:
                    if fd.message_type.fields_by_name["value"].type == fd.TYPE_MESSAGE:
                        for v in value.values():
                            strip_large(v)
                    else:
                        for k in [k for k, v in value.items() if isinstance(v, str | bytes) and len(v) > _STRIP_CHARS]:
                            value[k] = type(value[k])()
                    continue
                for item in value:
                    strip_large(item)
            else:
                strip_large(value)
        elif fd.type in (fd.TYPE_STRING, fd.TYPE_BYTES):
            if fd.is_repeated:
                for i, v in enumerate(value):
                    if len(v) > _STRIP_CHARS:
                        value[i] = type(v)()
            elif len(value) > _STRIP_CHARS:
                msg.ClearField(fd.name)


def _record(snapshot: bytes) -> dict:
    return json_format.MessageToDict(opb.Job.FromString(snapshot))
