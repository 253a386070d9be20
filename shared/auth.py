"""Authentication and transport security, configured in one place.

Servers: `GENSTACK_AUTH_TOKENS_FILE` names a JSON or YAML file

    {"tokens": [{"token": "...", "principal": "alice", "scopes": ["jobs"]},
                {"token": "...", "principal": "ops", "scopes": ["admin"], "expires_at": "2027-01-01T00:00:00Z"}]}

and turns bearer-token authentication on for every RPC except health checks: no token or an unknown,
expired or revoked one (`"revoked": true`) is UNAUTHENTICATED; a valid token without the scope the
RPC needs is PERMISSION_DENIED. The file is re-read when it changes, so a token is revoked by editing
it (or the Kubernetes Secret it is mounted from). Scopes: `admin` (everything, every tenant's jobs
and collections); `jobs` (the orchestrator: submit, read, watch and cancel one's own jobs);
a service's name (`generator`, `retriever`, ...: call that service directly); `service` (another
genstack service, which may name the principal it acts for in `x-genstack-principal`).

Clients (typed clients, the CLI, the Celery transport) send `GENSTACK_AUTH_TOKEN` (or the contents
of `GENSTACK_AUTH_TOKEN_FILE`) as `authorization: Bearer <token>`.

TLS: `GENSTACK_TLS_CERT_FILE` + `GENSTACK_TLS_KEY_FILE` make servers listen with TLS;
`GENSTACK_TLS_CLIENT_CA_FILE` also requires client certificates signed by that CA (mutual TLS).
Clients trust `GENSTACK_TLS_CA_FILE` and present `GENSTACK_TLS_CLIENT_CERT_FILE` /
`GENSTACK_TLS_CLIENT_KEY_FILE` when set.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import PermissionDenied, Unauthenticated
from shared.timefmt import parse_iso

log = logging.getLogger(__name__)

ADMIN = "admin"
SERVICE = "service"
JOBS = "jobs"
PRINCIPAL_HEADER = "x-genstack-principal"
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_REFLECTION_PREFIX = "/grpc.reflection."


class AuthSettings(BaseSettings):
    """Bearer tokens (prefix GENSTACK_AUTH_)."""

    model_config = SettingsConfigDict(env_prefix="GENSTACK_AUTH_", extra="ignore")

    tokens_file: str = Field("", description="Servers: JSON/YAML file of accepted tokens; set = authentication on")
    token: str = Field("", description="Clients: bearer token sent with every call")
    token_file: str = Field("", description="Clients: file holding the bearer token (e.g. a mounted Secret)")

    def client_token(self) -> str:
        if self.token:
            return self.token
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return ""


class TlsSettings(BaseSettings):
    """TLS for gRPC (prefix GENSTACK_TLS_)."""

    model_config = SettingsConfigDict(env_prefix="GENSTACK_TLS_", extra="ignore")

    cert_file: str = Field("", description="Servers: PEM certificate chain; with key_file, servers listen with TLS")
    key_file: str = Field("", description="Servers: PEM private key of cert_file")
    client_ca_file: str = Field("", description="Servers: require client certificates signed by this CA (mTLS)")
    ca_file: str = Field("", description="Clients: CA that signed the servers' certificates; set = TLS on")
    client_cert_file: str = Field("", description="Clients: PEM certificate presented for mutual TLS")
    client_key_file: str = Field("", description="Clients: PEM private key of client_cert_file")
    server_name: str = Field("", description="Clients: expected server name when it differs from the address host")


@functools.cache
def get_auth_settings() -> AuthSettings:
    return AuthSettings()


@functools.cache
def get_tls_settings() -> TlsSettings:
    return TlsSettings()


@dataclass(frozen=True)
class Identity:
    """Who is calling. `principal` is None when authentication is off (everyone is trusted)."""

    principal: str | None
    scopes: frozenset[str] = frozenset()

    @property
    def admin(self) -> bool:
        return self.principal is None or ADMIN in self.scopes

    def may(self, scope: str) -> bool:
        return self.admin or scope in self.scopes

    def owns(self, owner: str) -> bool:
        """Whether this caller may see a resource owned by `owner` (admins see every tenant's)."""
        return self.admin or owner == self.principal


ANONYMOUS = Identity(None)

#: ends a tenant's prefix in stored collection names ("t_alice_3f9a1c__docs")
TENANT_SEPARATOR = "__"


def tenant_prefix(principal: str) -> str:
    """The prefix of a principal's stored collection names: a readable slug and a short hash of the
    whole principal (so principals that slug alike never share a namespace), in the retriever's
    name alphabet ([a-z0-9_])."""
    slug = "".join(ch for ch in principal.lower() if ch.isascii() and ch.isalnum())[:12]
    digest = hashlib.sha256(principal.encode()).hexdigest()[:6]
    return f"t_{slug}_{digest}{TENANT_SEPARATOR}" if slug else f"t_{digest}{TENANT_SEPARATOR}"


def tenant_collection(identity: Identity, name: str) -> str:
    """The stored name of a caller's collection: admins (and everyone when authentication is off)
    address stored names as they are; anyone else has a namespace of their own."""
    return name if identity.admin else tenant_prefix(identity.principal or "") + name


def visible_collection(identity: Identity, stored: str) -> str | None:
    """The name a caller knows a stored collection by, or None when it is another tenant's."""
    if identity.admin:
        return stored
    prefix = tenant_prefix(identity.principal or "")
    return stored[len(prefix):] if stored.startswith(prefix) else None

#: the identity of the call being served (set by the interceptor, read by grpc_call_context)
identity_var: contextvars.ContextVar[Identity] = contextvars.ContextVar("identity", default=ANONYMOUS)


@dataclass(frozen=True)
class _Token:
    digest: bytes
    principal: str
    scopes: frozenset[str]
    expires_at: float | None
    revoked: bool


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _expiry(value) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return float(value)
    return parse_iso(value)


class TokenRegistry:
    """The accepted tokens, re-read from their file when it changes."""

    def __init__(self, path: str | Path, check_every_s: float = 1.0):
        self.path = Path(path)
        self._check_every_s = check_every_s
        self._lock = threading.Lock()
        self._tokens: list[_Token] = []
        self._mtime: float | None = None
        self._next_check = 0.0
        self._load()  # a broken file stops start-up instead of locking everyone out later

    def _load(self) -> None:
        text = self.path.read_text()
        if self.path.suffix in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text) or {}
        else:
            doc = json.loads(text or "{}")
        tokens = []
        for n, entry in enumerate(doc.get("tokens", [])):
            if not entry.get("token") or not entry.get("principal"):
                raise ValueError(f"{self.path}: tokens[{n}] needs a token and a principal")
            tokens.append(_Token(_digest(str(entry["token"])), str(entry["principal"]),
                                 frozenset(entry.get("scopes", [])), _expiry(entry.get("expires_at")),
                                 bool(entry.get("revoked", False))))
        self._tokens = tokens
        self._mtime = self.path.stat().st_mtime

    def _refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._check_every_s
        try:
            if self.path.stat().st_mtime != self._mtime:
                self._load()
        except (OSError, ValueError) as exc:  # keep the last good set; say why in the log
            log.error("tokens file could not be re-read; keeping the previous tokens: %s", exc)

    def identify(self, token: str) -> Identity:
        with self._lock:
            self._refresh()
            tokens = self._tokens
        digest = _digest(token)
        found = None
        for t in tokens:  # compare against every entry, in constant time each
            if hmac.compare_digest(t.digest, digest):
                found = t
        if found is None or found.revoked or (found.expires_at is not None and found.expires_at <= time.time()):
            # one answer for unknown, expired and revoked: nothing to learn by probing
            raise Unauthenticated("the bearer token is not valid; ask an operator for a current one")
        return Identity(found.principal, found.scopes)


def required_scope(method: str) -> str:
    """The scope an RPC needs: `jobs` for the orchestrator, else the service's own name."""
    # "/genstack.<service>.v1.<Name>Service/<Method>"
    parts = method.strip("/").split("/")[0].split(".")
    service = parts[1] if len(parts) > 2 and parts[0] == "genstack" else ""
    return JOBS if service == "orchestrator" else service or ADMIN


def authenticate(registry: TokenRegistry, method: str, metadata: dict[str, str]) -> Identity:
    header = metadata.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("this server requires a bearer token: set GENSTACK_AUTH_TOKEN (metadata "
                              "'authorization: Bearer <token>')")
    identity = registry.identify(token.strip())
    if method.startswith(_REFLECTION_PREFIX):
        return identity
    scope = required_scope(method)
    if not identity.may(scope):
        raise PermissionDenied(f"the token of {identity.principal!r} lacks the {scope!r} scope this call needs")
    acting_for = metadata.get(PRINCIPAL_HEADER)
    if acting_for and SERVICE in identity.scopes:
        # a genstack service calling on behalf of a user: that user's tenancy applies
        return Identity(acting_for, identity.scopes - {ADMIN, SERVICE})
    return identity


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the bearer token of every call except health checks and makes its identity the
    call's (shared.auth.identity_var)."""

    def __init__(self, registry: TokenRegistry):
        self.registry = registry

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())

        def check(context) -> Identity:
            try:
                return authenticate(self.registry, method, metadata)
            except (Unauthenticated, PermissionDenied) as exc:
                context.abort(exc.code, exc.message)

        if handler.unary_unary:
            inner = handler.unary_unary

            def unary(request, context):
                token = identity_var.set(check(context))
                try:
                    return inner(request, context)
                finally:
                    identity_var.reset(token)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def stream(request, context):
                token = identity_var.set(check(context))
                try:
                    yield from inner_stream(request, context)
                finally:
                    identity_var.reset(token)

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                        handler.response_serializer)
        if handler.stream_stream:  # server reflection is bidirectional
            inner_bidi = handler.stream_stream

            def bidi(request_iterator, context):
                token = identity_var.set(check(context))
                try:
                    yield from inner_bidi(request_iterator, context)
                finally:
                    identity_var.reset(token)

            return grpc.stream_stream_rpc_method_handler(bidi, handler.request_deserializer,
                                                         handler.response_serializer)
        return handler


def server_interceptors() -> list[grpc.ServerInterceptor]:
    path = get_auth_settings().tokens_file
    return [AuthInterceptor(TokenRegistry(path))] if path else []


def server_credentials() -> grpc.ServerCredentials | None:
    """TLS credentials from GENSTACK_TLS_*, or None for a plain port."""
    tls = get_tls_settings()
    if not (tls.cert_file and tls.key_file):
        return None
    pair = [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())]
    if tls.client_ca_file:
        return grpc.ssl_server_credentials(pair, root_certificates=Path(tls.client_ca_file).read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def channel_credentials() -> grpc.ChannelCredentials | None:
    tls = get_tls_settings()
    if not tls.ca_file:
        return None
    key = Path(tls.client_key_file).read_bytes() if tls.client_key_file else None
    chain = Path(tls.client_cert_file).read_bytes() if tls.client_cert_file else None
    return grpc.ssl_channel_credentials(Path(tls.ca_file).read_bytes(), key, chain)


def call_metadata(on_behalf_of: str | None = None) -> tuple[tuple[str, str], ...]:
    """What a client sends with every call: its token, and whom a service acts for."""
    md = []
    token = get_auth_settings().client_token()
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if on_behalf_of:
        md.append((PRINCIPAL_HEADER, on_behalf_of))
    return tuple(md)


# -- on behalf of whom, and the Celery transport ---------------------------------------------------

#: the principal a service's outgoing calls act for (the orchestrator sets it to a job's owner)
acting_for_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("acting_for", default=None)


def task_auth_kwargs(kwargs: dict) -> dict:
    """A task message's kwargs plus the sender's token and whom it acts for (when there are any).
    The token travels in the message: Redis ACLs and TLS protect it (docs/security.md)."""
    token = get_auth_settings().client_token()
    if token:
        kwargs["auth_token"] = token
    acting_for = acting_for_var.get()
    if acting_for:
        kwargs["on_behalf_of"] = acting_for
    return kwargs


@functools.cache
def _task_registry(path: str) -> TokenRegistry:
    return TokenRegistry(path)


def authenticate_task(task_name: str, auth_token: str | None, on_behalf_of: str | None) -> Identity:
    """The identity a worker runs a task as; the same rules as a gRPC call to that service."""
    path = get_auth_settings().tokens_file
    if not path:
        return ANONYMOUS
    if not auth_token:
        raise Unauthenticated(f"{task_name}: this worker requires a bearer token in the task's auth_token "
                              "kwarg (set GENSTACK_AUTH_TOKEN for genstack clients)")
    metadata = {"authorization": f"Bearer {auth_token}"}
    if on_behalf_of:
        metadata[PRINCIPAL_HEADER] = on_behalf_of
    service = task_name.split(".", 1)[0]
    return authenticate(_task_registry(path), f"/genstack.{service}.v1.Task/{task_name}", metadata)
