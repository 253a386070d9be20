"""Jobs survive their orchestrator (issue 18): leases, recovery from the last completed step,
atomic claims between replicas, cancel of orphaned jobs, queued jobs on shutdown, transient-error
retries inside the deadline, bounded records. No models or services: the pipelines here use test
steps registered on the `generate` kind's input."""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid

import pytest
import redis
from google.protobuf import json_format

from genstack.generator.v1 import generator_pb2 as gpb
from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from services.orchestrator.core import OrchestratorCore
from services.orchestrator.kinds.generate import GENERATION
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.steps import slot, step
from services.orchestrator.store import MemoryJobStore, RedisJobStore, SqliteJobStore
from shared.config import get_settings
from shared.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable

FIRST = slot("durability_first", str)
CALLS: collections.Counter = collections.Counter()  # (job_id, step) -> times run
GATES: dict[str, threading.Event] = {}  # job_id -> released when the second step may finish
FLAKY: dict[str, list] = {}  # prompt -> errors the fake service raises, in order


@step("dur_first", provides=(FIRST,), input="generate")
def _first(run, params):
    CALLS[(run.job.job_id, "dur_first")] += 1
    with run.step("dur_first", "", {"prompt": run.job.request.generate.prompt}) as rec:
        rec.output = {"value": "one"}
    run.state[FIRST] = f"first:{run.job.request.generate.prompt}"


@step("dur_second", reads=(FIRST,), provides=(GENERATION,), input="generate")
def _second(run, params):
    CALLS[(run.job.job_id, "dur_second")] += 1
    gate = GATES.get(run.job.job_id)
    with run.step("dur_second", "generator", {}) as rec:
        while gate is not None and not gate.wait(0.02):
            if run.cancelled():
                from shared.errors import Cancelled

                raise Cancelled("job cancelled")
            run.timeout()
        text = run.client("fake", "dur_second").echo(run.state[FIRST], timeout=run.timeout())
        rec.output = {"text": text}
    run.state[GENERATION] = gpb.GenerateResponse(text=text)


@step("dur_once", provides=(GENERATION,), input="generate", rerun_safe=False)
def _once(run, params):
    CALLS[(run.job.job_id, "dur_once")] += 1
    gate = GATES.get(run.job.job_id)
    with run.step("dur_once", "", {}):
        while gate is not None and not gate.wait(0.02):
            run.cancelled()
    run.state[GENERATION] = gpb.GenerateResponse(text="once")


class FakeService:
    """Stands for a service client: `echo` fails with the job's queued transient errors first."""

    def echo(self, text, timeout=None):
        errors = FLAKY.get(text.split(":", 1)[1]) or []
        if errors:
            raise errors.pop(0)
        return text.upper()[:100]


PIPELINES = {
    "dur-two": {"kind": "generate", "steps": [{"name": "dur_first"}, {"name": "dur_second"}]},
    "dur-once": {"kind": "generate", "steps": [{"name": "dur_once"}]},
}


@pytest.fixture
def pipelines_file(tmp_path):
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps(PIPELINES))
    return str(path)


class FlakyStore:
    """A store shared with another core whose renewals can be cut (a stalled, partitioned process)."""

    def __init__(self, inner):
        self._inner = inner
        self.partitioned = False

    def renew(self, job_ids, owner, lease_s):
        if self.partitioned:
            raise redis.ConnectionError("partitioned")
        return self._inner.renew(job_ids, owner, lease_s)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path, redis_client):
    if request.param == "memory":
        return MemoryJobStore()
    if request.param == "sqlite":
        return SqliteJobStore(tmp_path / "jobs.sqlite3", 60)
    return PrivateRedisJobStore(get_settings().redis_url, 60)


class PrivateRedisJobStore(RedisJobStore):
    """Its own open-jobs set: other tests' unfinished jobs in the shared test database are not ours."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.OPEN = f"genstack:test:open:{uuid.uuid4().hex}"


def make_core(store, pipelines_file, **kw) -> OrchestratorCore:
    settings = OrchestratorSettings(pipelines_file=pipelines_file, lease_s=kw.pop("lease_s", 0.6),
                                    recovery_interval_s=0.2, drain_s=kw.pop("drain_s", 0.0),
                                    retry_initial_backoff_s=0.01, retry_max_backoff_s=0.05, **kw)
    core = OrchestratorCore(settings, store=store)
    core.client = lambda service, transport: FakeService()
    return core


def request(prompt: str, pipeline="dur-two", **kw) -> pb.SubmitJobRequest:
    return pb.SubmitJobRequest(generate=gpb.GenerateRequest(prompt=prompt), pipeline=pipeline, **kw)


def wait_final(core, job_id, timeout=20.0) -> pb.Job:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = core.get(job_id)
        if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {pb.JobState.Name(core.get(job_id).state)} after {timeout}s")


def event_types(store, job_id) -> list[str]:
    return [e.type for e in store.events(job_id, "", 0)]


# -- the store's leases ------------------------------------------------------------------------------


def test_a_lease_is_held_by_one_owner_until_it_lapses(store):
    job = uuid.uuid4().hex
    store.create(job, {}, "generate", 1, "", owner="a", lease_s=0.3)
    assert store.lease_owner(job) == "a"
    assert not store.claim(job, "b", 5) and job not in store.orphans(1000)
    assert store.renew([job], "a", 0.3) == []
    time.sleep(0.45)
    assert job in store.orphans(1000)
    assert store.claim(job, "b", 5) and store.lease_owner(job) == "b"
    assert store.renew([job], "a", 5) == [job]  # a lost it to b
    store.release(job, "a")  # not a's to release
    assert store.lease_owner(job) == "b"
    store.release(job, "b")
    assert store.lease_owner(job) is None and job in store.orphans(1000)
    store.save(job, {"state": "JOB_STATE_SUCCEEDED"}, pb.JOB_STATE_SUCCEEDED)
    store.finish(job)
    store.flush()
    assert job not in store.orphans(1000)


def test_checkpoints_and_the_last_event_id_are_stored(store):
    job = uuid.uuid4().hex
    store.create(job, {}, "generate", 1, "")
    assert store.load_checkpoint(job) is None and store.last_event_id(job) == ""
    last = store.append_event(job, "job.queued", "", {}, 1)
    last = store.append_event(job, "job.started", "", {}, 2, after=last)
    store.save_checkpoint(job, {"next_step": 1, "slots": {"x": [1, "a"]}})
    store.flush()
    assert store.last_event_id(job) == last
    assert store.load_checkpoint(job) == {"next_step": 1, "slots": {"x": [1, "a"]}}


# -- recovery ----------------------------------------------------------------------------------------


def test_a_job_whose_orchestrator_stalled_resumes_after_its_last_completed_step(store, pipelines_file):
    shared_store = FlakyStore(store)
    a = make_core(shared_store, pipelines_file)
    b = make_core(store, pipelines_file)
    try:
        job, _ = a.create(request("x"))
        GATES[job.job_id] = threading.Event()
        a._enqueue(job)
        end = time.monotonic() + 10
        while CALLS[(job.job_id, "dur_second")] == 0 and time.monotonic() < end:
            time.sleep(0.02)
        shared_store.partitioned = True  # a can no longer renew: its lease lapses
        time.sleep(0.9)
        assert b.recover() == [job.job_id]
        GATES[job.job_id].set()  # both runs may finish their second step now
        final = wait_final(b, job.job_id)
        shared_store.partitioned = False  # a hears that b has the job and stops without writing
        time.sleep(0.5)
        assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
        assert final.generate.text == "FIRST:X"
        assert CALLS[(job.job_id, "dur_first")] == 1  # completed before the stall: not run again
        types = event_types(store, job.job_id)
        assert "job.resumed" in types and types.count("job.succeeded") == 1 and types[-1] == "job.succeeded"
        assert wait_final(a, job.job_id).state == pb.JOB_STATE_SUCCEEDED  # a wrote nothing over it
    finally:
        a.close()
        b.close()


def test_orphans_are_recovered_once_by_concurrent_replicas(store, pipelines_file):
    cores = [make_core(store, pipelines_file, lease_s=5) for _ in range(3)]
    try:
        ids = []
        for i in range(12):  # jobs of a dead orchestrator: created, never run, lease lapsed
            job, _ = cores[0].create(request(f"p{i}"))
            ids.append(job.job_id)
        with cores[0]._lock:
            cores[0]._held.clear()
        for job_id in ids:
            store.release(job_id, cores[0].owner)
        threads = [threading.Thread(target=c.recover) for c in cores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        finals = [wait_final(cores[0], j) for j in ids]
        assert [f.state for f in finals] == [pb.JOB_STATE_SUCCEEDED] * 12
        assert all(CALLS[(j, "dur_second")] == 1 and CALLS[(j, "dur_first")] == 1 for j in ids)
        assert all(event_types(store, j).count("job.started") == 1 for j in ids)
    finally:
        for c in cores:
            c.close()


def test_a_step_that_is_not_safe_to_rerun_fails_the_resumed_job_with_a_reason(store, pipelines_file):
    a = make_core(FlakyStore(store), pipelines_file)
    b = make_core(store, pipelines_file)
    try:
        job, _ = a.create(request("x", pipeline="dur-once"))
        GATES[job.job_id] = threading.Event()
        a._enqueue(job)
        end = time.monotonic() + 10
        while CALLS[(job.job_id, "dur_once")] == 0 and time.monotonic() < end:
            time.sleep(0.02)
        a.store.partitioned = True
        time.sleep(0.9)
        assert b.recover() == [job.job_id]
        final = wait_final(b, job.job_id)
        assert final.state == pb.JOB_STATE_FAILED and final.error_code == "FAILED_PRECONDITION"
        assert "dur_once" in final.error and "not safe to run twice" in final.error
        assert CALLS[(job.job_id, "dur_once")] == 1
        assert event_types(store, job.job_id)[-1] == "job.failed"
    finally:
        GATES[job.job_id].set()
        a.close()
        b.close()


def test_queued_jobs_are_handed_back_on_shutdown_and_run_by_the_next_orchestrator(store, pipelines_file):
    a = make_core(store, pipelines_file, max_concurrent_jobs=1)
    first, _ = a.create(request("busy"))
    GATES[first.job_id] = threading.Event()  # in place before the job can reach step two
    a._enqueue(first)  # noqa: SLF001 - submit() is create() + _enqueue(); the gate goes in between
    queued = [a.submit(request(f"q{i}"))[0].job_id for i in range(3)]
    closer = threading.Thread(target=a.close)
    closer.start()
    # handed back while the running one drains (polled: a loaded machine may take a moment)
    deadline = time.monotonic() + 10
    while not set(queued) <= set(store.orphans(1000)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(queued) <= set(store.orphans(1000))
    GATES[first.job_id].set()
    closer.join(5)
    b = make_core(store, pipelines_file)
    try:
        assert set(queued) <= set(b.recover())
        assert [wait_final(b, j).state for j in [first.job_id, *queued]] == [pb.JOB_STATE_SUCCEEDED] * 4
        assert all(CALLS[(j, "dur_second")] == 1 for j in queued)
    finally:
        b.close()


def test_cancel_ends_orphaned_and_queued_jobs_in_cancelled(store, pipelines_file):
    dead = make_core(store, pipelines_file, max_concurrent_jobs=1)
    live = make_core(store, pipelines_file, max_concurrent_jobs=1)
    try:
        running, _ = dead.create(request("r"))
        store.save(running.job_id, json_format.MessageToDict(pb.Job(job_id=running.job_id, kind="generate",
                   state=pb.JOB_STATE_RUNNING, pipeline="dur-two", request=running.request)), pb.JOB_STATE_RUNNING)
        queued, _ = dead.create(request("q"))
        with dead._lock:
            dead._held.clear()  # the orchestrator "died": nobody renews these leases any more
        time.sleep(0.8)
        for job in (running, queued):
            state, accepted = live.cancel(job.job_id)
            assert (state, accepted) == (pb.JOB_STATE_CANCELLED, True)
            assert live.get(job.job_id).state == pb.JOB_STATE_CANCELLED
            assert [e.type for e in live.watch(job.job_id, "", lambda: False)][-1] == "job.cancelled"
        # queued here, behind a running job: cancelled at once, never run
        blocker, _ = live.create(request("b"))
        GATES[blocker.job_id] = threading.Event()
        live._enqueue(blocker)
        waiting, _ = live.submit(request("w"))
        assert live.cancel(waiting.job_id) == (pb.JOB_STATE_CANCELLED, True)
        assert live.get(waiting.job_id).state == pb.JOB_STATE_CANCELLED
        # running here: ends CANCELLED through the runner
        time.sleep(0.1)
        live.cancel(blocker.job_id)
        assert wait_final(live, blocker.job_id).state == pb.JOB_STATE_CANCELLED
        assert CALLS[(waiting.job_id, "dur_first")] == 0
    finally:
        dead.close()
        live.close()


# -- transient errors ----------------------------------------------------------------------------------


def test_transient_errors_are_retried_inside_the_deadline_and_recorded(pipelines_file):
    store = MemoryJobStore()
    core = make_core(store, pipelines_file)
    try:
        job, _ = core.create(request("t"))
        FLAKY["t"] = [Unavailable("generator restarting"), Unavailable("generator restarting")]
        final = core.run(job)
        assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
        second = [s for s in final.steps if s.name == "dur_second"][0]
        assert second.call_retries == 2 and "UNAVAILABLE" in second.retry_errors[0]
        assert event_types(store, job.job_id).count("step.retry") == 2

        job, _ = core.create(request("u", deadline_s=1.0))
        FLAKY["u"] = [Unavailable("down")] * 100
        final = core.run(job)
        assert final.state == pb.JOB_STATE_FAILED and final.error_code == "UNAVAILABLE"
        assert final.duration_ms < 1500  # gave up inside the job's deadline

        # one call that ran out of its own time (a frozen replica) is tried again while the job has time
        job, _ = core.create(request("w", deadline_s=60))
        FLAKY["w"] = [DeadlineExceeded("call deadline")]
        final = core.run(job)
        assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
        second = [s for s in final.steps if s.name == "dur_second"][0]
        assert second.call_retries == 1 and "DEADLINE_EXCEEDED" in second.retry_errors[0]

        job, _ = core.create(request("v"))
        FLAKY["v"] = [InvalidArgument("bad", field="prompt")]
        final = core.run(job)
        assert final.error_code == "INVALID_ARGUMENT" and final.steps[-1].call_retries == 0  # not transient
    finally:
        core.close()


# -- limits and records ----------------------------------------------------------------------------------


def test_oversized_inputs_are_refused_before_anything_is_stored(pipelines_file):
    store = MemoryJobStore()
    core = make_core(store, pipelines_file)
    with pytest.raises((ResourceExhausted, InvalidArgument)) as err:
        core.submit(request("x" * (core.settings.max_text_chars + 1)))
    assert "generate.prompt" in err.value.message
    with pytest.raises(ResourceExhausted):
        core.submit(pb.SubmitJobRequest(ingest={"collection": "c", "documents": [
            {"id": "big", "text": "y" * (9 * 1024 * 1024)}]}))
    assert store.list_ids(0, 10) == []
    core.close()


def test_large_requests_are_stored_once_and_listing_stays_small(pipelines_file, tmp_path, monkeypatch):
    monkeypatch.setenv("GENSTACK_ARTIFACTS_URL", (tmp_path / "artifacts").as_uri())
    from shared import artifacts

    artifacts.get_store.cache_clear()
    store = MemoryJobStore()
    core = make_core(store, pipelines_file, record_inline_bytes=64 * 1024)
    try:
        big = "z" * 150_000
        job, _ = core.create(request(big))
        final = core.run(job)
        assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
        stored = core.get(job.job_id)
        assert stored.request_ref.uri and stored.request.generate.prompt == ""
        assert len(json.dumps(store.load(job.job_id))) < 64 * 1024  # not twice 150 kB: not even once
        assert pb.SubmitJobRequest.FromString(artifacts.get_store().get(stored.request_ref.uri)).generate.prompt == big
        for _ in range(5):
            core.run(core.create(request(big))[0])
        jobs, _ = core.list([], [], 200, "")
        assert len(jobs) == 6 and sum(j.ByteSize() for j in jobs) < 64 * 1024
    finally:
        artifacts.get_store.cache_clear()
        core.close()


def test_a_listing_page_is_bounded_in_bytes_and_continues_with_its_token(pipelines_file):
    store = MemoryJobStore()
    core = make_core(store, pipelines_file, list_response_bytes=3000)
    try:
        ids = {core.run(core.create(request(f"job {i} " + "w" * 900))[0]).job_id for i in range(8)}
        seen, token, pages = set(), "", 0
        while True:
            jobs, token = core.list([], [], 50, token)
            pages += 1
            assert jobs and sum(j.ByteSize() for j in jobs) <= 3000 + 1500
            seen |= {j.job_id for j in jobs}
            if not token:
                break
        assert seen == ids and pages > 1
    finally:
        core.close()


@pytest.mark.parametrize("after", ["(", "abc", "-1", "1-", "+", "\x00", "9" * 30])
def test_a_malformed_event_id_is_invalid_argument(after, pipelines_file):
    core = make_core(MemoryJobStore(), pipelines_file)
    job, _ = core.create(request("x"))
    with pytest.raises(InvalidArgument) as err:
        list(core.watch(job.job_id, after, lambda: True))
    assert "after_event_id" in err.value.message
    core.close()


@pytest.mark.parametrize("token", ["OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5", "LTE=", "!!!", "AAAA"])
def test_a_forged_page_token_is_invalid_argument(token, pipelines_file):
    core = make_core(MemoryJobStore(), pipelines_file)
    with pytest.raises(InvalidArgument) as err:
        core.list([], [], 5, token)
    assert "page_token" in err.value.message
    core.close()


# -- Redis outages reach clients as UNAVAILABLE -----------------------------------------------------------


def test_store_outages_are_unavailable_in_one_place():
    from kombu.exceptions import OperationalError

    from shared.errors import translate

    assert translate(redis.ConnectionError("refused")).code.name == "UNAVAILABLE"
    assert translate(redis.TimeoutError("slow")).code.name == "UNAVAILABLE"
    assert translate(OperationalError("broker down")).code.name == "UNAVAILABLE"
    assert translate(RecursionError()).code.name == "INVALID_ARGUMENT"
    assert translate(ValueError("x")).code.name == "INTERNAL"


def test_an_orchestrator_whose_redis_is_down_answers_unavailable_over_grpc(pipelines_file):
    import socket

    import grpc

    from genstack.orchestrator.v1 import orchestrator_pb2 as opb
    from services.orchestrator.grpc_api import OrchestratorApi
    from shared.client import ServiceClient
    from shared.grpc_server import Server

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    core = make_core(RedisJobStore(f"redis://127.0.0.1:{dead}/0", 60), pipelines_file)
    server = Server(OrchestratorApi(core), 0, host="127.0.0.1").start(warm_up_in_background=False)
    client = ServiceClient("grpc", service="orchestrator", address=f"127.0.0.1:{server.port}")
    try:
        for method, req in (("GetJob", opb.GetJobRequest(job_id="abc")), ("ListJobs", opb.ListJobsRequest()),
                            ("SubmitJob", request("x"))):
            with pytest.raises(Unavailable) as err:
                client.call(method, req, timeout=20)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE and "retry" in err.value.message
    finally:
        client.close()
        server.stop(grace=0)
