"""Test-wide setup: offline models, the small model as default, a private locked-down Redis and home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything reads settings: offline, small default model, isolated state.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("GENSTACK_GENERATOR_DEFAULT_MODEL", "smollm2-135m")
# float32 on every CPU: the `auto` dtype picks bfloat16 where the CPU has native bf16, and batched
# bf16 rounding can flip a greedy near-tie (bench/batch_agreement.py), while tests compare greedy
# outputs across batch shapes, processes and transports.
os.environ.setdefault("GENSTACK_GENERATOR_DTYPE", "float32")


# The suite runs against a Redis locked down as in production (issue 21): a private redis-server with
# the default user off, an ACL user with a password for the services, TLS only. It is started here,
# before settings are read, unless GENSTACK_TEST_SECURE_REDIS=0 or GENSTACK_REDIS_URL names a Redis
# to use instead (then the suite uses that one; =1 forces the private one).
def _use_secure_redis() -> bool:
    import shutil

    wanted = os.environ.get("GENSTACK_TEST_SECURE_REDIS", "").lower()
    if wanted in ("0", "false", "no"):
        return False
    if wanted in ("1", "true", "yes"):
        return True
    return "GENSTACK_REDIS_URL" not in os.environ and shutil.which("redis-server") is not None


if _use_secure_redis():
    import atexit

    from tests.support import PrivateRedis

    _secure_redis = PrivateRedis(Path(tempfile.mkdtemp(prefix="genstack-test-redis-")), acl=True, tls=True).start()
    atexit.register(_secure_redis.stop)
    os.environ["GENSTACK_REDIS_URL"] = _secure_redis.url
os.environ.setdefault("GENSTACK_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("GENSTACK_LOG_LEVEL", "WARNING")
# Tests run several model processes at once (servers, workers, this one): one torch thread each
# avoids OpenMP oversubscription, which slowed a prefill 7x here.
os.environ.setdefault("GENSTACK_TORCH_THREADS", "1")
# Converted models are shared with the user's cache so that the GGUF conversion happens once.
os.environ.setdefault("GENSTACK_MODEL_CACHE", str(Path.home() / ".cache" / "genstack" / "models"))
_data = tempfile.mkdtemp(prefix="genstack-test-data-")
os.environ.setdefault("GENSTACK_DATA_DIR", _data)

import shared  # noqa: E402,F401 - generated stubs on sys.path
from tests.support import ServiceProcess  # noqa: E402

TRANSPORTS = ("inproc", "grpc", "celery")


@pytest.fixture(scope="session")
def redis_client():
    import redis

    from shared.config import get_settings

    client = redis.Redis.from_url(get_settings().redis_url)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not reachable at GENSTACK_REDIS_URL; start it (see .ci/run)")
    return client


_processes: dict[tuple[str, str], ServiceProcess] = {}


def stop_session_processes() -> None:
    """Stop the shared service processes (tests that start differently configured ones call this,
    so that two workers with different settings never share a queue)."""
    for proc in _processes.values():
        proc.stop()
    _processes.clear()


@pytest.fixture(scope="session")
def service_process(redis_client):
    """Factory: service_process("generator", "grpc") starts (once per session) and returns it."""

    def get(service: str, role: str) -> ServiceProcess:
        key = (service, role)
        if key not in _processes:
            if role == "worker":
                redis_client.delete(service)  # stale messages from an earlier, killed run
            _processes[key] = ServiceProcess(service, role).start()
        return _processes[key]

    yield get
    for proc in _processes.values():
        proc.stop()
    _processes.clear()


@pytest.fixture(scope="session")
def client_factory(service_process):
    """Factory: client_factory(ClientClass, transport) -> a client wired to real processes."""
    made = []

    def make(client_cls, transport: str):
        service = client_cls.service
        if transport == "grpc":
            proc = service_process(service, "grpc")
            client = client_cls("grpc", address=proc.address)
        elif transport == "celery":
            service_process(service, "worker")
            client = client_cls("celery")
        else:
            client = client_cls("inproc")
        made.append(client)
        return client

    yield make
    for c in made:
        c.close()
