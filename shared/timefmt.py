"""The one format for times in records, events, logs and metadata: ISO 8601 in UTC with a Z."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso_utc(ts: float | None = None, timespec: str = "milliseconds") -> str:
    """`ts` (seconds since the epoch; default now) as e.g. 2026-12-01T21:15:22.123Z (`timespec` as
    datetime.isoformat takes it: "seconds" drops the milliseconds)."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """An ISO 8601 time (a trailing Z, or an offset; none means UTC) as seconds since the epoch;
    ValueError when it is not one."""
    moment = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
