"""deploy/healthcheck.py, the image's health command, against a real genstack gRPC server and Redis.

The server is shared.grpc_server.Server (the one every service runs) around a small API whose
warm-up waits until the test releases it, so the check is seen failing during warm-up, passing
once SERVING, and failing again after shutdown.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deploy import healthcheck
from genstack.agent.v1 import agent_pb2, agent_pb2_grpc
from shared.errors import Unavailable
from shared.grpc_server import Server
from shared.rpc import ServiceApi

REPO = Path(__file__).resolve().parents[2]
SERVICE_NAME = "genstack.agent.v1.AgentService"


class SlowWarmUpApi(ServiceApi):
    service = "agent"
    descriptor = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    servicer_base = agent_pb2_grpc.AgentServiceServicer
    add_to_server = staticmethod(agent_pb2_grpc.add_AgentServiceServicer_to_server)

    def __init__(self) -> None:
        self.release = threading.Event()

    def warm_up(self) -> None:
        self.release.wait(60)

    def RunAgent(self, request, ctx):  # noqa: N802 - named after the RPC
        raise Unavailable("not part of this test")
        yield  # a generator, like every server-streaming method


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command exactly as Docker and Kubernetes run it: a fresh interpreter in /app (the repo)."""
    return subprocess.run(
        [sys.executable, "-m", "deploy.healthcheck", *argv], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )


def _wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture()
def server():
    api = SlowWarmUpApi()
    srv = Server(api, 0, host="127.0.0.1").start()
    yield srv
    api.release.set()
    srv.stop(grace=0)


def test_unhealthy_during_warm_up_healthy_once_serving(server, capsys):
    address = f"127.0.0.1:{server.port}"
    run = _check("grpc", "--address", address, "--timeout", "5")
    assert run.returncode == 1 and "NOT_SERVING" in run.stdout, run.stdout + run.stderr

    server.api.release.set()
    assert _wait_until(server.ready.is_set)
    run = _check("grpc", "--address", address)
    assert run.returncode == 0 and run.stdout.startswith("healthy:") and "SERVING" in run.stdout

    # the service's own name, as a client that checks one service would ask
    assert healthcheck.main(["grpc", "--address", address, "--service", SERVICE_NAME]) == 0
    assert healthcheck.main(["grpc", "--address", address, "--service", "genstack.nosuch.v1.X"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().out


def test_unhealthy_after_shutdown(capsys):
    api = SlowWarmUpApi()
    api.release.set()
    srv = Server(api, 0, host="127.0.0.1").start()
    assert _wait_until(srv.ready.is_set)
    address = f"127.0.0.1:{srv.port}"
    assert healthcheck.main(["grpc", "--address", address]) == 0
    srv.stop(grace=0)
    assert healthcheck.main(["grpc", "--address", address, "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out


def test_nothing_listening_is_unhealthy_within_the_timeout(capsys):
    started = time.monotonic()
    assert healthcheck.main(["grpc", "--address", f"127.0.0.1:{_free_port()}", "--timeout", "1"]) == 1
    assert time.monotonic() - started < 5
    assert capsys.readouterr().out.startswith("unhealthy:")


def test_role_and_service_come_from_the_environment(server, monkeypatch):
    server.api.release.set()
    assert _wait_until(server.ready.is_set)
    # the image runs it without arguments: ROLE=grpc means ask the server on $SERVICE's port
    run = _check("--address", f"127.0.0.1:{server.port}", env={"ROLE": "grpc", "SERVICE": "agent"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert healthcheck._default_address("generator") == "127.0.0.1:50053"
    monkeypatch.setenv("ROLE", "grpc")
    monkeypatch.setenv("SERVICE", "nosuchservice")
    assert healthcheck.main([]) == healthcheck.EXIT_USAGE
    monkeypatch.setenv("ROLE", "scheduler")
    assert healthcheck.main([]) == healthcheck.EXIT_USAGE


def test_worker_role_checks_the_broker(redis_client):
    url = os.environ["GENSTACK_REDIS_URL"]
    run = _check(env={"ROLE": "worker", "SERVICE": "generator", "GENSTACK_REDIS_URL": url})
    assert run.returncode == 0 and "reachable" in run.stdout, run.stdout + run.stderr
    # a broker URL of its own wins over the Redis URL, as in Celery's configuration
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    run = _check(env={"ROLE": "worker", "GENSTACK_REDIS_URL": url, "GENSTACK_BROKER_URL": dead})
    assert run.returncode == 1 and "unhealthy" in run.stdout


def test_broker_failure_is_reported_without_the_password(capsys):
    url = f"redis://:s3cret@127.0.0.1:{_free_port()}/0"
    assert healthcheck.main(["broker", "--url", url, "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert "s3cret" not in out and ":***@127.0.0.1" in out


def test_the_probe_speaks_tls_with_the_certificates_deploy_tls_issues(tmp_path, monkeypatch):
    """The Kubernetes manifests turn TLS on for every server and probe it with this command: the
    certificate from `python -m deploy.tls` serves, and the probe checks it by the pod's service name
    while it dials 127.0.0.1."""
    from deploy import tls
    from shared import auth

    paths = tls.issue(tmp_path / "tls")
    other = tls.issue(tmp_path / "other")  # a CA the server's certificate does not come from
    assert oct(paths["tls.key"].stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("GENSTACK_TLS_CERT_FILE", str(paths["tls.crt"]))
    monkeypatch.setenv("GENSTACK_TLS_KEY_FILE", str(paths["tls.key"]))
    auth.get_tls_settings.cache_clear()
    api = SlowWarmUpApi()
    api.release.set()
    srv = Server(api, 0, host="127.0.0.1").start()
    monkeypatch.delenv("GENSTACK_TLS_CERT_FILE")
    monkeypatch.delenv("GENSTACK_TLS_KEY_FILE")
    auth.get_tls_settings.cache_clear()
    try:
        assert srv.tls and _wait_until(srv.ready.is_set)
        address = f"127.0.0.1:{srv.port}"
        pod = {"GENSTACK_TLS_CA_FILE": str(paths["ca.crt"]), "SERVICE": "agent", "ROLE": "grpc"}
        run = _check("grpc", "--address", address, env=pod)
        assert run.returncode == 0 and "SERVING" in run.stdout, run.stdout + run.stderr
        # every catalogue name is on the certificate (here: the retriever's, as its own probe would check)
        run = _check("grpc", "--address", address, env={**pod, "SERVICE": "retriever"})
        assert run.returncode == 0, run.stdout + run.stderr
        # a name the certificate does not carry, another CA, and plain text all fail the probe
        for env in ({**pod, "GENSTACK_TLS_SERVER_NAME": "evil.example"},
                    {**pod, "GENSTACK_TLS_CA_FILE": str(other["ca.crt"])},
                    {"SERVICE": "agent", "GENSTACK_TLS_CA_FILE": ""}):
            run = _check("grpc", "--address", address, "--timeout", "3", env=env)
            assert run.returncode == 1 and run.stdout.startswith("unhealthy:"), (env, run.stdout + run.stderr)
    finally:
        srv.stop(grace=0)


def test_deploy_tls_names_every_service_of_the_catalogue(tmp_path):
    from cryptography import x509

    from deploy import tls
    from shared.services import implemented_services

    out = tls.main(["--out", str(tmp_path), "--namespace", "prod"])
    assert out == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName))
    for service in [*implemented_services(), "console"]:
        assert {service, f"{service}.prod.svc", f"{service}.prod.svc.cluster.local"} <= names
