"""Tracing is off unless the standard OTEL_* variables ask for it, and costs nothing then: a fresh
process with no OTEL_* set does not even import the OpenTelemetry SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import tracing

ROOT = Path(__file__).resolve().parents[2]
OTEL = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
])
def test_the_standard_variables_turn_it_on(monkeypatch, env, on):
    for name in OTEL:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing.wanted() is on


def test_off_by_default_loads_no_sdk_and_records_nothing():
    script = "\n".join([
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r})",
        "from shared import tracing",
        "on = tracing.setup('validator')",
        "with tracing.span('work', {'k': 1}):",
        "    tracing.record('inner', 0.01)",
        "print(json.dumps({'on': on, 'enabled': tracing.enabled(),",
        "                  'sdk': 'opentelemetry.sdk.trace' in sys.modules}))",
    ])
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"on": False, "enabled": False, "sdk": False}
