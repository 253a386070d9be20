"""Job state and events: in SQLite on disk (embedded), in memory (tests), or in Redis (a hash and a
stream per job).

Records are the proto JSON of `Job`; events are appended to a per-job log whose ids only grow,
so a watcher that reconnects with the last id it saw misses nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
import tenacity

from shared.errors import Unavailable

log = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.cancelled"})


@dataclass
class StoredEvent:
    event_id: str
    type: str
    step: str
    data: dict
    time: float
    state: int


class JobStore:
    """Interface shared by both stores."""

    def create(self, job_id: str, record: dict, kind: str, state: int, idempotency_key: str) -> tuple[str, bool]:
        """Store a new job; with a key already used, return (existing id, False)."""
        raise NotImplementedError

    def save(self, job_id: str, record: dict | Callable[[], dict], state: int) -> None:
        """Store the record; a callable is called when the write happens (the Redis store writes
        behind, so serialising moves off the job's thread too)."""
        raise NotImplementedError

    def load(self, job_id: str) -> dict | None:
        raise NotImplementedError

    def append_event(self, job_id: str, type_: str, step: str, data: dict, state: int, after: str = "") -> str:
        """Append an event and return its id. `after` is the job's previous event id, when the
        caller knows it: the Redis store then writes behind and still returns the id at once."""
        raise NotImplementedError

    def events(self, job_id: str, after: str, block_s: float) -> list[StoredEvent]:
        """Events after `after` ("" = from the start); waits up to block_s for new ones."""
        raise NotImplementedError

    def request_cancel(self, job_id: str) -> None:
        raise NotImplementedError

    def cancel_requested(self, job_id: str) -> bool:
        raise NotImplementedError

    def list_ids(self, start: int, count: int) -> list[str]:
        """Job ids newest first."""
        raise NotImplementedError

    def finish(self, job_id: str) -> None:
        """Apply retention to a finished job."""

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Writes made inside reach readers together (an event and the record it describes)."""
        yield

    def flush(self, job_id: str | None = None) -> None:
        """Wait until every write made so far is stored; raises Unavailable when one of the job's
        writes (any job's, without an id) failed."""


class MemoryJobStore(JobStore):
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._records: dict[str, dict] = {}
        self._events: dict[str, list[StoredEvent]] = {}
        self._keys: dict[str, str] = {}
        self._cancel: set[str] = set()
        self._order: list[str] = []

    def create(self, job_id, record, kind, state, idempotency_key):
        with self._lock:
            if idempotency_key:
                existing = self._keys.get(idempotency_key)
                if existing:
                    return existing, False
                self._keys[idempotency_key] = job_id
            self._records[job_id] = record
            self._events[job_id] = []
            self._order.append(job_id)
            return job_id, True

    def save(self, job_id, record, state):
        with self._lock:
            self._records[job_id] = record() if callable(record) else record

    def load(self, job_id):
        with self._lock:
            rec = self._records.get(job_id)
            return json.loads(json.dumps(rec)) if rec is not None else None

    def append_event(self, job_id, type_, step, data, state, after=""):
        with self._lock:
            log = self._events.setdefault(job_id, [])
            event = StoredEvent(str(len(log) + 1), type_, step, data, time.time(), state)
            log.append(event)
            self._lock.notify_all()
            return event.event_id

    def events(self, job_id, after, block_s):
        start = int(after or 0)
        deadline = time.monotonic() + block_s
        with self._lock:
            while True:
                log = self._events.get(job_id, [])
                if len(log) > start:
                    return log[start:]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._lock.wait(remaining)

    def request_cancel(self, job_id):
        with self._lock:
            self._cancel.add(job_id)

    def cancel_requested(self, job_id):
        with self._lock:
            return job_id in self._cancel

    def list_ids(self, start, count):
        with self._lock:
            newest = self._order[::-1]
            return newest[start : start + count]


class SqliteJobStore(JobStore):
    """Jobs in one SQLite file (WAL mode), so that an embedded job outlives the process that ran it:
    `genstack jobs list/get/watch` read it from another process without any server.

    Every write is its own transaction (or one per `batch()`), so `flush()` has nothing to wait
    for. Watchers in the same process are woken at once; watchers in another process poll.
    """

    POLL_S = 0.05

    def __init__(self, path: Path | str, retention_s: int, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_s
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._cond = threading.Condition()
        self._db().executescript(_SQLITE_SCHEMA)  # idempotent; executescript commits by itself

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid, self._local.depth = db, os.getpid(), 0
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        outer = self._local.depth == 0
        if outer:
            db.execute("BEGIN IMMEDIATE")
        self._local.depth += 1
        try:
            yield db
        except BaseException:
            self._local.depth -= 1
            if outer:
                db.execute("ROLLBACK")
            raise
        self._local.depth -= 1
        if outer:
            db.execute("COMMIT")
            with self._cond:
                self._cond.notify_all()

    def create(self, job_id, record, kind, state, idempotency_key):
        now = time.time()
        with self._tx() as db:
            if idempotency_key:
                row = db.execute("SELECT job_id FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if row:
                    return row[0], False
            db.execute(
                "INSERT INTO jobs (job_id, record, kind, state, idempotency_key, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, json.dumps(record), kind, state, idempotency_key or None, now, now),
            )
        return job_id, True

    def save(self, job_id, record, state):
        doc = record() if callable(record) else record
        with self._tx() as db:
            db.execute("UPDATE jobs SET record = ?, state = ?, updated = ? WHERE job_id = ?",
                       (json.dumps(doc), state, time.time(), job_id))

    def load(self, job_id):
        row = self._db().execute("SELECT record FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def append_event(self, job_id, type_, step, data, state, after=""):
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
            db.execute("INSERT INTO events (job_id, seq, type, step, data, time, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (job_id, seq, type_, step, json.dumps(data), time.time(), state))
        return str(seq)

    def _events_after(self, job_id: str, start: int) -> list[StoredEvent]:
        rows = self._db().execute(
            "SELECT seq, type, step, data, time, state FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT 500",
            (job_id, start),
        ).fetchall()
        return [StoredEvent(str(seq), t, s, json.loads(d), tm, st) for seq, t, s, d, tm, st in rows]

    def events(self, job_id, after, block_s):
        start = int(after or 0)
        deadline = time.monotonic() + block_s
        while True:
            found = self._events_after(job_id, start)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            with self._cond:  # woken by a commit in this process; other processes' commits are polled
                self._cond.wait(min(remaining, self.POLL_S))

    def request_cancel(self, job_id):
        with self._tx() as db:
            db.execute("UPDATE jobs SET cancel = 1 WHERE job_id = ?", (job_id,))

    def cancel_requested(self, job_id):
        row = self._db().execute("SELECT cancel FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def list_ids(self, start, count):
        rows = self._db().execute("SELECT job_id FROM jobs ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
                                  (count, start)).fetchall()
        return [r[0] for r in rows]

    def finish(self, job_id):
        """Drop jobs (and their events) that finished more than retention_s ago."""
        cutoff = time.time() - self.retention_s
        with self._tx() as db:
            old = [r[0] for r in db.execute("SELECT job_id FROM jobs WHERE updated < ? AND job_id != ?",
                                            (cutoff, job_id))]
            for chunk in range(0, len(old), 500):
                ids = old[chunk : chunk + 500]
                marks = ",".join("?" * len(ids))
                db.execute(f"DELETE FROM events WHERE job_id IN ({marks})", ids)
                db.execute(f"DELETE FROM jobs WHERE job_id IN ({marks})", ids)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self._tx():
            yield


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    kind TEXT NOT NULL,
    state INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    cancel INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    step TEXT NOT NULL,
    data TEXT NOT NULL,
    time REAL NOT NULL,
    state INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""


class RedisJobStore(JobStore):
    """Records in a hash and events in a stream per job.

    A running job's writes (its events and record saves, about twenty per answer job) go through
    a write-behind queue: one thread sends them in order, several per round trip, so a job does
    not wait on Redis between its steps. Event ids are allocated on the caller's side from the
    previous id, so they are known at once; a job ends with `flush()`, which waits for every
    write and reports a failed one.
    """

    PREFIX = "genstack:job:"

    def __init__(self, url: str, retention_s: int) -> None:
        self.r = redis.Redis.from_url(url)
        self.retention_s = retention_s
        self._writer = _WriteBehind(self.r)

    def _key(self, job_id: str, suffix: str = "") -> str:
        return f"{self.PREFIX}{job_id}{suffix}"

    def create(self, job_id, record, kind, state, idempotency_key):
        if idempotency_key:
            key = f"genstack:jobkey:{idempotency_key}"
            if not self.r.set(key, job_id, nx=True, ex=self.retention_s):
                existing = self.r.get(key)
                if existing:
                    return existing.decode(), False
        pipe = self.r.pipeline()
        pipe.hset(self._key(job_id), mapping={"record": json.dumps(record), "state": state, "kind": kind})
        pipe.zadd("genstack:jobs", {job_id: time.time()})
        pipe.execute()
        return job_id, True

    def save(self, job_id, record, state):
        key = self._key(job_id)

        def write(pipe):
            doc = record() if callable(record) else record
            pipe.hset(key, mapping={"record": json.dumps(doc), "state": state})

        self._writer.put(job_id, write)

    def load(self, job_id):
        raw = self.r.hget(self._key(job_id), "record")
        return json.loads(raw) if raw else None

    def append_event(self, job_id, type_, step, data, state, after=""):
        fields = {"type": type_, "step": step, "data": json.dumps(data), "time": repr(time.time()), "state": state}
        key = self._key(job_id, ":events")
        if not after:
            return self.r.xadd(key, fields).decode()
        event_id = next_stream_id(after)
        self._writer.put(job_id, lambda pipe: pipe.xadd(key, fields, id=event_id))
        return event_id

    def events(self, job_id, after, block_s):
        key = self._key(job_id, ":events")
        if after:
            items = self.r.xrange(key, min=f"({after}", count=500)
        else:
            items = self.r.xrange(key, count=500)
        if not items and block_s > 0:
            got = self.r.xread({key: after or "0-0"}, block=max(1, int(block_s * 1000)), count=500)
            items = got[0][1] if got else []
        out = []
        for event_id, f in items:
            f = {k.decode(): v.decode() for k, v in f.items()}
            out.append(StoredEvent(event_id.decode(), f["type"], f["step"], json.loads(f["data"]), float(f["time"]),
                                   int(f["state"])))
        return out

    def request_cancel(self, job_id):
        self.r.set(self._key(job_id, ":cancel"), "1", ex=self.retention_s)

    def cancel_requested(self, job_id):
        return bool(self.r.exists(self._key(job_id, ":cancel")))

    def list_ids(self, start, count):
        return [i.decode() for i in self.r.zrevrange("genstack:jobs", start, start + count - 1)]

    def finish(self, job_id):
        keys = [self._key(job_id, suffix) for suffix in ("", ":events", ":cancel")]

        def write(pipe):
            for key in keys:
                pipe.expire(key, self.retention_s)

        self._writer.put(job_id, write)

    def batch(self):
        return self._writer.batch()

    def flush(self, job_id=None):
        self._writer.flush(job_id)


def next_stream_id(after: str) -> str:
    """The next Redis stream id after `after`: the current millisecond, or `after`'s sequence + 1
    when the clock has not moved past it (ids only grow, even if the clock steps back)."""
    last_ms, _, last_seq = after.partition("-")
    now_ms = int(time.time() * 1000)
    if now_ms > int(last_ms):
        return f"{now_ms}-0"
    return f"{last_ms}-{int(last_seq or 0) + 1}"


class _WriteBehind:
    """Sends queued Redis writes from one thread, in order, all waiting ones per round trip.

    Each batch is a MULTI/EXEC transaction, so what `batch()` groups becomes visible at once.
    A connection error is retried with backoff for a few seconds. A write that still fails is
    logged and charged to the job that made it: `flush(job_id)` reports that job's failures
    only, and waits only for the writes queued before it, not for other jobs' later ones.
    """

    MAX_BATCH = 256

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._queue: queue.Queue = queue.Queue()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._errors: dict[str, list[str]] = {}

    def put(self, owner: str, write: Callable) -> None:
        held = getattr(self._local, "held", None)
        if held is not None:
            held.append((owner, write))
            return
        self._enqueue([(owner, write)])

    def _enqueue(self, item: list | threading.Event) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="job-store-writer", daemon=True)
                self._thread.start()
        self._queue.put(item)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        outer = getattr(self._local, "held", None)
        if outer is not None:  # nested: the outermost batch sends
            yield
            return
        self._local.held = held = []
        try:
            yield
        finally:
            self._local.held = None
            if held:
                self._enqueue(held)

    def flush(self, owner: str | None = None) -> None:
        """Wait for the writes queued so far; raise Unavailable if any of `owner`'s failed (any
        job's, without an owner). Each failure is reported once."""
        done = threading.Event()
        self._enqueue(done)
        done.wait()
        with self._lock:
            if owner is None:
                errors = [e for errs in self._errors.values() for e in errs]
                self._errors.clear()
            else:
                errors = self._errors.pop(owner, [])
        if errors:
            raise Unavailable(f"the job store could not save {len(errors)} write(s): {errors[0]}")

    def _loop(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < self.MAX_BATCH:  # capped: a busy queue must not starve the send
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            writes = [w for item in items if not isinstance(item, threading.Event) for w in item]
            try:
                failed = self._send(writes) if writes else []
            except Exception as exc:  # noqa: BLE001 - the whole round trip failed: every writer hears of it
                failed = [(owner, exc) for owner, _ in writes]
            if failed:
                with self._lock:
                    for owner, exc in failed:
                        log.error("job store write for job %s failed: %s", owner, exc)
                        self._errors.setdefault(owner, []).append(f"{type(exc).__name__}: {exc}")
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()

    @tenacity.retry(
        retry=tenacity.retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
        wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
        stop=tenacity.stop_after_delay(5),
        reraise=True,
    )
    def _send(self, writes: list[tuple[str, Callable]]) -> list[tuple[str, Exception]]:
        """Send the writes in one transaction; (owner, error) for each command Redis refused."""
        pipe = self.r.pipeline(transaction=True)
        owners: list[str] = []
        for owner, write in writes:
            write(pipe)
            owners += [owner] * (len(pipe.command_stack) - len(owners))
        results = pipe.execute(raise_on_error=False)
        return [(owner, res) for owner, res in zip(owners, results, strict=True) if isinstance(res, Exception)]


def iter_events(store: JobStore, job_id: str, after: str, stop) -> Iterator[StoredEvent]:
    """Follow a job's events until its terminal event or until `stop()` is true."""
    last = after
    while not stop():
        batch = store.events(job_id, last, block_s=0.5)
        for event in batch:
            last = event.event_id
            yield event
            if event.type in TERMINAL_EVENTS:
                return
