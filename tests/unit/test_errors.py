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
