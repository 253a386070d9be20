"""gRPC server bootstrap: servicer from a ServiceApi, error interceptor, health, reflection,
message size limits and a graceful SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared import metrics, tracing
from shared.auth import identity_var, server_credentials, server_interceptors
from shared.config import Settings, get_settings
from shared.errors import translate
from shared.logging import request_id_var
from shared.rpc import CallContext, ServiceApi

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """The one place where exceptions become gRPC statuses (via shared.errors.translate)."""
    err = translate(exc)
    if err.code == grpc.StatusCode.INTERNAL:
        log.error("internal error", exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, "internal error (see server log)")
    if err is not exc:
        log.warning("request failed: %s", err.message, exc_info=exc)
    context.abort(err.code, err.message)


class _Undecodable:
    """Stands in for a request whose bytes did not parse (grpcio itself would answer INTERNAL)."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(deserializer):
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - answered as INVALID_ARGUMENT by the handler
            return _Undecodable(exc)

    return parse


def _refuse_undecodable(request, context, method: str) -> None:
    if isinstance(request, _Undecodable):
        why = type(request.error).__name__
        message = f"the request bytes do not parse as a request of {method} ({why})"
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps GenstackError (and anything unexpected) to a status, for unary and streaming RPCs;
    request bytes that do not parse become INVALID_ARGUMENT (grpcio's own answer is INTERNAL)."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            inner = handler.unary_unary

            def unary(request, context):
                _refuse_undecodable(request, context, method)
                try:
                    return inner(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped, not swallowed
                    if isinstance(exc, grpc.RpcError) or context.code() is not None:
                        raise
                    _abort(context, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary, _tolerant(handler.request_deserializer), handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def stream(request, context):
                _refuse_undecodable(request, context, method)
                try:
                    yield from inner_stream(request, context)
                except Exception as exc:  # noqa: BLE001
                    if isinstance(exc, grpc.RpcError) or context.code() is not None:
                        raise
                    _abort(context, exc)

            return grpc.unary_stream_rpc_method_handler(
                stream, _tolerant(handler.request_deserializer), handler.response_serializer
            )
        return handler


def grpc_call_context(context: grpc.ServicerContext) -> CallContext:
    remaining = context.time_remaining()
    md = dict(context.invocation_metadata() or ())
    ctx = CallContext.with_timeout(remaining, request_id=md.get("x-request-id"), is_active=context.is_active,
                                   identity=identity_var.get())
    request_id_var.set(ctx.request_id)
    return ctx


def make_servicer(api: ServiceApi) -> Any:
    """A subclass of the generated servicer whose methods call `api` with a CallContext."""
    attrs = {}
    for name, method in api.methods().items():
        impl = getattr(api, name, None)
        if impl is None:
            continue  # the generated base answers UNIMPLEMENTED
        if method.server_streaming:

            def handler(self, request, context, _impl=impl):
                yield from _impl(request, grpc_call_context(context))
        else:

            def handler(self, request, context, _impl=impl):
                return _impl(request, grpc_call_context(context))

        attrs[name] = handler
    return type(f"{type(api).__name__}Servicer", (api.servicer_base,), attrs)()


class Server:
    """A running gRPC server for one service."""

    def __init__(self, api: ServiceApi, port: int, settings: Settings | None = None, host: str | None = None):
        self.api = api
        self.settings = settings or get_settings()
        limit = self.settings.grpc_max_message_bytes
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.settings.grpc_workers),
            # authentication (when configured) before the handler: an unauthenticated call reaches nothing
            interceptors=[*tracing.server_interceptors(), metrics.server_interceptor(), *server_interceptors(),
                          ErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        api.add_to_server(make_servicer(api), self.grpc_server)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self.service_name = api.descriptor.full_name
        if self.settings.grpc_reflection:
            reflection.enable_server_reflection(
                (self.service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
            )
        bind = f"{host or self.settings.grpc_bind_host}:{port}"
        credentials = server_credentials()
        self.tls = credentials is not None
        self.port = (self.grpc_server.add_secure_port(bind, credentials) if credentials is not None
                     else self.grpc_server.add_insecure_port(bind))
        self.ready = threading.Event()
        self.warm_up_error: BaseException | None = None
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _set_health(self, status: int) -> None:
        for name in ("", self.service_name):
            self.health.set(name, status)

    def start(self, warm_up_in_background: bool = True) -> Server:
        self.grpc_server.start()
        log.info("gRPC server listening", extra={"fields": {"port": self.port, "service": self.service_name}})
        if warm_up_in_background:
            threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()
        else:
            self._warm_up()
        return self

    def _warm_up(self) -> None:
        try:
            self.api.warm_up()
        except BaseException as exc:  # noqa: BLE001 - reported through health and the log
            self.warm_up_error = exc
            log.error("warm-up failed; staying NOT_SERVING", exc_info=exc)
            return
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self.ready.set()
        log.info("warm-up done; SERVING")

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first (so load balancers stop sending), then drain in-flight calls."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(self.settings.grpc_grace_s if grace is None else grace).wait()
        self.api.close()

    def serve_forever(self) -> None:
        done = threading.Event()

        def on_signal(signum, _frame):
            log.info("signal received; draining", extra={"fields": {"signal": signum}})
            threading.Thread(target=lambda: (self.stop(), done.set()), daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # Wake up regularly: Python runs signal handlers only when the main thread executes
        # bytecode, and a wait without a timeout left SIGTERM unhandled for seconds in tests.
        while not done.wait(0.2):
            pass
