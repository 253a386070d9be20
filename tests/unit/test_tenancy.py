"""Every job belongs to the principal that submitted it: only it (and admins) can see, watch,
list or cancel it, over gRPC and over the queued path."""

from __future__ import annotations

import json
import uuid

import pytest

from genstack.generator.v1 import generator_pb2 as gpb
from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from services.orchestrator.core import OrchestratorCore
from services.orchestrator.settings import OrchestratorSettings
from shared import auth
from shared.auth import Identity, identity_var
from shared.config import Settings
from shared.errors import NotFound

ALICE, BOB, OPS = Identity("alice", frozenset({"jobs"})), Identity("bob", frozenset({"jobs"})), \
    Identity("ops", frozenset({"admin"}))


def _as(identity: Identity, fn, *args):
    token = identity_var.set(identity)
    try:
        return fn(*args)
    finally:
        identity_var.reset(token)


def _generate(key: str = "") -> pb.SubmitJobRequest:
    return pb.SubmitJobRequest(generate=gpb.GenerateRequest(prompt="hi"), idempotency_key=key)


@pytest.fixture
def core():
    c = OrchestratorCore(OrchestratorSettings(store="memory"), Settings(transport="inproc"))
    yield c
    c.close()


def test_each_principal_sees_and_cancels_only_its_own_jobs(core):
    a, _ = _as(ALICE, core.create, _generate())
    b, _ = _as(BOB, core.create, _generate())
    assert (a.principal, b.principal) == ("alice", "bob")
    assert _as(ALICE, core.get, a.job_id).job_id == a.job_id
    for fn in (core.get, core.cancel):
        with pytest.raises(NotFound, match="no job with id") as e:
            _as(BOB, fn, a.job_id)
        assert "alice" not in e.value.message, "nothing tells bob whose job it is"
    with pytest.raises(NotFound):
        list(_as(BOB, lambda: list(core.watch(a.job_id, "", lambda: True))))
    listed = {who.principal: {j.job_id for j in _as(who, core.list, [], [], 50, "")[0]} for who in (ALICE, BOB, OPS)}
    assert a.job_id in listed["alice"] and b.job_id not in listed["alice"]
    assert b.job_id in listed["bob"] and a.job_id not in listed["bob"]
    assert {a.job_id, b.job_id} <= listed["ops"], "admins see every tenant's jobs"
    state, cancelled = _as(ALICE, core.cancel, a.job_id)
    assert cancelled and core.store.cancel_requested(a.job_id), "alice may cancel her own job"
    assert not core.store.cancel_requested(b.job_id)


def test_idempotency_keys_are_per_tenant(core):
    key = uuid.uuid4().hex
    a1, created1 = _as(ALICE, core.create, _generate(key))
    a2, created2 = _as(ALICE, core.create, _generate(key))
    b1, created3 = _as(BOB, core.create, _generate(key))
    assert created1 and not created2 and a1.job_id == a2.job_id
    assert created3 and b1.job_id != a1.job_id, "bob's key never returns alice's job"


def test_without_authentication_everyone_sees_everything(core):
    job, _ = core.create(_generate())
    assert job.principal == "" and core.get(job.job_id).job_id == job.job_id


# -- over gRPC, with tokens ----------------------------------------------------------------------

@pytest.fixture
def secured(tmp_path, monkeypatch):
    tokens = [{"token": "t-alice", "principal": "alice", "scopes": ["jobs"]},
              {"token": "t-bob", "principal": "bob", "scopes": ["jobs"]},
              {"token": "t-ops", "principal": "ops", "scopes": ["admin"]}]
    (tmp_path / "tokens.json").write_text(json.dumps({"tokens": tokens}))
    monkeypatch.setenv("GENSTACK_AUTH_TOKENS_FILE", str(tmp_path / "tokens.json"))
    for cache in (auth.get_auth_settings, auth._task_registry):
        cache.cache_clear()
    yield monkeypatch
    for cache in (auth.get_auth_settings, auth._task_registry):
        cache.cache_clear()


def _client_as(monkeypatch, token: str, address: str):
    from shared.clients import client_for

    monkeypatch.setenv("GENSTACK_AUTH_TOKEN", token)
    auth.get_auth_settings.cache_clear()
    return client_for("orchestrator", "grpc", address=address)


def test_tenancy_over_grpc(secured, core):
    from services.orchestrator.grpc_api import OrchestratorApi
    from shared.grpc_server import Server

    server = Server(OrchestratorApi(core), 0, host="127.0.0.1")
    server.grpc_server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        core.submit = core.create  # keep the jobs queued: tenancy is about the records
        alice = _client_as(secured, "t-alice", address)
        job_id = alice.submit_job(_generate()).job_id
        assert alice.get_job(job_id).principal == "alice"
        bob = _client_as(secured, "t-bob", address)
        with pytest.raises(NotFound):
            bob.get_job(job_id)
        with pytest.raises(NotFound):
            bob.cancel_job(job_id)
        with pytest.raises(NotFound):
            next(iter(bob.watch_job(job_id)))
        assert job_id not in {j.job_id for j in bob.list_jobs(pb.ListJobsRequest()).jobs}
        ops = _client_as(secured, "t-ops", address)
        assert ops.get_job(job_id).job_id == job_id
        assert job_id in {j.job_id for j in ops.list_jobs(pb.ListJobsRequest()).jobs}
        assert alice.cancel_job(job_id).cancelled
        for c in (alice, bob, ops):
            c.close()
    finally:
        server.stop(0)


@pytest.mark.slow
def test_the_queued_submit_carries_its_principal(secured, redis_client, tmp_path):
    """A real orchestrator worker with the tokens file: a task's token decides its tenant, and a task
    without one fails UNAUTHENTICATED at its sender instead of staying PENDING."""
    from celery import Celery

    from shared.celery_app import make_celery
    from shared.errors import Unauthenticated
    from tests.conftest import stop_session_processes
    from tests.support import ServiceProcess

    stop_session_processes()  # a worker with other settings must not share the queue
    env = {"GENSTACK_AUTH_TOKENS_FILE": str(tmp_path / "tokens.json"), "GENSTACK_ORCHESTRATOR_STORE": "redis",
           "GENSTACK_TRANSPORT": "grpc", "GENSTACK_GENERATOR_ADDRESS": "127.0.0.1:9"}
    with ServiceProcess("orchestrator", "worker", env=env):
        app: Celery = make_celery()
        try:
            def send(token, payload, task="orchestrator.submit_job"):
                kwargs = {"deadline_s": 20.0}
                if token:
                    kwargs["auth_token"] = token
                return app.send_task(task, args=[payload], kwargs=kwargs, queue="orchestrator").get(timeout=60)

            payload = {"generate": {"prompt": "hi"}, "deadlineS": 3}
            doc = send("t-alice", payload)
            assert doc["job"]["principal"] == "alice"
            with pytest.raises(Exception) as e:  # noqa: B017 - the class is checked below
                send(None, payload)
            assert type(e.value).__name__ == Unauthenticated.__name__
            with pytest.raises(Exception) as e:  # noqa: B017
                send("t-bob", {"jobId": doc["jobId"]}, task="orchestrator.get_job")
            assert type(e.value).__name__ == NotFound.__name__
            assert send("t-ops", {"jobId": doc["jobId"]}, task="orchestrator.get_job")["job"]["principal"] == "alice"
        finally:
            app.close()
