"""One exception hierarchy for every service, mapped in one place to gRPC status codes.

Each error keeps a single self-contained message in ``args`` so that Celery can store it
as JSON (``exc_type`` + ``exc_message``) and a client in any language can read it back.
"""

from __future__ import annotations

import grpc


class GenstackError(Exception):
    """Base class. ``code`` is the gRPC status the error maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: Celery retries a task only when this is true.
    retryable: bool = False
    #: what the transport said, unredacted, for this process's own user only (never sent on)
    local_detail: str = ""

    def __init__(self, message: str = "", *, field: str | None = None):
        super().__init__(message)
        self.field = field

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgument(GenstackError):
    """Bad input. The message names the field and what is allowed."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str = "", *, field: str | None = None):
        if field and not message.startswith(field):
            message = f"{field}: {message}"
        super().__init__(message, field=field)


class NotFound(GenstackError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GenstackError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(GenstackError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(GenstackError):
    """Model not ready or a dependency down: worth retrying."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class DeadlineExceeded(GenstackError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(GenstackError):
    """A size or rate limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(GenstackError):
    code = grpc.StatusCode.CANCELLED


class Internal(GenstackError):
    code = grpc.StatusCode.INTERNAL


class Unauthenticated(GenstackError):
    """No credentials, or credentials the server does not accept."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(GenstackError):
    """Valid credentials without the scope the call needs."""

    code = grpc.StatusCode.PERMISSION_DENIED


_BY_CODE: dict[grpc.StatusCode, type[GenstackError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unavailable,
        DeadlineExceeded,
        ResourceExhausted,
        Cancelled,
        Internal,
        Unauthenticated,
        PermissionDenied,
    )
}
_BY_NAME: dict[str, type[GenstackError]] = {cls.__name__: cls for cls in _BY_CODE.values()}


def translate(exc: BaseException) -> GenstackError:
    """Any exception as our error: ours unchanged; an unreachable Redis or broker (redis'
    ConnectionError/TimeoutError, kombu's OperationalError) as UNAVAILABLE, which clients retry;
    RecursionError (input nested too deeply for a parser) as INVALID_ARGUMENT; anything else
    INTERNAL. The one place where foreign exceptions get a status."""
    if isinstance(exc, GenstackError):
        return exc
    if _is_store_outage(exc):
        return Unavailable(f"a dependency is unreachable ({type(exc).__name__}: {_first_line(exc)}); retry later")
    if isinstance(exc, RecursionError):
        return InvalidArgument("the input is nested too deeply to process")
    return Internal(f"{type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def _is_store_outage(exc: BaseException) -> bool:
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a core dependency
        return False
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return True
    try:
        from kombu.exceptions import OperationalError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, OperationalError)


def from_status(code: grpc.StatusCode, message: str) -> GenstackError:
    """Turn a gRPC status received by a client back into the matching exception."""
    return _BY_CODE.get(code, Internal)(message)


def from_name(name: str, message: str) -> GenstackError:
    """Turn a Celery failure (exception class name + message) back into our exception."""
    return _BY_NAME.get(name, Internal)(message)


def require(condition: bool, field: str, allowed: str, got: object = None) -> None:
    """Raise InvalidArgument naming ``field`` and the allowed range unless ``condition``."""
    if not condition:
        suffix = f" (got {got!r})" if got is not None else ""
        raise InvalidArgument(f"must be {allowed}{suffix}", field=field)
