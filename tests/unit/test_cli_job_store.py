"""The SQLite job store (embedded jobs on disk) behaves like the memory and Redis stores, and its
jobs can be read, followed and cancelled from another process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from services.orchestrator.store import SqliteJobStore, iter_events

# The interface tests every store passes (tests/unit/test_orchestrator_parts.py), run here against
# the SQLite store (the `store` fixture below overrides theirs in this module).
from tests.unit import test_orchestrator_parts as _shared  # noqa: E402

for _name in ("test_idempotency_key_returns_the_first_job", "test_events_resume_after_any_id_without_loss",
              "test_watchers_block_until_new_events_and_stop_at_the_terminal_one", "test_cancel_flag",
              "test_events_written_behind_keep_their_ids_and_order", "test_a_batch_becomes_visible_at_once",
              "test_concurrent_jobs_write_behind_without_mixing"):
    if hasattr(_shared, _name):
        globals()[_name] = getattr(_shared, _name)


@pytest.fixture
def store(tmp_path):
    return SqliteJobStore(tmp_path / "jobs.sqlite3", retention_s=60)


def test_jobs_are_listed_newest_first(store):
    ids = [uuid.uuid4().hex for _ in range(3)]
    for job in ids:
        store.create(job, {"id": job}, "answer", 1, "")
        time.sleep(0.002)
    assert store.list_ids(0, 10) == ids[::-1]
    assert store.list_ids(1, 1) == [ids[1]]


def test_another_process_reads_follows_and_cancels_a_job(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path, retention_s=60)
    job = uuid.uuid4().hex
    store.create(job, {"state": "running"}, "generate", 2, "")
    store.append_event(job, "job.queued", "", {}, 1)
    reader = textwrap.dedent(f"""
        from services.orchestrator.store import SqliteJobStore, iter_events
        s = SqliteJobStore({str(path)!r}, 60)
        print(s.load({job!r})["state"], flush=True)
        s.request_cancel({job!r})
        print(",".join(e.type for e in iter_events(s, {job!r}, "", lambda: False)), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "running"
    deadline = time.monotonic() + 30
    while not store.cancel_requested(job):  # the other process's write is seen here
        assert time.monotonic() < deadline
        time.sleep(0.05)
    store.append_event(job, "job.cancelled", "", {}, 5)
    assert proc.stdout.readline().strip() == "job.queued,job.cancelled"
    assert proc.wait(30) == 0


def test_finished_jobs_expire_after_the_retention(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3", retention_s=0)
    old, new = uuid.uuid4().hex, uuid.uuid4().hex
    store.create(old, {}, "answer", 3, "")
    store.append_event(old, "job.succeeded", "", {}, 3)
    time.sleep(0.01)
    store.create(new, {}, "answer", 3, "")
    store.finish(new)
    assert store.load(old) is None and store.events(old, "", 0) == []
    assert store.load(new) == {}


def test_a_watcher_in_this_process_wakes_on_a_commit(store):
    job = uuid.uuid4().hex
    store.create(job, {}, "generate", 1, "")
    got = []
    t = threading.Thread(target=lambda: got.extend(e.type for e in iter_events(store, job, "", lambda: False)))
    t.start()
    time.sleep(0.1)
    store.append_event(job, "job.succeeded", "", {}, 3)
    t.join(5)
    assert got == ["job.succeeded"]
