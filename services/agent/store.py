"""Run records, approval verdicts and cancel requests, kept where every process serving the agent
can see them: in this process (memory) or in Redis (gRPC servers and Celery workers together)."""

from __future__ import annotations

import json
import threading

from services.agent.datatypes import ENDED, RunRecord
from shared.errors import AlreadyExists

RUN_KEY = "genstack:agent:run:{run_id}"
VERDICT_KEY = "genstack:agent:verdict:{run_id}:{step}"
CANCEL_KEY = "genstack:agent:cancel:{run_id}"


class MemoryBackend:
    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._data.get(key)

    def set(self, key: str, value: str, ttl: int) -> None:
        with self._lock:
            self._data[key] = value

    def set_new(self, key: str, value: str, ttl: int) -> bool:
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = value
            return True

    def pop(self, key: str) -> str | None:
        with self._lock:
            return self._data.pop(key, None)


class RedisBackend:
    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)

    def get(self, key: str) -> str | None:
        value = self._redis.get(key)
        return None if value is None else value.decode()

    def set(self, key: str, value: str, ttl: int) -> None:
        self._redis.set(key, value, ex=ttl)

    def set_new(self, key: str, value: str, ttl: int) -> bool:
        return bool(self._redis.set(key, value, ex=ttl, nx=True))

    def pop(self, key: str) -> str | None:
        value = self._redis.getdel(key)
        return None if value is None else value.decode()


class RunStore:
    def __init__(self, backend, retention_s: int = 7 * 24 * 3600):
        self.backend = backend
        self.retention_s = retention_s

    def create(self, record: RunRecord) -> None:
        """Store a new run; ALREADY_EXISTS when a run with this id has not ended (an ended one is replaced)."""
        key = RUN_KEY.format(run_id=record.run_id)
        doc = json.dumps(record.to_dict())
        if self.backend.set_new(key, doc, self.retention_s):
            return
        old = self.load(record.run_id)
        if old is not None and old.state not in ENDED:
            raise AlreadyExists(f"run {record.run_id!r} is already running")
        self.backend.set(key, doc, self.retention_s)
        self.backend.pop(CANCEL_KEY.format(run_id=record.run_id))

    def save(self, record: RunRecord) -> None:
        self.backend.set(RUN_KEY.format(run_id=record.run_id), json.dumps(record.to_dict()), self.retention_s)

    def load(self, run_id: str) -> RunRecord | None:
        doc = self.backend.get(RUN_KEY.format(run_id=run_id))
        return None if doc is None else RunRecord.from_dict(json.loads(doc))

    def put_verdict(self, run_id: str, step: int, verdict: str, text: str) -> bool:
        """Record a reviewer's verdict; False when the step already has one."""
        return self.backend.set_new(VERDICT_KEY.format(run_id=run_id, step=step),
                                    json.dumps({"verdict": verdict, "text": text}), self.retention_s)

    def take_verdict(self, run_id: str, step: int) -> tuple[str, str] | None:
        doc = self.backend.get(VERDICT_KEY.format(run_id=run_id, step=step))
        if doc is None:
            return None
        d = json.loads(doc)
        return d["verdict"], d["text"]

    def request_cancel(self, run_id: str) -> None:
        self.backend.set(CANCEL_KEY.format(run_id=run_id), "1", self.retention_s)

    def cancel_requested(self, run_id: str) -> bool:
        return self.backend.get(CANCEL_KEY.format(run_id=run_id)) is not None
