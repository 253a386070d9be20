"""A client for any service over three transports: ``grpc``, ``celery`` and ``inproc``.

Typed wrappers in ``shared/clients/`` give each service named methods; this module does the
transport work once. Every call carries a deadline (the settings' default when none is given).
"""

from __future__ import annotations

import atexit
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.experimental  # ChannelOptions; not loaded by `import grpc` alone
from google.protobuf import json_format

from shared import tracing
from shared.auth import Identity, acting_for_var, call_metadata, channel_credentials, get_tls_settings, task_auth_kwargs
from shared.config import Settings, Transport, get_client_settings, get_settings
from shared.errors import (
    Cancelled,
    DeadlineExceeded,
    GenstackError,
    Internal,
    Unavailable,
    from_name,
    from_status,
    translate,
)
from shared.redact import redact
from shared.rpc import CallContext, Method, ServiceApi, methods_of
from shared.services import get_spec, load

_inproc_apis: dict[str, ServiceApi] = {}
_inproc_lock = threading.Lock()


def inproc_api(service: str) -> ServiceApi:
    """The process-wide API object of a service for the inproc transport, warmed up once."""
    with _inproc_lock:
        api = _inproc_apis.get(service)
        if api is None:
            api = load(get_spec(service).api)()
            api.warm_up()
            _inproc_apis[service] = api
        return api


def _inproc_identity() -> Identity | None:
    """Whom an in-process call is made as: the principal a job acts for, as over gRPC (so tenancy
    applies alike on every transport), else the caller's own identity."""
    acting = acting_for_var.get()
    return Identity(acting) if acting else None


@atexit.register
def _close_inproc_apis() -> None:
    for api in list(_inproc_apis.values()):
        api.close()
    _inproc_apis.clear()


def service_methods(service: str) -> dict[str, Method]:
    """A service's RPCs, read from its generated stubs (no server code is loaded)."""
    return methods_of(get_spec(service).descriptor(), service)


class Stream:
    """An iterator of response messages that the caller can cancel at any time."""

    def __init__(self, iterator: Iterator[Any], cancel) -> None:
        self._iterator = iterator
        self._cancel = cancel

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._iterator)

    def cancel(self) -> None:
        self._cancel()


class ServiceClient:
    """Calls one service's RPCs by method name over the chosen transport."""

    service: str = ""

    def __init__(
        self,
        transport: Transport | None = None,
        *,
        address: str | None = None,
        settings: Settings | None = None,
        celery_app=None,
        api: ServiceApi | None = None,
        service: str | None = None,
        read_streams_at_once: bool = False,
    ):
        self.service = service or self.service
        self.settings = settings or get_settings()
        self.transport: Transport = transport or self.settings.transport
        self.methods: dict[str, Method] = service_methods(self.service)
        self._api = api
        self._channel = None
        self._celery = celery_app
        self._redis = None
        if self.transport == "grpc":
            addr = address or get_client_settings().address(self.service)
            limit = self.settings.grpc_max_message_bytes
            options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
            if read_streams_at_once:
                # A server stream then runs in the reading thread instead of starting a channel thread
                # per call (~1 ms here); not the default, because a stream nobody is reading can lose
                # its tail when the server shuts down right after it. For callers that read each
                # stream to its end as it arrives (the orchestrator's steps).
                options.append((grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1))
            credentials = channel_credentials()
            if credentials is None:
                self._channel = grpc.insecure_channel(addr, options=options)
            else:
                if get_tls_settings().server_name:
                    options.append(("grpc.ssl_target_name_override", get_tls_settings().server_name))
                self._channel = grpc.secure_channel(addr, credentials, options=options)
            self._rpcs: dict[str, Any] = {}
        elif self.transport == "celery":
            import redis

            from shared.celery_app import make_celery

            self._celery = self._celery or make_celery(self.settings)
            self._redis = redis.Redis.from_url(self.settings.redis_url)
        elif self.transport != "inproc":
            raise ValueError(f"transport must be one of grpc, celery, inproc (got {self.transport!r})")

    def _rpc(self, m: Method, kind):
        rpc = self._rpcs.get(m.name)
        if rpc is None:
            rpc = self._rpcs[m.name] = kind(
                f"/{self._full_name()}/{m.name}",
                request_serializer=m.request_type.SerializeToString,
                response_deserializer=m.response_type.FromString,
            )
        return rpc

    # -- public ---------------------------------------------------------------------------

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        m = self.methods[method]
        timeout = self.settings.default_deadline_s if timeout is None else timeout
        if self.transport == "grpc":
            rpc = self._rpc(m, self._channel.unary_unary)
            try:
                return rpc(request, timeout=timeout, metadata=call_metadata(acting_for_var.get()))
            except grpc.RpcError as exc:
                raise _from_rpc_error(exc) from None
        if self.transport == "celery":
            try:
                result = self._send(m, request, timeout)
                doc = result.get(timeout=timeout, propagate=True)
            except GenstackError:
                raise
            except Exception as exc:  # noqa: BLE001 - translated below
                raise from_celery_error(exc, timeout) from None
            return json_format.ParseDict(doc, m.response_type(), ignore_unknown_fields=True)
        ctx = CallContext.with_timeout(timeout, identity=_inproc_identity())
        try:
            return getattr(self._inproc(), m.name)(request, ctx)
        except GenstackError:
            raise
        except Exception as exc:  # noqa: BLE001 - the same statuses as over gRPC
            raise translate(exc) from exc

    def stream(self, method: str, request: Any, timeout: float | None = None) -> Stream:
        m = self.methods[method]
        timeout = self.settings.default_deadline_s if timeout is None else timeout
        if self.transport == "grpc":
            call = self._rpc(m, self._channel.unary_stream)(request, timeout=timeout,
                                                            metadata=call_metadata(acting_for_var.get()))

            def grpc_iter():
                try:
                    yield from call
                except grpc.RpcError as exc:
                    raise _from_rpc_error(exc) from None

            return Stream(grpc_iter(), getattr(call, "cancel", None) or _closer(call))
        if self.transport == "celery":
            try:
                return self._celery_stream(m, request, timeout)
            except GenstackError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker down
                raise from_celery_error(exc, timeout) from None
        ctx = CallContext.with_timeout(timeout, identity=_inproc_identity())
        inner = getattr(self._inproc(), m.name)(request, ctx)

        def inproc_iter():
            try:
                yield from inner
            except GenstackError:
                raise
            except Exception as exc:  # noqa: BLE001 - the same statuses as over gRPC
                raise translate(exc) from exc
            finally:
                inner.close()

        return Stream(inproc_iter(), ctx.cancel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transports -------------------------------------------------------------------------

    def _full_name(self) -> str:
        return get_spec(self.service).full_proto_service

    def _inproc(self) -> ServiceApi:
        if self._api is None:
            self._api = inproc_api(self.service)
        return self._api

    def _send(self, m: Method, request: Any, timeout: float):
        payload = json_format.MessageToDict(request)
        return self._celery.send_task(
            m.task_name,
            args=[payload],
            kwargs=task_auth_kwargs({"deadline_s": timeout}),
            queue=get_spec(self.service).queue,
            expires=timeout,
        )

    def _celery_stream(self, m: Method, request: Any, timeout: float) -> Stream:
        from shared.celery_app import CANCEL_KEY, STREAM_KEY

        result = self._send(m, request, timeout)
        key = STREAM_KEY.format(task_id=result.id)
        deadline = time.monotonic() + timeout
        rds = self._redis

        def cancel():
            rds.set(CANCEL_KEY.format(task_id=result.id), "1", ex=self.settings.stream_ttl_s)

        def celery_iter():
            reader = tracing.stream_reader(f"read_stream/{m.task_name}", {"genstack.stream": key})
            try:
                yield from read(reader)
            except GeneratorExit:  # the reader stopped early (a cancel): not an error
                reader.end()
                raise
            except BaseException as exc:
                reader.end(exc)
                raise
            reader.end()

        def read(reader):
            last_id = "0-0"
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    cancel()
                    raise DeadlineExceeded(f"{m.task_name} did not finish within {timeout:.1f}s")
                entries = rds.xread({key: last_id}, block=int(min(remaining, 1.0) * 1000), count=64)
                for _key, items in entries or ():
                    for entry_id, fields in items:
                        last_id = entry_id
                        fields = {k.decode(): v.decode() for k, v in fields.items()}
                        reader.saw(fields)
                        if "data" in fields:
                            doc = json.loads(fields["data"])
                            yield json_format.ParseDict(doc, m.response_type(), ignore_unknown_fields=True)
                        if fields.get("end"):
                            if "error" in fields:
                                raise from_name(fields["error"], fields.get("message", ""))
                            return

        return Stream(celery_iter(), cancel)


def _closer(call):
    """Cancel for a stream that is a generator (the tracing client interceptor wraps the call in
    one): closing it drops the call, which grpc then cancels."""

    def cancel() -> None:
        try:
            call.close()
        except ValueError:  # being iterated in another thread right now: it sees the close later
            pass

    return cancel


def _from_rpc_error(exc: grpc.RpcError) -> GenstackError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    # transport errors name addresses ("failed to connect to ipv4:10.0.0.7:50053"): not for clients
    raw = exc.details() if hasattr(exc, "details") else str(exc)
    details = redact(raw)
    err = Cancelled(details or "cancelled") if code == grpc.StatusCode.CANCELLED else from_status(code, details or "")
    # the unredacted text stays on this process's exception only (the CLI names the address it dialled);
    # it is never part of the message, so nothing forwards it to another client or a job record
    err.local_detail = raw or ""
    return err


def from_celery_error(exc: BaseException, timeout: float) -> GenstackError:
    from celery.exceptions import TimeoutError as CeleryTimeout

    if isinstance(exc, CeleryTimeout):
        return DeadlineExceeded(f"no result within {timeout:.1f}s")
    name = type(exc).__name__
    message = redact(str(exc.args[0]) if exc.args else str(exc))
    if name in ("ConnectionError", "OperationalError") or translate(exc).retryable:
        return Unavailable(f"broker unreachable: {message}")
    err = from_name(name, message)
    return err if not isinstance(err, Internal) or name == "Internal" else Internal(f"{name}: {message}")
