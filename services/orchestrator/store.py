"""Job state and events: in memory (embedded) or in Redis (a hash and a stream per job).

Records are the proto JSON of `Job`; events are appended to a per-job log whose ids only grow,
so a watcher that reconnects with the last id it saw misses nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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
