"""`genstack up`: every implemented service's gRPC server and Celery worker as separate processes
on this machine, wired together through Redis and the catalogue's ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from shared.config import get_client_settings
from shared.errors import InvalidArgument
from shared.services import SERVICES, implemented_services


def plan(services: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(label, argv) of every process `up` starts: a server and a worker per service."""
    names = services or implemented_services()
    for name in names:
        if name not in SERVICES:
            raise InvalidArgument(f"unknown service {name!r}; choose from {', '.join(implemented_services())}",
                                  field="services")
        if not SERVICES[name].implemented:
            raise InvalidArgument(f"the {name} service is not implemented yet; choose from "
                                  f"{', '.join(implemented_services())}", field="services")
    procs = []
    for name in names:
        port = get_client_settings().address(name).rsplit(":", 1)[1]
        procs.append((f"{name} grpc", [sys.executable, "-m", "shared.cli", "serve", name, "--port", port]))
        procs.append((f"{name} worker", [sys.executable, "-m", "shared.cli", "worker", name]))
    return procs


def metrics_ports(labels: list[str]) -> dict[str, int]:
    """Each process its own metrics port, counting up from GENSTACK_METRICS_PORT (none when it is
    unset; 0 lets every process pick a free one, which it prints as `GENSTACK_METRICS`)."""
    from shared.config import get_settings

    base = get_settings().metrics_port
    if base is None:
        return {}
    return {label: (base + i if base else 0) for i, label in enumerate(labels)}


def run_stack(services: list[str] | None = None) -> int:
    from shared.readiness import report_readiness_in_background

    planned = plan(services)
    names = services or implemented_services()
    env = {**os.environ, "GENSTACK_TRANSPORT": os.environ.get("GENSTACK_TRANSPORT", "grpc")}
    ports = metrics_ports([label for label, _ in planned])
    procs = [(label, subprocess.Popen(argv, env={**env, **({"GENSTACK_METRICS_PORT": str(ports[label])}
                                                          if label in ports else {})}))
             for label, argv in planned]
    if ports:
        print("genstack up: metrics at " + ", ".join(f"{label} :{port}/metrics" for label, port in ports.items()),
              flush=True)
    print(f"genstack up: {len(procs)} processes ({', '.join(names)}); Ctrl-C stops them", flush=True)
    stopping = threading.Event()

    def stop(*_):
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    report_readiness_in_background(names, stop=stopping.is_set)
    try:
        while not stopping.is_set():
            for label, p in procs:
                if p.poll() is not None:
                    print(f"genstack up: {label} exited with {p.returncode}; stopping", file=sys.stderr)
                    stopping.set()
            time.sleep(0.5)
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in procs:
            try:
                p.wait(40)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0
