"""Helpers for tests that start real service processes (gRPC servers, Celery workers)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


class ServiceProcess:
    """`genstack serve|worker <service>` as a child process, stopped with SIGTERM."""

    def __init__(self, service: str, role: str, env: dict[str, str] | None = None, startup_timeout: float = 180):
        self.service, self.role = service, role
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=300)
        self._listening = threading.Event()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        # through the console command's code path: `genstack serve <svc>` / `genstack worker <svc>`
        if self.role == "grpc":
            args = [sys.executable, "-m", "shared.cli", "serve", self.service, "--port", "0"]  # port announced
        else:
            args = [sys.executable, "-m", "shared.cli", "worker", self.service]
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._drain, daemon=True).start()
        if self.role == "grpc":
            self._wait_grpc()
        else:
            self._wait_worker()
        return self

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("GENSTACK_LISTENING"):
                self.port = int(line.split()[2])
                self._listening.set()

    def _fail(self, why: str) -> None:
        self.stop()
        tail = "\n".join(self.lines)
        raise RuntimeError(f"{self.service} {self.role}: {why}\n--- last output ---\n{tail}")

    def _wait_grpc(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        if not self._listening.wait(self.startup_timeout):
            self._fail("never announced its port")
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self._fail("exited during start-up")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self._fail("not SERVING in time")

    def _wait_worker(self) -> None:
        from shared.celery_app import make_celery
        from shared.config import Settings, get_settings

        url = self.env.get("GENSTACK_REDIS_URL")  # ping the worker on its own broker
        app = make_celery(Settings(redis_url=url) if url else get_settings())
        deadline = time.monotonic() + self.startup_timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self._fail("exited during start-up")
                replies = app.control.ping(timeout=1.0) or []
                if any(name.startswith(f"{self.service}@") for reply in replies for name in reply):
                    return
            self._fail("never answered a ping")
        finally:
            app.close()

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of a test's own on a free loopback port, optionally locked down the way a
    production Redis is: the default user off, one ACL user per role (`acl`), and TLS only (`tls`,
    with a private CA from deploy.tls). `url` is what genstack's services are given."""

    PASSWORD = "s3cret-for-tests"

    def __init__(self, folder: Path, acl: bool = False, tls: bool = False, extra: tuple[str, ...] = ()):
        self.folder, self.acl, self.tls, self.extra = Path(folder), acl, tls, extra
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.ca_file: Path | None = None

    @property
    def url(self) -> str:
        return self.url_for("genstack", self.PASSWORD) if self.acl else self._url("")

    def url_for(self, user: str, password: str) -> str:
        return self._url(f"{user}:{password}@")

    @property
    def anonymous_url(self) -> str:
        """The server's URL without a user (the default user, which an ACL server turns off)."""
        return self._url("")

    def _url(self, auth: str) -> str:
        if not self.tls:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        # redis-py and Celery both read the CA and the verification mode from the URL's query
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={self.ca_file}"

    def start(self) -> PrivateRedis:
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.folder), *self.extra]
        if self.acl:
            acl_file = self.folder / "users.acl"
            # the default user is off; genstack's services get everything but administration; an
            # operator's read-only role (dashboards) reads but cannot write
            acl_file.write_text(
                "user default off\n"
                f"user genstack on >{self.PASSWORD} ~* &* +@all -@admin -flushall -flushdb -debug\n"
                f"user observer on >{self.PASSWORD}-ro ~* &* +@read +ping -@admin\n")
            args += ["--aclfile", str(acl_file)]
        if self.tls:
            from deploy.tls import issue

            paths = issue(self.folder / "tls")
            self.ca_file = paths["ca.crt"]
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(paths["tls.crt"]),
                     "--tls-key-file", str(paths["tls.key"]), "--tls-ca-cert-file", str(self.ca_file),
                     "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} during start-up")
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    if client.ping():
                        return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.1)
        raise RuntimeError(f"private redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def redis_db_url(url: str, db: int) -> str:
    """The same Redis (credentials, TLS options) with another database number."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def redis_db(url: str) -> int:
    from urllib.parse import urlsplit

    return int(urlsplit(url).path.strip("/") or 0)
