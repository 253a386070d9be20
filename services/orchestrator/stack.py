"""`genstack up`: every existing service's gRPC server and Celery worker as separate processes
on this machine, wired together through Redis and their default ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib.util import find_spec

from shared.config import get_client_settings
from shared.services import SERVICES


def available_services() -> list[str]:
    return [name for name in SERVICES if find_spec(f"services.{name}.grpc_api") is not None]


def run_stack(services: list[str] | None = None) -> int:
    names = services or available_services()
    env = {**os.environ, "GENSTACK_TRANSPORT": os.environ.get("GENSTACK_TRANSPORT", "grpc")}
    procs: list[tuple[str, subprocess.Popen]] = []
    for name in names:
        port = get_client_settings().address(name).rsplit(":", 1)[1]
        for role, args in (("grpc", ["serve", name, "--port", port]), ("worker", ["worker", name])):
            procs.append((f"{name} {role}", subprocess.Popen([sys.executable, "-m", "shared.cli", *args], env=env)))
    print(f"genstack up: {len(procs)} processes ({', '.join(names)}); Ctrl-C stops them", flush=True)
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for label, p in procs:
                if p.poll() is not None:
                    print(f"genstack up: {label} exited with {p.returncode}; stopping", file=sys.stderr)
                    stopping = True
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
