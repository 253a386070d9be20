"""Orchestrator core: validates submissions, stores jobs, runs them on a thread pool, serves
records and events.

Every job this process runs or holds queued carries a lease in the store, renewed by a heartbeat
thread; at start-up and every `recovery_interval_s` the core claims jobs whose lease lapsed (their
orchestrator died) and resumes them (see runner.py), so no accepted job is lost or stuck.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import redis
from google.protobuf import json_format

from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from services.orchestrator.kinds import load_kinds
from services.orchestrator.pipelines import load_pipelines, pick
from services.orchestrator.runner import JobRun, strip_large
from services.orchestrator.screening import VerdictCache
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import FIRST, JobStore, MemoryJobStore, RedisJobStore, check_event_id, iter_events
from shared import metrics, tracing
from shared.auth import identity_var
from shared.clients import client_for
from shared.config import Settings, get_settings
from shared.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    GenstackError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    require,
)
from shared.timefmt import iso_utc, parse_iso

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 128
MAX_JOB_ID_CHARS = 128
#: largest ListJobs offset a page token may carry
MAX_OFFSET = 10**9
FINAL_STATES = (opb.JOB_STATE_SUCCEEDED, opb.JOB_STATE_FAILED, opb.JOB_STATE_CANCELLED)


#: how often the cancel watcher asks the store about the running jobs (a cancel's latency)
CANCEL_POLL_S = 0.05


def _lease_clock() -> float:
    """Seconds on a clock that keeps counting while the machine is suspended (CLOCK_BOOTTIME where
    there is one), so that a process frozen past its lease sees that it was."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


@dataclass
class _Held:
    """A job whose lease this process holds: queued in the pool (future) or running (run)."""

    future: Future | None = None
    run: JobRun | None = None
    #: time.monotonic() before which the lease is surely still ours: measured from when the last
    #: successful create or renewal was sent, so Redis's own expiry comes later (0: unknown)
    lease_until: float = 0.0
    #: time.monotonic() when this process created the job (0: it came from the store)
    created: float = 0.0


def _tenant_key(principal: str, key: str) -> str:
    """Idempotency keys are per tenant: the same key from two principals makes two jobs."""
    return f"{principal}\x1f{key}" if key and principal else key


class OrchestratorCore:
    def __init__(self, settings: OrchestratorSettings | None = None, base: Settings | None = None,
                 store: JobStore | None = None):
        self.settings = settings or OrchestratorSettings()
        self.base = base or get_settings()
        self.kinds = load_kinds()
        self.pipelines = load_pipelines(self.settings.pipelines_file)
        self.store = store or self._make_store()
        self._pool = ThreadPoolExecutor(self.settings.max_concurrent_jobs, thread_name_prefix="job")
        # calls a step starts for a later step of its job and does not wait for (see JobRun.side)
        self._side = ThreadPoolExecutor(2, thread_name_prefix="side")
        self._clients: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        #: who holds this process's leases
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held: dict[str, _Held] = {}
        self._stopping = threading.Event()
        self._maintainer: threading.Thread | None = None
        self._recovering = False
        self._cancel_watcher: threading.Thread | None = None
        self._runs_started = threading.Event()
        #: injection verdicts on chunk texts (see screening.py)
        self.screen_cache = VerdictCache(self.settings.screen_cache_s, self.settings.screen_cache_entries)

    def _make_store(self) -> JobStore:
        kind = self.settings.store
        if kind == "auto":
            transports = {self.base.transport, *self.settings.step_transports.values()}
            # embedded: on disk, so that `genstack jobs ...` can look at a job after its process exited
            kind = "sqlite" if transports == {"inproc"} else "redis"
        if kind == "memory":
            return MemoryJobStore()
        if kind == "sqlite":
            from services.orchestrator.store import SqliteJobStore

            return SqliteJobStore(self.base.data_path / "orchestrator" / "jobs.sqlite3", self.settings.retention_s)
        return RedisJobStore(self.base.redis_url, self.settings.retention_s, self.settings.store_outage_s)

    def warm_up(self) -> None:
        from services.orchestrator.context import count_tokens

        count_tokens("warm up the tokenizer")
        if self.settings.recover:
            self._recovering = True
            self._start_maintainer()
            try:
                self.recover()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("start-up recovery skipped, the job store is unreachable: %s", exc)

    def close(self) -> None:
        """Stop taking jobs: queued ones are handed back at once (their leases released, so any
        orchestrator resumes them), running ones get `drain_s` to finish while their leases are
        still renewed; a job still running after that is resumed elsewhere once its lease lapses."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            held = list(self._held.items())
        for job_id, h in held:
            if h.run is None and h.future is not None and h.future.cancel():
                self._drop(job_id)
                log.info("queued job handed back on shutdown", extra={"fields": {"job_id": job_id}})
        end = time.monotonic() + self.settings.drain_s
        while time.monotonic() < end:
            with self._lock:
                if not self._held:
                    break
            time.sleep(0.05)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=False, cancel_futures=True)

    # -- leases, heartbeat, recovery -------------------------------------------------------------

    def _start_maintainer(self) -> None:
        with self._lock:
            if self._maintainer is None or not self._maintainer.is_alive():
                self._maintainer = threading.Thread(target=self._maintain, name="job-leases", daemon=True)
                self._maintainer.start()

    def _start_cancel_watcher(self) -> None:
        with self._lock:
            if self._cancel_watcher is None or not self._cancel_watcher.is_alive():
                self._cancel_watcher = threading.Thread(target=self._watch_cancels, name="job-cancels", daemon=True)
                self._cancel_watcher.start()
        self._runs_started.set()

    def _watch_cancels(self) -> None:
        """Every CANCEL_POLL_S, ask the store about all the jobs running here in one call and flag the
        cancelled ones, so that a running job sees a cancel from any replica within one period without
        a round trip of its own at each step boundary (that polling was ~3 ms of every answer job)."""
        while not (self._stopping.is_set() and not self._held):
            self._runs_started.clear()  # before looking, so a run that starts after the look wakes the wait
            with self._lock:
                runs = {job_id: h.run for job_id, h in self._held.items()
                        if h.run is not None and not h.run.cancel_seen.is_set()}
            if not runs:
                self._runs_started.wait(1.0)
                continue
            try:
                for job_id in self.store.cancelled_among(list(runs)):
                    runs[job_id].cancel_seen.set()
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(1.0)  # the store is down: ask again later; the runs keep working
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("cancel watcher failed")
                time.sleep(1.0)
            time.sleep(CANCEL_POLL_S)

    def _hold(self, job_id: str, held: _Held) -> None:
        with self._lock:
            self._held[job_id] = held
        self._start_maintainer()

    def _drop(self, job_id: str, release: bool = True) -> None:
        """Forget a job and give its lease up (unless its run already did)."""
        with self._lock:
            self._held.pop(job_id, None)
        if not release:
            return
        try:
            self.store.release(job_id, self.owner)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # it lapses by itself
            log.warning("could not release the lease of job %s: %s", job_id, exc)

    def _maintain(self) -> None:
        period = self.settings.lease_s / 3
        next_recovery = time.monotonic() + self.settings.recovery_interval_s
        while True:
            time.sleep(min(period, 1.0) if self._stopping.is_set() else period)
            with self._lock:
                if self._stopping.is_set() and not self._held:
                    return
            try:
                self._heartbeat()
                if self._recovering and not self._stopping.is_set() and time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + self.settings.recovery_interval_s
                    self.recover()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("job store unreachable; leases not renewed this round: %s", exc)
            except Exception:  # noqa: BLE001 - the heartbeat must outlive any one failure
                log.exception("job lease maintenance failed")

    def _heartbeat(self) -> None:
        with self._lock:
            held = dict(self._held)
        if not held:
            return
        sent = _lease_clock()
        lost = self.store.renew(list(held), self.owner, self.settings.lease_s)
        for job_id, h in held.items():
            if job_id not in lost:
                h.lease_until = sent + self.settings.lease_s
        for job_id in lost:
            h = held[job_id]
            log.warning("another orchestrator took job %s over", job_id)
            if h.run is not None:
                h.run.lost.set()
            elif h.future is not None:
                h.future.cancel()
            with self._lock:
                self._held.pop(job_id, None)
        # a cancel asked of another replica reaches the jobs queued here (one round trip for all)
        queued = [job_id for job_id, h in held.items() if h.run is None and h.future is not None]
        for job_id in self.store.cancelled_among(queued) if queued else ():
            if held[job_id].future.cancel():
                self._end_unrun(job_id, opb.JOB_STATE_CANCELLED, "cancelled before it started", "CANCELLED")

    def confirm_lease(self, job_id: str) -> bool:
        """Whether this process still holds the job (asked right before a run writes its ending, so
        that a stalled process that lost the job does not end it a second time)."""
        with self._lock:
            held = self._held.get(job_id)
        # Nobody can take a lease before it lapses: while the last renewal is recent (a third of
        # the lease to spare), the answer is known without a round trip to the store.
        if held is not None and _lease_clock() < held.lease_until - self.settings.lease_s / 3:
            return True
        end = time.monotonic() + self.settings.store_outage_s
        while True:
            try:
                holder = self.store.lease_owner(job_id)
                if holder is not None:
                    return holder == self.owner
                # lapsed (a store outage longer than the lease): ours again unless someone ended it
                record = self.store.load(job_id) or {}
                final = record.get("state") in [opb.JobState.Name(s) for s in FINAL_STATES]
                return not final and self.store.claim(job_id, self.owner, self.settings.lease_s)
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() >= end:
                    return True  # the writes that follow retry (and report) by themselves
                time.sleep(0.2)

    def recover(self) -> list[str]:
        """Claim unfinished jobs whose lease lapsed and resume (or end) them; returns their ids."""
        taken = []
        for job_id in self.store.orphans():
            if self._stopping.is_set():
                break
            with self._lock:
                if job_id in self._held:
                    continue
            if not self.store.claim(job_id, self.owner, self.settings.lease_s):
                continue  # another orchestrator was quicker
            record = self.store.load(job_id)
            if record is None:
                self.store.finish(job_id)
                self._drop(job_id)
                continue
            try:
                job = json_format.ParseDict(record, opb.Job(), ignore_unknown_fields=True)
            except json_format.ParseError as exc:
                log.error("job %s has an unreadable record; ending it: %s", job_id, exc)
                self._end_unrun(job_id, opb.JOB_STATE_FAILED, "its stored record is unreadable", "INTERNAL")
                continue
            if not job.job_id:  # not a record this orchestrator wrote
                self.store.finish(job_id)
                self._drop(job_id)
                continue
            if job.state in FINAL_STATES:  # its last writes made it, only the open-set entry did not
                self.store.finish(job_id)
                self._drop(job_id)
                continue
            log.info("recovering job", extra={"fields": {"job_id": job_id, "state": opb.JobState.Name(job.state)}})
            taken.append(job_id)
            if self.store.cancel_requested(job_id):
                self._end_unrun(job_id, opb.JOB_STATE_CANCELLED, "cancelled while no orchestrator ran it", "CANCELLED")
                continue
            self._enqueue(job, resume=job.state == opb.JOB_STATE_RUNNING)
        return taken

    def _end_unrun(self, job_id: str, state: int, error: str, code: str) -> opb.Job | None:
        """End a job that nobody runs (this process holds its lease), e.g. cancelled while queued."""
        self.store.flush(job_id)  # its job.queued may still be queued here: the ending must follow it
        record = self.store.load(job_id)
        if record is None:
            self._drop(job_id)
            return None
        try:
            job = json_format.ParseDict(record, opb.Job(), ignore_unknown_fields=True)
        except json_format.ParseError:
            job = opb.Job(job_id=job_id)
        if job.state not in FINAL_STATES:
            job.state, job.error, job.error_code, job.updated_at = state, error, code, iso_utc()
            ending = {opb.JOB_STATE_CANCELLED: "job.cancelled", opb.JOB_STATE_FAILED: "job.failed"}[state]
            with self.store.batch():
                job.last_event_id = self.store.append_event(
                    job_id, ending, "", {"state": opb.JobState.Name(state), "error": error}, state,
                    after=self.store.last_event_id(job_id))
                self.store.save(job_id, json_format.MessageToDict(job), state)
                self.store.finish(job_id)
            self.store.flush(job_id)
        self._drop(job_id)
        return job

    # -- clients ---------------------------------------------------------------------------------

    def in_background(self, fn, *args) -> Future:
        return self._side.submit(fn, *args)

    def transport_for(self, step: str) -> str:
        return self.settings.step_transports.get(step, self.base.transport)

    def client(self, service: str, transport: str):
        key = (service, transport)
        with self._lock:
            if key not in self._clients:
                # steps read each stream through as it arrives (see ServiceClient)
                self._clients[key] = client_for(service, transport, read_streams_at_once=True)
            return self._clients[key]

    # -- submission ------------------------------------------------------------------------------

    def check(self, request: opb.SubmitJobRequest) -> tuple[str, str, float]:
        kind = request.WhichOneof("input")
        if kind is None:
            raise InvalidArgument(f"one of {', '.join(self.kinds)} is required", field="input")
        size = request.ByteSize()
        if size > self.settings.max_request_bytes:
            raise ResourceExhausted(f"{kind}: the request is {size} bytes; the limit is "
                                    f"{self.settings.max_request_bytes} (GENSTACK_ORCHESTRATOR_MAX_REQUEST_BYTES)")
        require(len(request.idempotency_key) <= MAX_KEY_CHARS, "idempotency_key",
                f"at most {MAX_KEY_CHARS} characters", len(request.idempotency_key))
        require(0 <= request.deadline_s <= self.settings.max_deadline_s, "deadline_s",
                f"between 0 and {self.settings.max_deadline_s:g} seconds (0 = default)", request.deadline_s)
        if kind not in self.kinds:  # an input the proto has but this orchestrator does not run
            raise InvalidArgument(f"this orchestrator does not run {kind!r} jobs; it runs {', '.join(self.kinds)}",
                                  field="input")
        self.kinds[kind].validate(getattr(request, kind), self.settings)
        name, _ = pick(self.pipelines, request.pipeline, kind)
        return kind, name, request.deadline_s or self.settings.default_deadline_s

    def create(self, request: opb.SubmitJobRequest) -> tuple[opb.Job, bool]:
        """Store a new job, holding its lease (the caller runs or enqueues it); with an idempotency
        key already used, (the existing job, False)."""
        kind, pipeline, _ = self.check(request)
        job = opb.Job(job_id=uuid.uuid4().hex, kind=kind, state=opb.JOB_STATE_QUEUED, pipeline=pipeline,
                      created_at=iso_utc(), updated_at=iso_utc(), request=request)
        job.principal = identity_var.get().principal or ""  # its tenant; empty when authentication is off
        job.trace_parent = tracing.job_origin()  # the job's span continues the submitter's trace
        job.trace_id = tracing.trace_id_of(job.trace_parent)
        record = job
        if request.ByteSize() > self.settings.record_inline_bytes:
            # stored once, as an artifact; the record keeps the request without its large fields
            from shared.artifacts import get_store

            ref = get_store().put(request.SerializeToString(), "application/x-protobuf", kind="job-requests")
            record = opb.Job()
            record.CopyFrom(job)
            strip_large(record.request)
            record.request_ref.CopyFrom(ref.to_proto())
            job.request_ref.CopyFrom(record.request_ref)
        sent = _lease_clock()
        job_id, created = self.store.create(job.job_id, json_format.MessageToDict(record), kind, job.state,
                                            _tenant_key(job.principal, request.idempotency_key),
                                            owner=self.owner, lease_s=self.settings.lease_s)
        if not created:
            return self.get(job_id), False
        self._hold(job_id, _Held(lease_until=sent + self.settings.lease_s, created=sent))
        metrics.JOBS.labels(kind, "queued").inc()
        # written behind: this process runs the job, and its later events follow in the same queue
        job.last_event_id = self.store.append_event(job_id, "job.queued", "", {"kind": kind, "pipeline": pipeline},
                                                    job.state, after=FIRST)
        return job, True

    def _full_request(self, job: opb.Job) -> None:
        """Put the complete request back into a job read from a record (see create)."""
        if job.HasField("request_ref"):
            from shared.artifacts import get_store

            job.request.ParseFromString(get_store().get(job.request_ref.uri))

    def _deadline_left(self, job: opb.Job) -> float:
        _, _, deadline = self.check(job.request)
        created = parse_iso(job.created_at) if job.created_at \
            else time.time()
        return deadline - (time.time() - created)

    def run(self, job: opb.Job, resume: bool = False) -> opb.Job:
        """Run a job this process holds the lease of, in the calling thread, to its end."""
        with self._lock:
            held = self._held.setdefault(job.job_id, _Held())
        try:
            try:
                self._full_request(job)
                left = self._deadline_left(job) if resume else self.check(job.request)[2]
                pipeline = self.pipelines.get(job.pipeline)
                if pipeline is None:
                    raise FailedPrecondition(f"its pipeline {job.pipeline!r} is not defined here")
            except GenstackError as exc:  # a stored job this orchestrator cannot run (older or other config)
                return self._end_unrun(job.job_id, opb.JOB_STATE_FAILED, f"cannot run the stored job: {exc.message}",
                                       exc.code.name) or job
            run = held.run = JobRun(self, job, pipeline, max(left, 0.001), resume=resume)
            if not resume and held.created and _lease_clock() - held.created < CANCEL_POLL_S:
                # created here a moment ago: a cancel asked since then is the cancel watcher's to see
                run.cancel_checked = True
            self._start_maintainer()
            self._start_cancel_watcher()
            if resume and left <= 0:
                raise DeadlineExceeded("the job's deadline passed while no orchestrator ran it")
            with tracing.span(f"job {job.kind}", {"genstack.job_id": job.job_id, "genstack.pipeline": job.pipeline,
                                                  "genstack.resumed": resume}, parent=job.trace_parent or None), \
                    metrics.track_job(job.kind, lambda: opb.JobState.Name(job.state)):
                return run.run()
        except DeadlineExceeded as exc:
            return self._end_unrun(job.job_id, opb.JOB_STATE_FAILED, exc.message, exc.code.name) or job
        finally:
            self._drop(job.job_id, release=not (held.run is not None and held.run.released))

    def submit(self, request: opb.SubmitJobRequest) -> tuple[opb.Job, bool]:
        job, created = self.create(request)
        if created:
            self._enqueue(job)
        return job, created

    def _enqueue(self, job: opb.Job, resume: bool = False) -> None:
        with self._lock:
            held = self._held.setdefault(job.job_id, _Held())
        try:
            held.future = self._pool.submit(self._run_logged, job, resume)
        except RuntimeError:  # shutting down: hand it back, another orchestrator takes it
            self._drop(job.job_id)
        self._start_maintainer()

    def _run_logged(self, job: opb.Job, resume: bool = False) -> None:
        try:
            self.run(job, resume)
        except Exception:  # noqa: BLE001 - JobRun records failures; this guards the pool thread
            log.exception("job runner crashed")

    def adopt(self, job_id: str, wait_s: float) -> opb.Job:
        """A job submitted before (a redelivered Celery task): its final record, once it has one.
        Runs it here when nobody holds it (its worker died); waits while another process runs it,
        taking it over if that one dies too. Returns the current record after `wait_s`."""
        end = time.monotonic() + wait_s
        while True:
            job = self.get(job_id)
            if job.state in FINAL_STATES:
                return job
            with self._lock:
                ours = job_id in self._held
            if not ours and self.store.claim(job_id, self.owner, self.settings.lease_s):
                self._hold(job_id, _Held())
                log.info("running a job whose earlier run stopped", extra={"fields": {"job_id": job_id}})
                return self.run(job, resume=job.state == opb.JOB_STATE_RUNNING)
            if time.monotonic() >= end:
                return job
            time.sleep(0.2)

    # -- queries ---------------------------------------------------------------------------------

    def get(self, job_id: str) -> opb.Job:
        require(bool(job_id), "job_id", "a job id")
        require(len(job_id) <= MAX_JOB_ID_CHARS, "job_id", f"at most {MAX_JOB_ID_CHARS} characters", len(job_id))
        record = self.store.load(job_id)
        if record is None:
            raise NotFound(f"no job with id {job_id!r}")
        job = json_format.ParseDict(record, opb.Job(), ignore_unknown_fields=True)
        if not identity_var.get().owns(job.principal):
            raise NotFound(f"no job with id {job_id!r}")  # another tenant's job reads like a missing one
        return job

    def watch(self, job_id: str, after_event_id: str, stop):
        check_event_id(after_event_id)
        self.get(job_id)  # NOT_FOUND before streaming anything
        for e in iter_events(self.store, job_id, after_event_id, stop):
            yield opb.JobEvent(event_id=e.event_id, job_id=job_id, type=e.type, step=e.step,
                               data_json=json.dumps(e.data), time=iso_utc(e.time), state=e.state)

    def cancel(self, job_id: str) -> tuple[int, bool]:
        """Ask a job to stop. A job nobody runs (queued here, or orphaned) ends CANCELLED at once;
        a running one ends CANCELLED when its runner sees the request (within ~50 ms)."""
        job = self.get(job_id)
        if job.state in FINAL_STATES:
            return job.state, False
        self.store.request_cancel(job_id)
        with self._lock:
            held = self._held.get(job_id)
        if held is not None:
            if held.run is None and held.future is not None and held.future.cancel():
                ended = self._end_unrun(job_id, opb.JOB_STATE_CANCELLED, "cancelled before it started", "CANCELLED")
                return (ended.state if ended else opb.JOB_STATE_CANCELLED), True
            if held.run is not None:
                held.run.cancel_seen.set()  # running here: the runner ends it at its next look
            return job.state, True
        if self.store.claim(job_id, self.owner, self.settings.lease_s):  # nobody holds it
            with self._lock:
                self._held.setdefault(job_id, _Held())
            ended = self._end_unrun(job_id, opb.JOB_STATE_CANCELLED, "cancelled while no orchestrator ran it",
                                    "CANCELLED")
            return (ended.state if ended else opb.JOB_STATE_CANCELLED), True
        return job.state, True  # another orchestrator holds it and ends it

    def list(self, states: list[int], kinds: list[str], page_size: int, page_token: str) -> tuple[list[opb.Job], str]:
        require(0 <= page_size <= 200, "page_size", "between 1 and 200 (0 = 50)", page_size)
        for k in kinds:
            require(k in self.kinds, "kinds", f"kinds from {', '.join(self.kinds)}", k)
        for st in states:
            require(st in opb.JobState.values(), "states", "JobState values", st)
        size = page_size or 50
        offset = 0
        if page_token:
            try:
                require(len(page_token) <= 32, "page_token", "a token from a previous response")
                offset = int(base64.urlsafe_b64decode(page_token.encode()).decode())
            except (ValueError, binascii.Error, UnicodeError):
                raise InvalidArgument("not a token from a previous response", field="page_token") from None
            require(0 <= offset <= MAX_OFFSET, "page_token", "a token from a previous response")
        out: list[opb.Job] = []
        budget = self.settings.list_response_bytes
        scan = offset
        while len(out) < size:
            ids = self.store.list_ids(scan, 200)
            if not ids:
                scan = -1
                break
            full = False
            for i, job_id in enumerate(ids):
                record = self.store.load(job_id)
                scan_pos = scan + i + 1
                if record is None:
                    continue
                job = json_format.ParseDict(record, opb.Job(), ignore_unknown_fields=True)
                if (states and job.state not in states) or (kinds and job.kind not in kinds) \
                        or not identity_var.get().owns(job.principal):
                    continue
                _summarise(job)
                cost = job.ByteSize()
                if out and cost > budget:  # the page is full; this job opens the next one
                    scan, full = scan + i, True
                    break
                budget -= cost
                out.append(job)
                if len(out) == size:
                    scan, full = scan_pos, True
                    break
            if full:
                break
            scan += len(ids)
        more = scan >= 0 and bool(self.store.list_ids(scan, 1))
        token = base64.urlsafe_b64encode(str(scan).encode()).decode() if more else ""
        return out, token


def _summarise(job: opb.Job) -> None:
    """A listing carries summaries, not payloads: no step inputs/outputs, no large request fields."""
    for st in job.steps:
        st.input_json = st.output_json = ""
    strip_large(job.request)
