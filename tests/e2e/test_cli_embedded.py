"""The first-run path as a user meets it, with real models (the small one), each command its own
process: asking before ingesting, progress lines, `ask --json` for pipes, and the job it printed
looked up afterwards by `jobs list/get/watch` in new processes, with no server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("embedded-home")
    e = {**os.environ, "GENSTACK_HOME": str(home), "GENSTACK_DATA_DIR": str(home / "data"),
         "GENSTACK_GENERATOR_DEFAULT_MODEL": "smollm2-135m", "GENSTACK_ORCHESTRATOR_ANSWER_MAX_NEW_TOKENS": "24",
         "GENSTACK_TORCH_THREADS": "1",
         # deadlines are checked elsewhere; here a busy 2-core machine must not turn slowness into failures
         "GENSTACK_DEFAULT_DEADLINE_S": "3000", "GENSTACK_ORCHESTRATOR_DEFAULT_DEADLINE_S": "3000"}
    e.pop("GENSTACK_TRANSPORT", None)
    return e


def genstack(*args, env, timeout=600):
    r = subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in r.stdout + r.stderr, f"genstack {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.mark.timeout(2400)  # five model-loading processes in a row: minutes on a busy 2-core machine
def test_first_run_path(env, tmp_path):
    # 1. asking before ingesting: a hint, no empty Sources list, exit 1
    r = genstack("ask", "What does the validator return?", "--collection", "notyet", "--max-retries", "0", env=env)
    assert r.returncode == 1
    assert "nothing has been ingested into collection 'notyet' yet; run `genstack ingest" in r.stderr
    assert "Sources" not in r.stdout

    # 2. ingest reports per embedded slice without a terminal, and --quiet silences it
    doc = tmp_path / "validator.md"
    doc.write_text((ROOT / "docs" / "validator.md").read_text()[:6000])
    r = genstack("ingest", str(doc), "--collection", "handbook", env=env)
    assert r.returncode == 0 and "into 'handbook'" in r.stdout
    assert "genstack: ingest → handbook: embedding" in r.stderr and "chunks written" in r.stderr
    r = genstack("ingest", str(doc), "--collection", "handbook", "--quiet", env=env)
    assert r.returncode == 0 and r.stderr.strip() == ""

    # 3. ask --json: stdout is one JSON document; progress goes to stderr as JSON lines
    r = genstack("ask", "What does the validator return?", "--collection", "handbook", "--max-retries", "0",
                 "--json", env=env)
    assert r.returncode in (0, 1)  # 1: the small model's answer failed validation, a legitimate verdict
    record = json.loads(r.stdout)
    job_id = record["jobId"]
    assert record["kind"] == "answer" and record["answer"]["attempts"] == 1
    assert all(line.startswith("{") for line in r.stderr.splitlines() if line.strip())
    steps = [json.loads(line).get("step") for line in r.stderr.splitlines() if line.startswith("{")]
    assert {"retrieve", "generate_answer", "validate_answer"} <= set(steps)
    assert any("loading model smollm2-135m" in line for line in r.stderr.splitlines())

    # 4. the job outlives the process that ran it
    r = genstack("jobs", "list", env=env)
    assert r.returncode == 0 and job_id in r.stdout
    r = genstack("jobs", "get", job_id, env=env)
    assert r.returncode == 0 and f"job {job_id}" in r.stdout and "generate_answer" in r.stdout
    assert "What does the validator return?" in r.stdout
    r = genstack("jobs", "get", job_id, "--json", env=env)
    steps = json.loads(r.stdout)["steps"]
    assert isinstance(steps[0]["input"], dict)  # JSON inside strings decoded
    r = genstack("jobs", "watch", job_id, env=env)
    assert r.returncode == 0 and "job.queued" in r.stdout and ("job.succeeded" in r.stdout or "job.failed" in r.stdout)

    # 5. generate ends its text with a newline
    r = genstack("generate", "Say hi.", "--max-new-tokens", "4", "--temperature", "0", env=env)
    assert r.returncode == 0 and r.stdout.endswith("\n") and "tok/s" in r.stderr


def test_generate_with_a_response_format(env, tmp_path):
    """`genstack generate --json-schema / --regex / --choice`, embedded: the output obeys the format,
    and a format the engine refuses is one sentence naming the field, exit 2 and no traceback."""
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                                   "age": {"type": "integer", "minimum": 0}},
                                  "required": ["name", "age"], "additionalProperties": False}))
    common = ("--model", "smollm2-135m", "--temperature", "0", "--max-new-tokens", "48")
    r = genstack("generate", "Describe a person as JSON.", "--json-schema", str(schema), *common, env=env)
    assert r.returncode == 0, r.stderr
    person = json.loads(r.stdout.strip())
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    r = genstack("generate", "A product code:", "--regex", "[A-Z]{3}-[0-9]{4}", *common, env=env)
    assert r.returncode == 0 and len(r.stdout.strip()) == 8 and r.stdout.strip()[3] == "-", r.stdout
    r = genstack("generate", "Is the sky green?", "--choice", "yes", "--choice", "no", *common, env=env)
    assert r.returncode == 0 and r.stdout.strip() in ("yes", "no"), r.stdout
    r = genstack("generate", "Anything", "--regex", "([a-z]", *common, env=env)
    assert r.returncode == 2 and "response_format.regex" in r.stderr and r.stdout == "", r.stderr
