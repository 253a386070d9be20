"""genstack on a Redis that requires a password, with an ACL user per role, the default user off and
TLS only (rediss://): a private redis-server, a queued job through two real Celery workers
(orchestrator and generator), and no access without credentials or without TLS.

`make test` runs the whole suite on such a Redis by default (tests/conftest.py)."""

from __future__ import annotations

import shutil

import pytest
import redis

from tests.support import PrivateRedis, ServiceProcess

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (see .ci/run)")]


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    with PrivateRedis(tmp_path_factory.mktemp("redis-acl"), acl=True, tls=True) as server:
        yield server


def test_without_credentials_or_tls_redis_refuses(acl_redis):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(acl_redis.anonymous_url).ping()  # TLS, but no user: the default user is off
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=acl_redis.port, username="genstack", password=acl_redis.PASSWORD,
                    socket_timeout=2).ping()  # the right password in plain text: TLS only
    observer = redis.Redis.from_url(acl_redis.url_for("observer", f"{acl_redis.PASSWORD}-ro"))
    assert observer.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        observer.set("genstack:cancel:x", "1")  # a read-only role cannot cancel anyone's work


def test_a_queued_job_runs_through_workers_on_the_acl_redis(acl_redis):
    from shared.celery_app import make_celery
    from shared.config import Settings

    url = acl_redis.url  # rediss://genstack:...@127.0.0.1:port/0?ssl_cert_reqs=required&ssl_ca_certs=...
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
