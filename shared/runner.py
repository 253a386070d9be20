"""Runs one service as a gRPC server or a Celery worker (`python -m services.<name> grpc|worker`)."""

from __future__ import annotations

import importlib
import logging
import sys

from shared.config import get_settings
from shared.logging import setup_logging
from shared.services import get_spec

log = logging.getLogger(__name__)


def _setup(service: str) -> None:
    settings = get_settings()
    setup_logging(service, settings.log_level, settings.log_json)
    from shared.runtime import configure_torch

    configure_torch()


def run(service: str, role: str, port: int | None = None, concurrency: int = 1) -> int:
    spec = get_spec(service)
    _setup(service)
    if role == "grpc":
        from shared import metrics, tracing
        from shared.grpc_server import Server

        tracing.setup(service)  # before the server and any client channel exist
        module, _, factory = spec.api.partition(":")
        api = getattr(importlib.import_module(module), factory)()
        server = Server(api, spec.port if port is None else port).start()
        metrics.start(f"{service}-grpc")
        # machine-readable line so supervisors and tests can find an ephemeral port
        print(f"GENSTACK_LISTENING {service} {server.port}", flush=True)
        server.serve_forever()
        return 0
    if role == "worker":
        from shared import tracing

        if concurrency > 1 and get_settings().metrics_port is not None:
            # prometheus-client's multiprocess mode, chosen before it is first imported: forked
            # children write their values there and the parent's /metrics adds them up
            import os
            import tempfile

            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="genstack-metrics-"))
        if concurrency == 1:
            tracing.setup(service)  # the solo pool runs tasks in this process (forked children: see celery_app)
        tasks = importlib.import_module(f"{spec.package}.tasks")
        if concurrency == 1:
            # solo pool: load models before consuming, so the first task is not slowed by it
            from shared.client import inproc_api

            inproc_api(service)
        argv = ["worker", "-Q", spec.queue, "-n", f"{service}@%h", "--concurrency", str(concurrency), "-P", "solo"
                if concurrency == 1 else "prefork", "--loglevel", get_settings().log_level, "--without-gossip",
                "--without-mingle"]
        from shared import metrics

        metrics.start(f"{service}-worker")
        from celery import signals

        @signals.worker_ready.connect(weak=False)
        def _ready(**_kw):
            # machine-readable, whatever the log level (Celery's own "ready." is an INFO log line)
            print(f"GENSTACK_WORKER_READY {service} {spec.queue}", flush=True)

        tasks.app.worker_main(argv)
        return 0
    raise ValueError(f"role must be grpc or worker (got {role!r})")


def main(service: str) -> None:
    role = sys.argv[1] if len(sys.argv) > 1 else "grpc"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else None
    sys.exit(run(service, role, port=port))
