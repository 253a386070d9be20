"""Job state and events: in memory (embedded) or in Redis (a hash and a stream per job).

Records are the proto JSON of `Job`; events are appended to a per-job log whose ids only grow,
so a watcher that reconnects with the last id it saw misses nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

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

    def save(self, job_id: str, record: dict, state: int) -> None:
        raise NotImplementedError

    def load(self, job_id: str) -> dict | None:
        raise NotImplementedError

    def append_event(self, job_id: str, type_: str, step: str, data: dict, state: int) -> str:
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
            self._records[job_id] = record

    def load(self, job_id):
        with self._lock:
            rec = self._records.get(job_id)
            return json.loads(json.dumps(rec)) if rec is not None else None

    def append_event(self, job_id, type_, step, data, state):
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


class RedisJobStore(JobStore):
    PREFIX = "genstack:job:"

    def __init__(self, url: str, retention_s: int) -> None:
        self.r = redis.Redis.from_url(url)
        self.retention_s = retention_s

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
        self.r.hset(self._key(job_id), mapping={"record": json.dumps(record), "state": state})

    def load(self, job_id):
        raw = self.r.hget(self._key(job_id), "record")
        return json.loads(raw) if raw else None

    def append_event(self, job_id, type_, step, data, state):
        fields = {"type": type_, "step": step, "data": json.dumps(data), "time": repr(time.time()), "state": state}
        return self.r.xadd(self._key(job_id, ":events"), fields).decode()

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
        for suffix in ("", ":events", ":cancel"):
            self.r.expire(self._key(job_id, suffix), self.retention_s)


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
