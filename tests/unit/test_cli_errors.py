"""User errors end in one line that names the problem and what to do, never a traceback.

Each case runs the `genstack` command as a subprocess and checks its exit status (2: usage error,
1: failure) and its message. None of them loads a model.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-home")
    e = {**os.environ, "GENSTACK_HOME": str(home), "GENSTACK_DATA_DIR": str(home / "data"),
         "GENSTACK_VALIDATOR_WARM_UP_MODELS": "false"}
    e.pop("GENSTACK_TRANSPORT", None)
    return e


def genstack(*args: str, env: dict, cwd: Path = ROOT, timeout: float = 180) -> tuple[int, str, str]:
    r = subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in r.stdout + r.stderr, f"genstack {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r.returncode, r.stdout, r.stderr


def one_message(stderr: str) -> str:
    """The error line (progress lines start with 'genstack: '); exactly one."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("genstack: ")]
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    return lines[0]


def usage_error(stderr: str, command: str) -> str:
    assert f"usage: genstack {command}" in stderr, stderr
    return [line for line in stderr.splitlines() if ": error: " in line][-1]


def test_missing_file_to_ingest(env):
    code, out, err = genstack("ingest", "docs/", "nosuch-notes.md", env=env)
    assert code == 1 and out == ""
    assert one_message(err) == "no such file or folder: nosuch-notes.md; check the path"


def test_missing_image_and_schema_to_validate(env):
    code, _, err = genstack("validate", "nosuch.png", env=env)
    assert code == 1 and "no such file or folder: nosuch.png" in one_message(err)
    code, _, err = genstack("validate", "--text", "{}", "--schema", "nosuch.json", env=env)
    assert code == 1 and "nosuch.json" in one_message(err)


def test_schema_that_is_not_json(env, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    code, _, err = genstack("validate", "--text", "{}", "--schema", str(bad), env=env)
    assert code == 2 and f"--schema {bad} is not valid JSON" in one_message(err)


def test_job_states_are_words_and_a_wrong_one_lists_them(env):
    code, out, _ = genstack("jobs", "list", "--state", "done", env=env)
    assert code == 0 and out.strip() == "no jobs matching the filters"
    code, _, err = genstack("jobs", "list", "--state", "finished", env=env)
    assert code == 2
    assert "unknown state 'finished'; choose from queued, running, succeeded, failed, cancelled" in usage_error(
        err, "jobs list")


def test_a_busy_port(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = genstack("serve", "generator", "--port", str(port), env=env)
    assert code == 1
    message = one_message(err)
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in message and "--port 0" in message


def test_a_mistyped_flag_shows_the_usage_of_its_command(env):
    code, _, err = genstack("ask", "hello", "--top_k", "3", env=env)
    assert code == 2 and "unrecognized arguments: --top_k 3" in usage_error(err, "ask")
    code, _, err = genstack("jobs", "get", "abc", "--jsn", env=env)
    assert code == 2 and "unrecognized arguments: --jsn" in usage_error(err, "jobs get")


def test_version(env):
    from importlib.metadata import version

    code, out, _ = genstack("--version", env=env)
    assert code == 0 and out.strip() == f"genstack {version('genstack')}"


def test_only_services_with_code_are_offered(env):
    from shared.services import implemented_services

    code, out, _ = genstack("serve", "--help", env=env)
    assert code == 0 and "{" + ",".join(implemented_services()) + "}" in out
    code, _, err = genstack("worker", "nosuch", env=env)
    assert code == 2 and "invalid choice: 'nosuch'" in usage_error(err, "worker")
    # an entry without code is refused by `up` (tests/unit/test_platform_catalogue.py, with a patched catalogue)
    code, _, err = genstack("up", "--services", "nosuch", env=env)
    assert code == 2 and "unknown service 'nosuch'" in one_message(err)


def test_empty_prompts_and_questions_are_refused_before_loading_anything(env):
    code, _, err = genstack("generate", "", env=env)
    assert code == 2 and one_message(err).startswith("error (INVALID_ARGUMENT): prompt: must be a non-empty prompt")
    code, _, err = genstack("ask", "  ", env=env)
    assert code == 2 and "question: must be a non-empty question" in one_message(err)


def test_unknown_job_and_unreachable_server(env):
    code, _, err = genstack("jobs", "get", "0123456789abcdef", env=env)
    assert code == 1 and one_message(err) == "error (NOT_FOUND): no job with id '0123456789abcdef'"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    code, _, err = genstack("jobs", "list", "--transport", "grpc", env={**env, "GENSTACK_ORCHESTRATOR_ADDRESS":
                                                                        f"127.0.0.1:{port}"})
    message = one_message(err)
    assert code == 1 and f"nothing answers at 127.0.0.1:{port}" in message and "genstack up" in message


def test_deleting_a_collection(env, tmp_path):
    code, _, err = genstack("collections", "delete", "nosuch", env=env)
    assert code == 2 and "pass --yes to confirm" in one_message(err)
    code, _, err = genstack("collections", "delete", "nosuch", "--yes", env=env)
    assert code == 1 and "collection 'nosuch' does not exist" in one_message(err)


def test_a_collection_is_deleted_with_yes_and_is_gone_after(env, tmp_path):
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nThe retriever keeps chunks in collections.\n")
    code, _, err = genstack("ingest", str(note), "-c", "to_delete", "--quiet", env=env)
    assert code == 0, err
    code, out, _ = genstack("collections", env=env)
    assert code == 0 and "to_delete" in out
    code, out, err = genstack("collections", "delete", "to_delete", "--yes", env=env)
    assert code == 0 and "to_delete" in out, err
    code, _, err = genstack("search", "chunks", "-c", "to_delete", env=env)
    assert code == 1 and "collection 'to_delete' does not exist" in one_message(err)


def test_ask_takes_a_job_deadline(env):
    code, _, err = genstack("ask", "what is x?", "--timeout", "-1", env=env)
    assert code == 2 and "deadline_s: must be between 0 and 3600 seconds" in one_message(err)
    code, _, err = genstack("ask", "what is x?", "--timeout", "0.001", env=env)
    assert code == 1 and one_message(err) == "the job's deadline passed"


def test_jobs_cancel_says_what_happened(env):
    """A finished job: the answer is a sentence, not an enum name and a boolean."""
    from services.orchestrator.store import SqliteJobStore

    store = SqliteJobStore(Path(env["GENSTACK_DATA_DIR"]) / "orchestrator" / "jobs.sqlite3", 3600)
    job_id = "f" * 32
    store.create(job_id, {"jobId": job_id, "kind": "generate", "state": "JOB_STATE_SUCCEEDED",
                          "createdAt": "2026-01-01T00:00:00Z", "durationMs": 1500}, "generate", 3, "")
    code, out, _ = genstack("jobs", "cancel", job_id, env=env)
    assert code == 0 and out.strip() == f"job {job_id} already succeeded; nothing to cancel"
    code, out, _ = genstack("jobs", "list", env=env)
    assert code == 0 and job_id in out and "succeeded" in out and "1.5 s" in out


def test_jobs_cancel_of_a_running_job_says_it_stops_at_its_next_step(env):
    """A job another live process runs (it holds the lease): the cancel is a request, said so."""
    from services.orchestrator.store import SqliteJobStore

    store = SqliteJobStore(Path(env["GENSTACK_DATA_DIR"]) / "orchestrator" / "jobs.sqlite3", 3600)
    job_id = "d" * 32
    store.create(job_id, {"jobId": job_id, "kind": "answer", "state": "JOB_STATE_RUNNING",
                          "createdAt": "2026-01-01T00:00:00Z"}, "answer", 2, "", owner="another-process", lease_s=600)
    code, out, _ = genstack("jobs", "cancel", job_id, env=env)
    assert code == 0 and out.strip() == (
        f"job {job_id} is running: cancel requested; it stops at its next step or token "
        f"(follow it with `genstack jobs watch {job_id}`)")
    assert store.cancel_requested(job_id)


def test_jobs_cancel_of_an_orphaned_job_ends_it_at_once(env):
    """A RUNNING job whose process is gone (no live lease): cancel ends it CANCELLED there and then."""
    from services.orchestrator.store import SqliteJobStore

    store = SqliteJobStore(Path(env["GENSTACK_DATA_DIR"]) / "orchestrator" / "jobs.sqlite3", 3600)
    job_id = "c" * 32
    store.create(job_id, {"jobId": job_id, "kind": "answer", "state": "JOB_STATE_RUNNING",
                          "createdAt": "2026-01-01T00:00:00Z"}, "answer", 2, "")
    code, out, _ = genstack("jobs", "cancel", job_id, env=env)
    assert code == 0 and out.strip() == f"job {job_id} cancelled"
    code, out, _ = genstack("jobs", "get", job_id, env=env)
    assert code == 0 and "state     cancelled" in out


def test_a_running_job_shows_its_time_so_far(env):
    from datetime import UTC, datetime, timedelta

    from services.orchestrator.store import SqliteJobStore

    store = SqliteJobStore(Path(env["GENSTACK_DATA_DIR"]) / "orchestrator" / "jobs.sqlite3", 3600)
    job_id = "e" * 32
    started = (datetime.now(UTC) - timedelta(seconds=42)).isoformat().replace("+00:00", "Z")
    store.create(job_id, {"jobId": job_id, "kind": "answer", "state": "JOB_STATE_RUNNING", "createdAt": started},
                 "answer", 2, "")
    code, out, _ = genstack("jobs", "get", job_id, env=env)
    assert code == 0 and "state     running" in out
    seconds = float(out.split("time      ")[1].split(" s")[0])
    assert 42 <= seconds < 120 and "so far" in out


def test_validate_list_shows_whole_numbers_as_integers(env):
    import json

    code, out, _ = genstack("validate", "--list", env=env)
    params = [json.loads(line.split("params: ", 1)[1]) for line in out.splitlines()
              if line.lstrip().startswith("params: ")]
    assert code == 0 and params

    def numbers(value):
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v)]
        return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []

    found = [n for p in params for n in numbers(p)]
    assert any(isinstance(n, int) for n in found)
    assert not [n for n in found if isinstance(n, float) and n.is_integer()]  # 4000, not 4000.0


def test_every_option_has_help():
    from shared.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:  # noqa: SLF001
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not action.help and not isinstance(action, argparse._HelpAction):  # noqa: SLF001
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), ["genstack"])
    assert not missing, f"options without help: {missing}"
