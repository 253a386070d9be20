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
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
import tenacity

from shared.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.cancelled"})
#: JobState values of jobs that are not finished (QUEUED, RUNNING)
OPEN_STATES = frozenset({1, 2})
#: the shape of an event id every store accepts as `after` (Redis stream ids; plain counters)
_EVENT_ID = re.compile(r"[0-9]{1,19}(-[0-9]{1,19})?")


#: `append_event(after=FIRST)`: the job has no events yet
FIRST = "0-0"


def check_event_id(after: str) -> None:
    """INVALID_ARGUMENT naming `after_event_id` unless it has the shape of an event id."""
    if after and not _EVENT_ID.fullmatch(after):
        raise InvalidArgument("must be an event id from this job's events (digits, or digits-digits), or empty",
                              field="after_event_id")


def _counter(after: str) -> int:
    return int(after.partition("-")[0] or 0) if after else 0


@dataclass
class StoredEvent:
    event_id: str
    type: str
    step: str
    data: dict
    time: float
    state: int


class JobStore:
    """Interface shared by every store.

    Leases: the process running a job (or holding it queued) owns its lease and renews it; a job
    that is not finished and whose lease has lapsed is an orphan, which `orphans()` lists and any
    orchestrator may `claim()` (atomically: one claimant wins) to resume or end it. A job's
    checkpoint (what its completed steps produced) is stored beside its record, not in it.
    """

    def create(self, job_id: str, record: dict, kind: str, state: int, idempotency_key: str,
               owner: str = "", lease_s: float = 0.0) -> tuple[str, bool]:
        """Store a new job (holding its lease for `owner`, when given); with a key already used,
        return (existing id, False)."""
        raise NotImplementedError

    def claim(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Take the job's lease unless another owner holds a live one; True when `owner` holds it."""
        raise NotImplementedError

    def renew(self, job_ids: list[str], owner: str, lease_s: float) -> list[str]:
        """Extend `owner`'s leases (taking a lapsed one back, e.g. after a store outage longer than the
        lease); returns the ids that another owner holds now."""
        raise NotImplementedError

    def release(self, job_id: str, owner: str) -> None:
        """Give the lease up (only `owner`'s own)."""
        raise NotImplementedError

    def lease_owner(self, job_id: str) -> str | None:
        raise NotImplementedError

    def orphans(self, limit: int = 100) -> list[str]:
        """Ids of unfinished jobs that nobody holds a live lease on, oldest first."""
        raise NotImplementedError

    def save_checkpoint(self, job_id: str, doc: dict) -> None:
        raise NotImplementedError

    def load_checkpoint(self, job_id: str) -> dict | None:
        raise NotImplementedError

    def last_event_id(self, job_id: str) -> str:
        """The id of the job's newest stored event ("" when none)."""
        raise NotImplementedError

    def save(self, job_id: str, record: dict | Callable[[], dict], state: int) -> None:
        """Store the record; a callable is called when the write happens (the Redis store writes
        behind, so serialising moves off the job's thread too)."""
        raise NotImplementedError

    def load(self, job_id: str) -> dict | None:
        raise NotImplementedError

    def append_event(self, job_id: str, type_: str, step: str, data: dict, state: int, after: str = "") -> str:
        """Append an event and return its id. `after` is the job's previous event id, when the
        caller knows it (FIRST for the first event of a job just created): the Redis store then
        writes behind and still returns the id at once."""
        raise NotImplementedError

    def events(self, job_id: str, after: str, block_s: float) -> list[StoredEvent]:
        """Events after `after` ("" = from the start); waits up to block_s for new ones."""
        raise NotImplementedError

    def request_cancel(self, job_id: str) -> None:
        raise NotImplementedError

    def cancel_requested(self, job_id: str) -> bool:
        raise NotImplementedError

    def cancelled_among(self, job_ids: list[str]) -> set[str]:
        """The ids, of those given, whose cancel was asked for (the Redis store asks in one round trip)."""
        return {job_id for job_id in job_ids if self.cancel_requested(job_id)}

    def list_ids(self, start: int, count: int) -> list[str]:
        """Job ids newest first."""
        raise NotImplementedError

    def finish(self, job_id: str) -> None:
        """Apply retention to a finished job."""

    def release_later(self, job_id: str, owner: str) -> None:
        """`release` as one more write of the current batch (a job's ending needs no extra round trip)."""
        self.release(job_id, owner)

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
        self._open: dict[str, None] = {}  # unfinished jobs, oldest first
        self._leases: dict[str, tuple[str, float]] = {}  # job id -> (owner, expiry in time.time())
        self._checkpoints: dict[str, dict] = {}

    def create(self, job_id, record, kind, state, idempotency_key, owner="", lease_s=0.0):
        with self._lock:
            if idempotency_key:
                existing = self._keys.get(idempotency_key)
                if existing:
                    return existing, False
                self._keys[idempotency_key] = job_id
            self._records[job_id] = record
            self._events[job_id] = []
            self._order.append(job_id)
            self._open[job_id] = None
            if owner:
                self._leases[job_id] = (owner, time.time() + lease_s)
            return job_id, True

    def save(self, job_id, record, state):
        with self._lock:
            if job_id in self._records and job_id not in self._open:
                return  # a finished record never changes (a stalled replica's late write)
            self._records[job_id] = record() if callable(record) else record
            if state not in OPEN_STATES:
                self._open.pop(job_id, None)

    def _live_owner(self, job_id: str) -> str | None:
        held = self._leases.get(job_id)
        return held[0] if held and held[1] > time.time() else None

    def claim(self, job_id, owner, lease_s):
        with self._lock:
            if self._live_owner(job_id) not in (None, owner):
                return False
            self._leases[job_id] = (owner, time.time() + lease_s)
            return True

    def renew(self, job_ids, owner, lease_s):
        lost = []
        with self._lock:
            for job_id in job_ids:
                if self._live_owner(job_id) in (None, owner):
                    self._leases[job_id] = (owner, time.time() + lease_s)
                else:
                    lost.append(job_id)
        return lost

    def release(self, job_id, owner):
        with self._lock:
            if self._live_owner(job_id) == owner:
                del self._leases[job_id]

    def lease_owner(self, job_id):
        with self._lock:
            return self._live_owner(job_id)

    def orphans(self, limit=100):
        with self._lock:
            return [j for j in self._open if self._live_owner(j) is None][:limit]

    def save_checkpoint(self, job_id, doc):
        with self._lock:
            self._checkpoints[job_id] = json.loads(json.dumps(doc))

    def load_checkpoint(self, job_id):
        with self._lock:
            doc = self._checkpoints.get(job_id)
            return json.loads(json.dumps(doc)) if doc is not None else None

    def last_event_id(self, job_id):
        with self._lock:
            log = self._events.get(job_id) or []
            return log[-1].event_id if log else ""

    def load(self, job_id):
        with self._lock:
            rec = self._records.get(job_id)
            return json.loads(json.dumps(rec)) if rec is not None else None

    def append_event(self, job_id, type_, step, data, state, after=""):
        with self._lock:
            log = self._events.setdefault(job_id, [])
            if job_id in self._records and job_id not in self._open:  # finished: a stalled replica's late event
                return log[-1].event_id if log else ""
            event = StoredEvent(str(len(log) + 1), type_, step, data, time.time(), state)
            log.append(event)
            self._lock.notify_all()
            return event.event_id

    def events(self, job_id, after, block_s):
        start = _counter(after)
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
        have = {row[1] for row in self._db().execute("PRAGMA table_info(jobs)")}
        for column, decl in _SQLITE_ADDED_COLUMNS:  # files written before leases existed
            if column not in have:
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                    self._db().execute(f"ALTER TABLE jobs ADD COLUMN {column} {decl}")

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

    def create(self, job_id, record, kind, state, idempotency_key, owner="", lease_s=0.0):
        now = time.time()
        with self._tx() as db:
            if idempotency_key:
                row = db.execute("SELECT job_id FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if row:
                    return row[0], False
            db.execute(
                "INSERT INTO jobs (job_id, record, kind, state, idempotency_key, created, updated, lease_owner, "
                "lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, json.dumps(record), kind, state, idempotency_key or None, now, now, owner or None,
                 now + lease_s if owner else None),
            )
        return job_id, True

    def claim(self, job_id, owner, lease_s):
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE job_id = ? AND "
                "(lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
                (owner, now + lease_s, job_id, owner, now),
            )
            return cur.rowcount == 1

    def renew(self, job_ids, owner, lease_s):
        now = time.time()
        lost = []
        with self._tx() as db:
            for job_id in job_ids:
                cur = db.execute("UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE job_id = ? AND "
                                 "(lease_owner = ? OR lease_owner IS NULL OR lease_until < ?)",
                                 (owner, now + lease_s, job_id, owner, now))
                if cur.rowcount != 1:
                    lost.append(job_id)
        return lost

    def release(self, job_id, owner):
        with self._tx() as db:
            db.execute("UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE job_id = ? AND lease_owner = ?",
                       (job_id, owner))

    def lease_owner(self, job_id):
        row = self._db().execute("SELECT lease_owner, lease_until FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row[0] if row and row[0] and row[1] >= time.time() else None

    def orphans(self, limit=100):
        rows = self._db().execute(
            "SELECT job_id FROM jobs WHERE state IN (1, 2) AND (lease_owner IS NULL OR lease_until < ?) "
            "ORDER BY created LIMIT ?", (time.time(), limit)).fetchall()
        return [r[0] for r in rows]

    def save_checkpoint(self, job_id, doc):
        with self._tx() as db:
            db.execute("UPDATE jobs SET checkpoint = ? WHERE job_id = ?", (json.dumps(doc), job_id))

    def load_checkpoint(self, job_id):
        row = self._db().execute("SELECT checkpoint FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def last_event_id(self, job_id):
        row = self._db().execute("SELECT MAX(seq) FROM events WHERE job_id = ?", (job_id,)).fetchone()
        return str(row[0]) if row and row[0] else ""

    def save(self, job_id, record, state):
        doc = record() if callable(record) else record
        with self._tx() as db:  # a finished record never changes (a stalled replica's late write)
            db.execute("UPDATE jobs SET record = ?, state = ?, updated = ? WHERE job_id = ? AND state IN (1, 2)",
                       (json.dumps(doc), state, time.time(), job_id))

    def load(self, job_id):
        row = self._db().execute("SELECT record FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def append_event(self, job_id, type_, step, data, state, after=""):
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
            finished = db.execute("SELECT 1 FROM jobs WHERE job_id = ? AND state NOT IN (1, 2)", (job_id,)).fetchone()
            if finished:  # a stalled replica's late event after the job ended
                return str(seq - 1)
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
        start = _counter(after)
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


_SQLITE_ADDED_COLUMNS = (("lease_owner", "TEXT"), ("lease_until", "REAL"), ("checkpoint", "TEXT"))

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
    #: unfinished jobs (QUEUED, RUNNING), by creation time: where recovery looks for orphans
    OPEN = "genstack:jobs:open"

    def __init__(self, url: str, retention_s: int, outage_s: float = 30.0) -> None:
        # Short socket timeouts: a Redis that went away must not hang a caller for minutes.
        self.r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2, health_check_interval=15)
        self.retention_s = retention_s
        self._writer = _WriteBehind(self.r, outage_s)
        self._claim = self.r.register_script(_CLAIM_LUA)
        self._renew = self.r.register_script(_RENEW_LUA)
        self._release = self.r.register_script(_RELEASE_LUA)

    def _key(self, job_id: str, suffix: str = "") -> str:
        return f"{self.PREFIX}{job_id}{suffix}"

    def create(self, job_id, record, kind, state, idempotency_key, owner="", lease_s=0.0):
        if idempotency_key:
            key = f"genstack:jobkey:{idempotency_key}"
            if not self.r.set(key, job_id, nx=True, ex=self.retention_s):
                existing = self.r.get(key)
                if existing:
                    return existing.decode(), False
        now = time.time()
        pipe = self.r.pipeline(transaction=True)  # record, listing, open set and lease appear together
        pipe.hset(self._key(job_id), mapping={"record": json.dumps(record), "state": state, "kind": kind})
        pipe.zadd("genstack:jobs", {job_id: now})
        pipe.zadd(self.OPEN, {job_id: now})
        if owner:
            pipe.set(self._key(job_id, ":lease"), owner, px=max(1, int(lease_s * 1000)))
        pipe.execute()
        return job_id, True

    def save(self, job_id, record, state):
        key = self._key(job_id)

        def write(pipe):
            doc = record() if callable(record) else record
            # a finished record never changes (a stalled replica's late write is dropped)
            _in_batch(pipe, _SAVE_LUA, [key, self.OPEN], [json.dumps(doc), state, job_id])

        self._writer.put(job_id, write)

    def claim(self, job_id, owner, lease_s):
        return bool(self._claim(keys=[self._key(job_id, ":lease")], args=[owner, max(1, int(lease_s * 1000))]))

    def renew(self, job_ids, owner, lease_s):
        if not job_ids:
            return []
        held = self._renew(keys=[self._key(j, ":lease") for j in job_ids], args=[owner, max(1, int(lease_s * 1000))])
        return [j for j, ok in zip(job_ids, held, strict=True) if not ok]

    def release(self, job_id, owner):
        self._release(keys=[self._key(job_id, ":lease")], args=[owner])

    def lease_owner(self, job_id):
        raw = self.r.get(self._key(job_id, ":lease"))
        return raw.decode() if raw else None

    def orphans(self, limit=100):
        ids = [i.decode() for i in self.r.zrange(self.OPEN, 0, max(0, 10 * limit - 1))]
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(self._key(job_id, ":lease"))
        return [j for j, held in zip(ids, pipe.execute(), strict=True) if not held][:limit]

    def save_checkpoint(self, job_id, doc):
        key = self._key(job_id)
        text = json.dumps(doc)
        self._writer.put(job_id, lambda pipe: pipe.hset(key, "checkpoint", text))

    def load_checkpoint(self, job_id):
        raw = self.r.hget(self._key(job_id), "checkpoint")
        return json.loads(raw) if raw else None

    def last_event_id(self, job_id):
        items = self.r.xrevrange(self._key(job_id, ":events"), count=1)
        return items[0][0].decode() if items else ""

    def load(self, job_id):
        raw = self.r.hget(self._key(job_id), "record")
        return json.loads(raw) if raw else None

    def append_event(self, job_id, type_, step, data, state, after=""):
        fields = {"type": type_, "step": step, "data": json.dumps(data), "time": repr(time.time()), "state": state}
        key = self._key(job_id, ":events")
        if not after:
            return self.r.xadd(key, fields).decode()
        event_id = next_stream_id(after)
        args = [event_id, *(v for kv in fields.items() for v in kv)]
        # dropped once the job has ended (a stalled replica's late event)
        self._writer.put(job_id, lambda pipe: _in_batch(pipe, _APPEND_LUA, [self._key(job_id), key], args))
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

    def cancelled_among(self, job_ids):
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(self._key(job_id, ":cancel"))
        return {job_id for job_id, found in zip(job_ids, pipe.execute(), strict=True) if found}

    def list_ids(self, start, count):
        return [i.decode() for i in self.r.zrevrange("genstack:jobs", start, start + count - 1)]

    def finish(self, job_id):
        keys = [self._key(job_id, suffix) for suffix in ("", ":events", ":cancel")]

        def write(pipe):
            for key in keys:
                pipe.expire(key, self.retention_s)
            pipe.zrem(self.OPEN, job_id)

        self._writer.put(job_id, write)

    def release_later(self, job_id, owner):
        lease = self._key(job_id, ":lease")
        self._writer.put(job_id, lambda pipe: _in_batch(pipe, _RELEASE_LUA, [lease], [owner]))

    def batch(self):
        return self._writer.batch()

    def flush(self, job_id=None):
        self._writer.flush(job_id)


_CLAIM_LUA = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RENEW_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local held = redis.call('GET', key)
  if held == ARGV[1] or not held then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

_SAVE_LUA = """
local current = redis.call('HGET', KEYS[1], 'state')
if current == '3' or current == '4' or current == '5' then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'state', ARGV[2])
if ARGV[2] ~= '1' and ARGV[2] ~= '2' then redis.call('ZREM', KEYS[2], ARGV[3]) end
return 1
"""

_APPEND_LUA = """
local current = redis.call('HGET', KEYS[1], 'state')
if current == '3' or current == '4' or current == '5' then return 0 end
return redis.call('XADD', KEYS[2], unpack(ARGV))
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _in_batch(pipe, script: str, keys: list, args: list) -> None:
    """A Lua script as one command of a write batch. EVAL with the text, not a registered script:
    redis-py asks SCRIPT EXISTS before every pipeline that holds registered scripts (a round trip
    per batch), and an EVALSHA that a restarted Redis no longer knows would fail inside the
    transaction while the batch's other writes went through."""
    pipe.eval(script, len(keys), *keys, *args)


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
    A connection error is retried with backoff for `outage_s`. A write that still fails is
    logged and charged to the job that made it: `flush(job_id)` reports that job's failures
    only, and waits only for the writes queued before it, not for other jobs' later ones.
    """

    MAX_BATCH = 256

    def __init__(self, r: redis.Redis, outage_s: float = 30.0) -> None:
        self.r = r
        # Redis unreachable (restarting, failing over): keep the writes and try again, in order,
        # for up to outage_s; a running job waits meanwhile instead of failing.
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
            wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
            stop=tenacity.stop_after_delay(outage_s),
            before_sleep=lambda rs: log.warning("job store unreachable, retrying: %s", rs.outcome.exception()),
            reraise=True,
        )
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

    def _send(self, writes: list[tuple[str, Callable]]) -> list[tuple[str, Exception]]:
        return self._retrying(self._send_once, writes)

    def _send_once(self, writes: list[tuple[str, Callable]]) -> list[tuple[str, Exception]]:
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
