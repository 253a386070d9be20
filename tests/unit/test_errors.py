"""The one mapping from exceptions to gRPC status codes, and back."""

import grpc
import pytest

from shared import errors


@pytest.mark.parametrize(
    "cls,code",
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Cancelled, grpc.StatusCode.CANCELLED),
        (errors.Internal, grpc.StatusCode.INTERNAL),
    ],
)
def test_round_trip_through_status_and_name(cls, code):
    err = cls("boom")
    assert err.code == code
    assert type(errors.from_status(code, "boom")) is cls
    assert type(errors.from_name(cls.__name__, "boom")) is cls
    assert errors.from_name(cls.__name__, "boom").message == "boom"


def test_invalid_argument_names_the_field_and_survives_json_round_trip():
    err = errors.InvalidArgument("must be >= 0 (got -1)", field="sampling.temperature")
    assert err.message == "sampling.temperature: must be >= 0 (got -1)"
    # Celery stores exc_type + args; rebuilding from them keeps the whole message
    assert errors.from_name("InvalidArgument", *err.args).message == err.message


def test_only_unavailable_is_retryable():
    assert errors.Unavailable().retryable
    assert not any(c().retryable for c in (errors.InvalidArgument, errors.Internal, errors.NotFound))


def test_require():
    errors.require(True, "x", "anything")
    with pytest.raises(errors.InvalidArgument, match=r"top_k: must be >= 0 \(got -2\)"):
        errors.require(False, "top_k", ">= 0", -2)


def test_one_time_format_for_records_logs_and_metadata():
    import json
    import logging

    from shared.logging import JsonFormatter
    from shared.timefmt import iso_utc, parse_iso

    assert iso_utc(0) == "1970-01-01T00:00:00.000Z" and iso_utc(1.5, "seconds") == "1970-01-01T00:00:01Z"
    assert parse_iso("2026-12-01T21:15:22.123Z") == parse_iso("2026-12-01T21:15:22.123+00:00") == 1796159722.123
    assert parse_iso("2026-12-01T21:15:22") == 1796159722.0  # no offset: UTC, not the machine's zone
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None)
    record.created = 1.25
    assert json.loads(JsonFormatter().format(record))["ts"] == iso_utc(1.25) == "1970-01-01T00:00:01.250Z"
