"""Metadata filters: validation, and how metadata values are read as numbers and dates.

Metadata values are strings. A value that reads as a finite number also takes part in number
ranges; one that reads as an ISO-8601 date or date-time (no zone means UTC) also takes part in
date ranges, compared as seconds since the epoch. Backends store these typed shadows next to
the string so that ranges are evaluated by the index, not in Python.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from shared.errors import InvalidArgument

KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
KEY_RULE = "1-64 characters of [A-Za-z0-9_], not starting with a digit"

EQUALS, ANY_OF, NUMBER_RANGE, DATE_RANGE = "equals", "any_of", "number_range", "date_range"


@dataclass(frozen=True)
class Range:
    lower: float | None = None
    lower_inclusive: bool = True
    upper: float | None = None
    upper_inclusive: bool = True

    def contains(self, x: float) -> bool:
        if self.lower is not None and (x < self.lower or (x == self.lower and not self.lower_inclusive)):
            return False
        if self.upper is not None and (x > self.upper or (x == self.upper and not self.upper_inclusive)):
            return False
        return True


@dataclass(frozen=True)
class MetadataFilter:
    """One validated condition. `values` holds the string(s) for equals/any_of; `range` the bounds
    (epoch seconds for dates)."""

    key: str
    op: str
    values: tuple[str, ...] = ()
    range: Range | None = None

    def matches(self, metadata: dict[str, str]) -> bool:
        value = metadata.get(self.key)
        if value is None:
            return False
        if self.op in (EQUALS, ANY_OF):
            return value in self.values
        typed = as_number(value) if self.op == NUMBER_RANGE else as_timestamp(value)
        return typed is not None and self.range is not None and self.range.contains(typed)


def as_number(value: str) -> float | None:
    """The value as a finite float, or None."""
    try:
        x = float(value.strip())
    except (ValueError, AttributeError):
        return None
    return x if math.isfinite(x) else None


def as_timestamp(value: str) -> float | None:
    """Seconds since the epoch for an ISO-8601 date or date-time (naive means UTC), or None."""
    text = (value or "").strip()
    if len(text) < 10 or not text[:4].isdigit():
        return None
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def check_key(key: str, field: str) -> None:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InvalidArgument(f"must be {KEY_RULE} (got {key!r})", field=field)


def build_range(
    field: str, gte: float | None, gt: float | None, lte: float | None, lt: float | None, what: str
) -> Range:
    if gte is not None and gt is not None:
        raise InvalidArgument(f"set at most one lower bound (gte or gt) of the {what} range", field=field)
    if lte is not None and lt is not None:
        raise InvalidArgument(f"set at most one upper bound (lte or lt) of the {what} range", field=field)
    lower = gte if gte is not None else gt
    upper = lte if lte is not None else lt
    if lower is None and upper is None:
        raise InvalidArgument(f"a {what} range needs at least one bound (gte, gt, lte or lt)", field=field)
    for bound in (lower, upper):
        if bound is not None and not math.isfinite(bound):
            raise InvalidArgument(f"{what} range bounds must be finite (got {bound!r})", field=field)
    if lower is not None and upper is not None and lower > upper:
        raise InvalidArgument(
            f"the {what} range's lower bound {lower!r} is above its upper bound {upper!r}", field=field
        )
    return Range(lower, gt is None, upper, lt is None)


def date_bound(value: str | None, field: str) -> float | None:
    if not value:
        return None
    ts = as_timestamp(value)
    if ts is None:
        raise InvalidArgument(
            f"must be an ISO-8601 date or date-time such as 2024-05-01 or 2024-05-01T12:00:00Z (got {value!r})",
            field=field,
        )
    return ts
