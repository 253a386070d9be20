"""The transport-neutral shape of a service: one API object, called the same way by the gRPC
servicer, the Celery tasks and the inproc client.

A service's ``grpc_api.py`` defines a subclass of `ServiceApi` whose methods are named after the
RPCs in its proto (``Generate``, ``GenerateStream``, ...). Each takes the request message and a
`CallContext` and returns the response message (or yields them, for server streaming).
"""

from __future__ import annotations

import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf import message_factory

from shared.auth import Identity, identity_var
from shared.errors import Cancelled, DeadlineExceeded


class CallContext:
    """What the core needs to know about a call: who it is, when it must end, whether it was cancelled."""

    def __init__(
        self,
        *,
        deadline: float | None = None,
        request_id: str | None = None,
        is_active: Callable[[], bool] | None = None,
        identity: Identity | None = None,
    ):
        #: absolute time.monotonic() by which the call must finish, or None
        self.deadline = deadline
        #: who is calling (shared.auth); anonymous, with every right, when authentication is off
        self.identity = identity if identity is not None else identity_var.get()
        self.request_id = request_id or uuid.uuid4().hex[:16]
        self._cancel = threading.Event()
        self._is_active = is_active

    @classmethod
    def with_timeout(cls, timeout_s: float | None, **kw: Any) -> CallContext:
        return cls(deadline=None if timeout_s is None else time.monotonic() + timeout_s, **kw)

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        if self._cancel.is_set():
            return True
        if self._is_active is not None and not self._is_active():
            self._cancel.set()
            return True
        return False

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def stopped(self) -> bool:
        """Whether work for this call should stop: cancelled, or past its deadline."""
        return self.cancelled() or self.expired()

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        """Raise if the caller has gone away or the deadline has passed."""
        if self.cancelled():
            raise Cancelled("the call was cancelled by the client")
        if self.expired():
            raise DeadlineExceeded("the call's deadline passed")


def opt(message: Any, name: str) -> Any:
    """A proto3 `optional` field's value, or None when it is not set."""
    return getattr(message, name) if message.HasField(name) else None


def stream_from_thread(ctx: CallContext, work: Callable[[Callable[[], bool], Callable[[Any], None]], Any],
                       name: str):
    """Run `work(stopped, emit)` on its own thread and yield what it emits, as the call's stream.

    The work runs apart from the consumer so that a consumer that stops reading (or a cancel) is
    noticed at the work's next check, not when it is over. `work` returns the last message (or None);
    an exception it raises reaches the caller, a `Cancelled` one as DEADLINE_EXCEEDED when the
    deadline has passed."""
    done = object()
    events: queue.Queue = queue.Queue()
    consumer_gone = threading.Event()

    def run() -> None:
        try:
            last = work(lambda: consumer_gone.is_set() or ctx.stopped(), events.put)
            if last is not None:
                events.put(last)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
            events.put(exc)
        finally:
            events.put(done)

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while True:
            item = events.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                if isinstance(item, Cancelled):
                    ctx.check()
                raise item
            yield item
    finally:
        consumer_gone.set()


@dataclass(frozen=True)
class Method:
    """One RPC of a service, read from the proto descriptor."""

    name: str  # "GenerateStream"
    task_name: str  # "generator.generate_stream"
    request_type: type
    response_type: type
    server_streaming: bool


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def methods_of(service_descriptor: _descriptor.ServiceDescriptor, service: str) -> dict[str, Method]:
    out = {}
    for m in service_descriptor.methods:
        out[m.name] = Method(
            name=m.name,
            task_name=f"{service}.{snake(m.name)}",
            request_type=message_factory.GetMessageClass(m.input_type),
            response_type=message_factory.GetMessageClass(m.output_type),
            server_streaming=m.server_streaming if hasattr(m, "server_streaming") else False,
        )
    return out


class ServiceApi:
    """Base class for a service's API. Subclasses set `service`, `descriptor`, `servicer_base`
    and `add_to_server` (from the generated stubs) and implement one method per RPC."""

    service: str
    descriptor: _descriptor.ServiceDescriptor
    servicer_base: type
    add_to_server: Callable[[Any, Any], None]

    def __init__(self, core: Any):
        #: the service's plain core object; every transport calls into it through this API
        self.core = core

    def warm_up(self) -> None:
        """Load models once; the gRPC health status turns SERVING after this returns."""
        self.core.warm_up()

    def close(self) -> None:
        """Release resources at shutdown."""
        close = getattr(getattr(self, "core", None), "close", None)
        if close is not None:
            close()

    @classmethod
    def methods(cls) -> dict[str, Method]:
        return methods_of(cls.descriptor, cls.service)
