"""The container's health command.

A gRPC server is healthy when its standard health service (grpc.health.v1) answers SERVING; a
server reports SERVING only after warm-up, and NOT_SERVING while it drains on SIGTERM. A Celery
worker has no port; it is healthy while its broker answers (a busy solo-pool worker cannot answer
a Celery ping, so pinging the worker itself would mark long tasks unhealthy).

    python -m deploy.healthcheck                     # role and service from $ROLE and $SERVICE
    python -m deploy.healthcheck grpc --address 127.0.0.1:50053 --service genstack.generator.v1.GeneratorService
    python -m deploy.healthcheck broker --url redis://redis:6379/0

Exit status: 0 healthy, 1 unhealthy, 2 usage error. One line on stdout says why (Docker keeps it
in `docker inspect`; Kubernetes shows it in the probe's event).
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2


def check_grpc(address: str, service: str = "", timeout: float = 5.0) -> tuple[bool, str]:
    """Ask grpc.health.v1.Health/Check; healthy only on SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(grpc, address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"{address} {service or '<server>'}: {exc.code().name} {exc.details() or ''}".rstrip()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address} {service or '<server>'}: {status}"


def _channel(grpc, address: str):
    """Plain, or TLS when the process trusts a CA (GENSTACK_TLS_CA_FILE), presenting its client
    certificate where it has one. A probe dials 127.0.0.1, which the certificate need not name: it
    checks the name it is told (GENSTACK_TLS_SERVER_NAME) or the pod's own service name ($SERVICE)."""
    from shared.auth import channel_credentials, get_tls_settings

    credentials = channel_credentials()
    if credentials is None:
        return grpc.insecure_channel(address)
    name = get_tls_settings().server_name or os.environ.get("SERVICE", "")
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(address, credentials, options=options)


def check_broker(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Connect to the Celery broker; Redis answers PING, other brokers a plain connect."""
    shown = _redact(url)
    try:
        if url.split(":", 1)[0] in ("redis", "rediss", "unix"):
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()
        else:
            from kombu import Connection

            with Connection(url, connect_timeout=timeout) as conn:
                conn.connect()
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", said in one line
        return False, f"broker {shown}: {type(exc).__name__}: {exc}"
    return True, f"broker {shown}: reachable"


def _redact(url: str) -> str:
    """Never print a broker password into health logs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{creds}@{host}"
    return url


def _default_address(service: str | None) -> str | None:
    if not service:
        return None
    from shared.services import get_spec

    return f"127.0.0.1:{get_spec(service).port}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "mode", nargs="?", choices=("auto", "grpc", "broker"), default="auto",
        help="grpc: ask grpc.health.v1; broker: reach the Celery broker; auto (default): grpc when $ROLE is "
        "grpc, broker when it is worker",
    )
    parser.add_argument("--address", help="host:port of the gRPC server (default: 127.0.0.1 and $SERVICE's port)")
    parser.add_argument("--service", default="", help="health service name to check ('' = the whole server)")
    parser.add_argument("--url", help="broker URL (default: the GENSTACK_BROKER_URL / GENSTACK_REDIS_URL setting)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mode = args.mode
    if mode == "auto":
        role = os.environ.get("ROLE", "grpc")
        if role not in ("grpc", "worker"):
            print(f"ROLE must be grpc or worker (got {role!r})")
            return EXIT_USAGE
        mode = "grpc" if role == "grpc" else "broker"
    if mode == "grpc":
        try:
            address = args.address or _default_address(os.environ.get("SERVICE"))
        except ValueError as exc:
            print(str(exc))
            return EXIT_USAGE
        if not address:
            print("no --address given and $SERVICE is not set")
            return EXIT_USAGE
        ok, line = check_grpc(address, args.service, args.timeout)
    else:
        url = args.url
        if not url:
            from shared.config import Settings

            url = Settings().celery_broker
        ok, line = check_broker(url, args.timeout)
    print(("healthy: " if ok else "unhealthy: ") + line)
    return EXIT_HEALTHY if ok else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
