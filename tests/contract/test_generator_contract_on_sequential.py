"""The generator's contract suite, unchanged, on the sequential engine: the suite itself runs on the
default (continuous batching, issue 19); this runs the same module in a child pytest with
GENSTACK_GENERATOR_ENGINE=sequential, so the inproc core, the gRPC server process and the Celery
worker all run the one-request-at-a-time engine too."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow


def test_the_generator_contract_passes_on_the_sequential_engine():
    env = {**os.environ, "GENSTACK_GENERATOR_ENGINE": "sequential"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/contract/test_generator_contract.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " failed" not in proc.stdout, tail
