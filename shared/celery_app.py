"""Celery app factory and the generic task adapter.

Every service has its own queue named after it; task names are ``<service>.<operation>``.
Payloads and results are the proto JSON mapping, so any language can produce a task by name:

    send_task("generator.generate", args=[{"prompt": "Hi", "sampling": {"maxNewTokens": 8}}],
              queue="generator")

Server-streaming operations also publish each message (proto JSON) on the Redis stream
``genstack:stream:<task_id>``, end with an entry whose ``end`` field is set, and return the last
message as the task result. A producer cancels a running task by setting
``genstack:cancel:<task_id>``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import setup_logging as celery_setup_logging
from celery.worker.consumer import Consumer
from google.protobuf import json_format

from shared import metrics, tracing
from shared.auth import authenticate_task, identity_var
from shared.config import Settings, get_settings
from shared.errors import GenstackError, InvalidArgument, Unauthenticated, require, translate
from shared.logging import task_id_var
from shared.rpc import CallContext, ServiceApi
from shared.services import SERVICES

log = logging.getLogger(__name__)

STREAM_KEY = "genstack:stream:{task_id}"
CANCEL_KEY = "genstack:cancel:{task_id}"


@celery_setup_logging.connect
def _keep_our_logging(**_kwargs):
    """Connecting this signal stops Celery from reconfiguring the root logger."""


metrics.connect_celery_signals()  # task counts, outcomes and run times
tracing.connect_celery_signals()  # a forked child traces on its own


def make_celery(settings: Settings | None = None, name: str = "genstack") -> Celery:
    settings = settings or get_settings()
    app = Celery(name, broker=settings.celery_broker, backend=settings.celery_backend, task_cls=AuthenticatedTask)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_track_started=True,
        result_extended=True,
        result_expires=settings.stream_ttl_s,
        broker_connection_retry_on_startup=True,
        # At least once: a task whose worker died is delivered again after the visibility timeout,
        # which must outlast the longest task (tasks refuse deadlines beyond task_max_deadline_s).
        # The sweep that restores such tasks runs every few seconds, not every 100 s (kombu's default).
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": max(1, min(10, int(settings.visibility_timeout_s // 4))),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        task_routes={f"{name}.*": {"queue": spec.queue} for name, spec in SERVICES.items()},
        task_default_queue="default",
        worker_consumer="shared.celery_app:GenstackConsumer",
    )
    if settings.message_signing:
        _sign_messages(app, settings)
    return app


def _sign_messages(app: Celery, settings: Settings) -> None:
    """Celery's `auth` serializer: task messages are JSON signed with the sender's key (SHA-256), and a
    worker accepts only messages signed by a certificate in its store. It signs, it does not encrypt;
    results and streamed responses stay JSON in Redis (docs/security.md)."""
    app.conf.update(
        task_serializer="auth", accept_content=["auth"], security_digest="sha256",
        security_key=str(settings.celery_signing_key_file), security_certificate=str(settings.celery_signing_cert_file),
        security_cert_store=str(settings.celery_signing_cert_store),
    )
    # results stay JSON; setup_security also turns off pickle, yaml and msgpack for the process
    app.setup_security(allowed_serializers=["json"], serializer="json")


class AuthenticatedTask(Task):
    """Every genstack task checks its sender's token (when the worker has a tokens file) before it
    runs, and runs as that identity; a refused task fails with UNAUTHENTICATED or PERMISSION_DENIED,
    which its sender sees, instead of staying PENDING."""

    def __call__(self, *args, **kwargs):
        identity = authenticate_task(self.name, kwargs.pop("auth_token", None), kwargs.pop("on_behalf_of", None))
        reset = identity_var.set(identity)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            identity_var.reset(reset)


class GenstackConsumer(Consumer):
    """A worker's message consumer that answers the messages it refuses (a serializer it does not
    accept, a bad signature) by failing their task, so that the sender sees why instead of a task
    that stays PENDING forever."""

    def _answer_refusal(self, message, exc) -> None:
        task_id = (message.headers or {}).get("id")
        if not task_id:
            return
        if self.app.conf.task_serializer == "auth":
            why = Unauthenticated(f"the worker refused the task message ({type(exc).__name__}): it runs only "
                                  "messages signed by a certificate in its store; set GENSTACK_CELERY_SIGNING_*")
        else:
            why = Unauthenticated(f"the worker refused the task message ({type(exc).__name__}): send JSON")
        try:
            self.app.backend.mark_as_failure(task_id, why)
        except Exception:  # noqa: BLE001 - the refusal is still logged and the message dropped
            log.exception("could not record the refusal of task %s", task_id)

    def on_invalid_task(self, body, message, exc):  # a content type not accepted, a bad signature
        self._answer_refusal(message, exc)
        super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message, exc):  # a body that does not decode
        self._answer_refusal(message, exc)
        super().on_decode_error(message, exc)


class TaskCallContext(CallContext):
    """A Celery task's view of cancellation (a Redis key) and deadline (a task kwarg)."""

    def __init__(self, redis_client: redis.Redis, task_id: str, deadline_s: float | None):
        super().__init__(deadline=None if deadline_s is None else time.monotonic() + deadline_s, request_id=task_id)
        self._redis = redis_client
        self._key = CANCEL_KEY.format(task_id=task_id)
        self._next_poll = 0.0

    def cancelled(self) -> bool:
        if super().cancelled():
            return True
        now = time.monotonic()
        if now >= self._next_poll:  # poll Redis at most every 20 ms
            self._next_poll = now + 0.02
            if self._redis.exists(self._key):
                self.cancel()
                return True
        return False


def parse_payload(payload: dict | None, message_type: type) -> Any:
    """A task's payload (the proto JSON mapping) as a `message_type`, or INVALID_ARGUMENT naming
    the message and the problem."""
    try:
        return json_format.ParseDict(payload or {}, message_type(), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"payload is not a valid {message_type.DESCRIPTOR.full_name}: {exc}") from None


def register_tasks(
    app: Celery,
    api_cls: type[ServiceApi],
    get_api: Callable[[], ServiceApi],
    settings: Settings | None = None,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Task]:
    """Register one task per RPC of `api_cls` (except those in `skip`, which the service defines
    itself); `get_api` returns the warmed-up API object."""
    settings = settings or get_settings()
    rds = redis.Redis.from_url(settings.redis_url)
    tasks: dict[str, Task] = {}
    for method in api_cls.methods().values():
        if method.name in skip:
            continue

        def run(self: Task, payload: dict | None = None, deadline_s: float | None = None, _m=method):
            task_id = self.request.id
            task_id_var.set(task_id)
            check_task_deadline(deadline_s, settings)
            request = parse_payload(payload, _m.request_type)
            ctx = TaskCallContext(rds, task_id, deadline_s)
            impl = getattr(get_api(), _m.name)
            if not _m.server_streaming:
                return json_format.MessageToDict(impl(request, ctx))
            key = STREAM_KEY.format(task_id=task_id)
            last: dict = {}
            try:
                for msg in impl(request, ctx):
                    last = json_format.MessageToDict(msg)
                    rds.xadd(key, {"data": json.dumps(last), **tracing.stream_fields()})
                    rds.expire(key, settings.stream_ttl_s)
            except GenstackError as exc:
                rds.xadd(key, {"end": "1", "error": type(exc).__name__, "message": exc.message})
                raise
            except Exception:
                rds.xadd(key, {"end": "1", "error": "Internal", "message": "internal error (see worker log)"})
                raise
            rds.xadd(key, {"end": "1", **tracing.stream_fields()})
            rds.expire(key, settings.stream_ttl_s)
            return last

        tasks[method.task_name] = app.task(
            name=method.task_name,
            bind=True,
            autoretry_for=(),
            throws=(GenstackError,),
        )(with_retry(run))
    return tasks


def check_task_deadline(deadline_s: float | None, settings: Settings | None = None, field: str = "deadline_s") -> None:
    """A task's deadline must end before its visibility timeout, or a slow task is delivered twice."""
    if deadline_s is None:
        return
    cap = (settings or get_settings()).task_max_deadline_s
    require(deadline_s == deadline_s and 0 <= deadline_s <= cap, field,
            f"between 0 and {cap:g} seconds for a queued task (GENSTACK_TASK_MAX_DEADLINE_S)", deadline_s)


def with_retry(fn):
    """Retry only retryable (UNAVAILABLE-like) errors, with backoff; everything else fails once.
    Foreign exceptions are translated first (an unreachable Redis is UNAVAILABLE)."""

    def wrapper(self: Task, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except Exception as raw:
            exc = translate(raw)
            if exc.retryable and self.request.retries < 3:
                raise self.retry(exc=exc, countdown=2 ** self.request.retries) from raw
            if exc is raw:
                raise
            raise exc from raw

    wrapper.__name__ = fn.__name__
    return wrapper
