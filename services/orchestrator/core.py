"""Orchestrator core: validates submissions, stores jobs, runs them on a thread pool, serves
records and events."""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from google.protobuf import json_format

from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from services.orchestrator.kinds import load_kinds
from services.orchestrator.pipelines import load_pipelines, pick
from services.orchestrator.runner import JobRun
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import JobStore, MemoryJobStore, RedisJobStore, iter_events
from shared import metrics, tracing
from shared.auth import identity_var
from shared.clients import client_for
from shared.config import Settings, get_settings
from shared.errors import InvalidArgument, NotFound, require
from shared.timefmt import iso_utc

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 128


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
        self._clients: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

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
        return RedisJobStore(self.base.redis_url, self.settings.retention_s)

    def warm_up(self) -> None:
        from services.orchestrator.context import count_tokens

        count_tokens("warm up the tokenizer")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- clients ---------------------------------------------------------------------------------

    def transport_for(self, step: str) -> str:
        return self.settings.step_transports.get(step, self.base.transport)

    def client(self, service: str, transport: str):
        key = (service, transport)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = client_for(service, transport)
            return self._clients[key]

    # -- submission ------------------------------------------------------------------------------

    def check(self, request: opb.SubmitJobRequest) -> tuple[str, str, float]:
        kind = request.WhichOneof("input")
        if kind is None:
            raise InvalidArgument(f"one of {', '.join(self.kinds)} is required", field="input")
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
        kind, pipeline, _ = self.check(request)
        job = opb.Job(job_id=uuid.uuid4().hex, kind=kind, state=opb.JOB_STATE_QUEUED, pipeline=pipeline,
                      created_at=iso_utc(), updated_at=iso_utc(), request=request)
        job.principal = identity_var.get().principal or ""  # its tenant; empty when authentication is off
        job.trace_parent = tracing.job_origin()  # the job's span continues the submitter's trace
        job.trace_id = tracing.trace_id_of(job.trace_parent)
        job_id, created = self.store.create(job.job_id, json_format.MessageToDict(job), kind, job.state,
                                            _tenant_key(job.principal, request.idempotency_key))
        if not created:
            return self.get(job_id), False
        metrics.JOBS.labels(kind, "queued").inc()
        job.last_event_id = self.store.append_event(job_id, "job.queued", "", {"kind": kind, "pipeline": pipeline},
                                                    job.state)
        return job, True

    def run(self, job: opb.Job) -> opb.Job:
        _, _, deadline = self.check(job.request)
        run = JobRun(self, job, self.pipelines[job.pipeline], deadline)
        with tracing.span(f"job {job.kind}", {"genstack.job_id": job.job_id, "genstack.pipeline": job.pipeline},
                          parent=job.trace_parent or None), \
                metrics.track_job(job.kind, lambda: opb.JobState.Name(job.state)):
            return run.run()

    def submit(self, request: opb.SubmitJobRequest) -> tuple[opb.Job, bool]:
        job, created = self.create(request)
        if created:
            self._pool.submit(self._run_logged, job)
        return job, created

    def _run_logged(self, job: opb.Job) -> None:
        try:
            self.run(job)
        except Exception:  # noqa: BLE001 - JobRun records failures; this guards the pool thread
            log.exception("job runner crashed")

    # -- queries ---------------------------------------------------------------------------------

    def get(self, job_id: str) -> opb.Job:
        require(bool(job_id), "job_id", "a job id")
        record = self.store.load(job_id)
        if record is None:
            raise NotFound(f"no job with id {job_id!r}")
        job = json_format.ParseDict(record, opb.Job(), ignore_unknown_fields=True)
        if not identity_var.get().owns(job.principal):
            raise NotFound(f"no job with id {job_id!r}")  # another tenant's job reads like a missing one
        return job

    def watch(self, job_id: str, after_event_id: str, stop):
        self.get(job_id)  # NOT_FOUND before streaming anything
        for e in iter_events(self.store, job_id, after_event_id, stop):
            yield opb.JobEvent(event_id=e.event_id, job_id=job_id, type=e.type, step=e.step,
                               data_json=json.dumps(e.data), time=iso_utc(e.time), state=e.state)

    def cancel(self, job_id: str) -> tuple[int, bool]:
        job = self.get(job_id)
        if job.state in (opb.JOB_STATE_SUCCEEDED, opb.JOB_STATE_FAILED, opb.JOB_STATE_CANCELLED):
            return job.state, False
        self.store.request_cancel(job_id)
        if job.state == opb.JOB_STATE_QUEUED:
            return opb.JOB_STATE_CANCELLED, True
        return job.state, True

    def list(self, states: list[int], kinds: list[str], page_size: int, page_token: str) -> tuple[list[opb.Job], str]:
        require(0 <= page_size <= 200, "page_size", "between 1 and 200 (0 = 50)", page_size)
        for k in kinds:
            require(k in self.kinds, "kinds", f"kinds from {', '.join(self.kinds)}", k)
        size = page_size or 50
        try:
            offset = int(base64.urlsafe_b64decode(page_token.encode()).decode()) if page_token else 0
        except ValueError:
            raise InvalidArgument("not a token from a previous response", field="page_token") from None
        out: list[opb.Job] = []
        scan = offset
        while len(out) < size:
            ids = self.store.list_ids(scan, 200)
            if not ids:
                scan = -1
                break
            for i, job_id in enumerate(ids):
                record = self.store.load(job_id)
                scan_pos = scan + i + 1
                if record is None:
                    continue
                job = json_format.ParseDict(record, opb.Job(), ignore_unknown_fields=True)
                if (states and job.state not in states) or (kinds and job.kind not in kinds) \
                        or not identity_var.get().owns(job.principal):
                    continue
                for st in job.steps:  # a listing carries summaries, not payloads
                    st.input_json = st.output_json = ""
                out.append(job)
                if len(out) == size:
                    scan = scan_pos
                    break
            else:
                scan += len(ids)
        more = scan >= 0 and bool(self.store.list_ids(scan, 1))
        token = base64.urlsafe_b64encode(str(scan).encode()).decode() if more else ""
        return out, token

