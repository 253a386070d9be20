"""`genstack up` starts its processes, says when each server is SERVING and when the stack is ready,
and stops everything on Ctrl-C. Run with the orchestrator alone (no model to load), on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_up_reports_readiness_and_stops_on_ctrl_c(redis_client, tmp_path):
    port = _free_port()
    env = {**os.environ, "GENSTACK_ORCHESTRATOR_ADDRESS": f"127.0.0.1:{port}", "GENSTACK_HOME": str(tmp_path),
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "up", "--services", "orchestrator"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if "the stack is ready" in line:
                break
        out = "\n".join(lines)
        assert "genstack up: 2 processes (orchestrator)" in out
        assert f"genstack up: orchestrator is SERVING on 127.0.0.1:{port}" in out
        assert "genstack up: the stack is ready: 1 service SERVING" in out, out[-3000:]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, rest[-3000:]
        assert "Traceback" not in out + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
