"""The one format for times in records and events: ISO 8601 in UTC with milliseconds and a Z."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso_utc(ts: float | None = None) -> str:
    """`ts` (seconds since the epoch; default now) as e.g. 2026-12-01T21:15:22.123Z."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
