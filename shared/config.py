"""Typed settings read once from GENSTACK_* environment variables.

`Settings` holds what every process shares (Redis, transports, folders, limits). Each service
adds its own class next to its code, subclassing `ServiceSettings` with the prefix
GENSTACK_<SERVICE>_; `all_settings_classes()` finds them all (deploy tests walk it).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Transport = Literal["inproc", "grpc", "celery"]


def _default_home() -> Path:
    return Path.home() / ".cache" / "genstack"


class Settings(BaseSettings):
    """Process-wide settings (prefix GENSTACK_)."""

    model_config = SettingsConfigDict(env_prefix="GENSTACK_", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for queues, results, jobs")
    broker_url: str | None = Field(None, description="Celery broker; defaults to redis_url")
    result_backend: str | None = Field(None, description="Celery result backend; defaults to redis_url")
    transport: Transport = Field("inproc", description="How clients reach services by default")
    home: Path = Field(default_factory=_default_home, description="Root folder for caches and data")
    model_cache: Path | None = Field(None, description="Converted model cache; defaults to <home>/models")
    data_dir: Path | None = Field(None, description="Persistent data (stores, artifacts); defaults to <home>/data")
    log_level: str = Field("INFO", description="Python logging level")
    log_json: bool = Field(True, description="JSON lines logging (false: plain text for terminals)")
    grpc_bind_host: str = Field("127.0.0.1", description="Host the gRPC servers bind to")
    grpc_max_message_bytes: int = Field(16 * 1024 * 1024, description="Max gRPC message size")
    grpc_workers: int = Field(16, description="Threads serving gRPC calls per server")
    grpc_grace_s: float = Field(30.0, description="Drain time for in-flight calls on SIGTERM")
    grpc_reflection: bool = Field(True, description="Serve gRPC reflection (lists the API; with authentication on, "
                                  "only to callers with a valid token)")
    default_deadline_s: float = Field(300.0, description="Deadline a client applies when none is given")
    torch_threads: int = Field(
        0, description="torch intra-op threads per process (0: auto, the cores this process may use shared by the "
        "model processes, one on a 2-core machine; genstack up sets it for each process it starts)"
    )
    stream_ttl_s: int = Field(3600, description="Lifetime of Celery stream/cancel keys in Redis")
    metrics_port: int | None = Field(
        None, description="Serve Prometheus metrics on this port at /metrics (unset: off; 0: any free port; "
        "`genstack up` gives each process its own port from here on)"
    )
    task_max_deadline_s: float = Field(
        900.0, gt=0, description="Longest deadline a queued (Celery) task may carry; a longer one is refused, so "
        "that the visibility timeout below always outlasts a running task"
    )
    celery_visibility_timeout_s: float | None = Field(
        None, description="Seconds after which a task taken by a worker that died is delivered again (Redis "
        "broker); unset: task_max_deadline_s + 60. Shorter than a task's run time means it runs twice"
    )

    celery_signing_key_file: Path | None = Field(
        None, description="PEM private key (RSA) that signs the task messages this process sends; with the "
        "certificate and the store below, task messages are signed and workers accept only signed ones"
    )
    celery_signing_cert_file: Path | None = Field(
        None, description="PEM certificate of the signing key (its issuer and serial name the signer)"
    )
    celery_signing_cert_store: Path | None = Field(
        None, description="Folder (or glob) of PEM certificates whose signatures workers trust"
    )

    @property
    def message_signing(self) -> bool:
        """Whether task messages are signed (all three signing settings given); some but not all is an error."""
        given = [self.celery_signing_key_file, self.celery_signing_cert_file, self.celery_signing_cert_store]
        if any(given) and not all(given):
            raise ValueError("message signing needs GENSTACK_CELERY_SIGNING_KEY_FILE, "
                             "GENSTACK_CELERY_SIGNING_CERT_FILE and GENSTACK_CELERY_SIGNING_CERT_STORE together")
        return all(given)

    @property
    def visibility_timeout_s(self) -> float:
        return self.celery_visibility_timeout_s or self.task_max_deadline_s + 60.0

    @property
    def celery_broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def celery_backend(self) -> str:
        return self.result_backend or self.redis_url

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache or self.home / "models"

    @property
    def data_path(self) -> Path:
        return self.data_dir or self.home / "data"


class ServiceSettings(BaseSettings):
    """Base for per-service settings; subclasses set env_prefix GENSTACK_<SERVICE>_."""

    model_config = SettingsConfigDict(env_prefix="GENSTACK_", extra="ignore")


class _ClientSettingsBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENSTACK_", extra="ignore")

    def address(self, service: str) -> str:
        from shared.services import get_spec

        return getattr(self, f"{service}_address", None) or f"127.0.0.1:{get_spec(service).port}"


def _client_settings_class() -> type[BaseSettings]:
    """Where clients find each service's gRPC server (GENSTACK_<SERVICE>_ADDRESS), one field per
    catalogue entry, defaulting to its port on loopback: the ports are listed only in the catalogue."""
    from pydantic import create_model

    from shared.services import SERVICES

    fields = {
        f"{s.name}_address": (str, Field(f"127.0.0.1:{s.port}", description=f"host:port of the {s.name} gRPC server"))
        for s in SERVICES.values()
    }
    return create_model("ClientSettings", __base__=_ClientSettingsBase, __module__=__name__, **fields)


ClientSettings = _client_settings_class()


@functools.cache
def get_settings() -> Settings:
    return Settings()


@functools.cache
def get_client_settings() -> ClientSettings:
    return ClientSettings()


def all_settings_classes() -> list[type[BaseSettings]]:
    """Every settings class in the project, importing each service's settings module."""
    import importlib

    from shared.services import SERVICES

    for module in ("shared.embeddings", "shared.artifacts", "shared.auth"):  # shared modules with settings
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    for spec in SERVICES.values():
        try:
            importlib.import_module(f"{spec.package}.settings")
        except ModuleNotFoundError:
            pass
    found: list[type[BaseSettings]] = [Settings, ClientSettings]
    stack = list(ServiceSettings.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls.__module__.startswith(("shared.", "services.")):  # not classes that tests define
            found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def env_vars() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, for docs and deploy checks."""
    rows = []
    for cls in all_settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            default = field.get_default(call_default_factory=False) if field.default_factory is None else "(computed)"
            rows.append((f"{prefix}{name}".upper(), "" if default is None else str(default), field.description or ""))
    return rows


if __name__ == "__main__":  # `python -m shared.config`: the configuration table in Markdown
    from shared.config import env_vars as _env_vars  # this module's classes, not __main__'s copies

    print("| variable | default | meaning |\n| --- | --- | --- |")
    for var, default, doc in _env_vars():
        print(f"| `{var}` | `{default}` | {doc} |")
