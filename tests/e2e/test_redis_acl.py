"""genstack on a Redis that requires a password, with an ACL user per role and the default user
off: a private redis-server, a queued job through two real Celery workers (orchestrator and
generator), and no access without credentials."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
import redis

from tests.support import ServiceProcess

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (see .ci/run)")]

PASSWORD = "s3cret-for-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis-acl")
    (folder / "users.acl").write_text(
        # the default user is off; genstack's services get everything but administration; an
        # operator's read-only role (dashboards) reads but cannot write
        "user default off\n"
        f"user genstack on >{PASSWORD} ~* &* +@all -@admin -flushall -flushdb -debug\n"
        f"user observer on >{PASSWORD}-ro ~* &* +@read +ping -@admin\n")
    proc = subprocess.Popen([
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(folder), "--aclfile", str(folder / "users.acl"),
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://genstack:{PASSWORD}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield port, url
    proc.terminate()
    proc.wait(10)


def test_without_credentials_redis_refuses(acl_redis):
    port, _ = acl_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    observer = redis.Redis(port=port, username="observer", password=f"{PASSWORD}-ro")
    assert observer.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        observer.set("genstack:cancel:x", "1")  # a read-only role cannot cancel anyone's work


def test_a_queued_job_runs_through_workers_on_the_acl_redis(acl_redis):
    from shared.celery_app import make_celery
    from shared.config import Settings

    _, url = acl_redis
    env = {"GENSTACK_REDIS_URL": url, "GENSTACK_TRANSPORT": "celery", "GENSTACK_ORCHESTRATOR_STORE": "redis"}
    with ServiceProcess("generator", "worker", env=env), ServiceProcess("orchestrator", "worker", env=env):
        app = make_celery(Settings(redis_url=url))
        try:
            doc = app.send_task("orchestrator.submit_job", queue="orchestrator", kwargs={"deadline_s": 240.0},
                                args=[{"generate": {"prompt": "Say hello.", "sampling": {"maxNewTokens": 4,
                                                                                       "temperature": 0}}}],
                                ).get(timeout=300)
        finally:
            app.close()
    job = doc["job"]
    assert job["state"] == "JOB_STATE_SUCCEEDED", job.get("error")
    assert job["generate"]["text"] and [s["transport"] for s in job["steps"]] == ["celery"]
    assert redis.Redis.from_url(url).zscore("genstack:jobs", job["jobId"]) is not None  # its record lives there
