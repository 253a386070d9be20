"""The service catalogue: the one place that names each service.

Everything else is derived from it: client addresses (shared/config.py), typed clients
(shared/clients), the methods a client may call (from the generated stubs, never from
`services/`), `genstack up`, docker-compose.yml and the Kubernetes manifests (deploy/), and GPU
placement. Adding a service is a new entry here plus its own folder; see docs/adding-a-service.md.

Strings name modules instead of importing them, so that reading the catalogue loads nothing: a
client process never imports a service's core (and with it torch) unless it runs that service
in-process.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    #: default gRPC port; GENSTACK_<NAME>_ADDRESS overrides where clients look for it
    port: int
    #: the proto's service name, e.g. "GeneratorService" (its package is genstack.<name>.v1)
    proto_service: str
    #: whether the service has code yet; only implemented services are served, deployed and offered
    implemented: bool = True
    #: runs a model that a GPU speeds up: GPU overlays (compose and Kubernetes) target these
    gpu: bool = False
    #: services it calls; deployments start it after them (only those that are implemented)
    calls: tuple[str, ...] = ()
    #: infrastructure it needs besides Redis (deploy/ knows how to provide each: "weaviate")
    needs: tuple[str, ...] = ()
    #: "module:factory" building the server-side API object (shared.rpc.ServiceApi); loaded only by
    #: servers, workers and the inproc transport. Default: services.<name>.grpc_api:create_api
    api: str = ""
    #: "module:Class" of the typed client; default shared.clients.<name>:<Name>Client
    client: str = ""
    #: the generated stubs' module; default genstack.<name>.v1.<name>_pb2
    proto_module: str = ""
    #: extra fields a test or plugin may attach (ignored by the platform)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        package = f"services.{self.name}"
        object.__setattr__(self, "api", self.api or f"{package}.grpc_api:create_api")
        object.__setattr__(self, "client", self.client or f"shared.clients.{self.name}:{self.name.capitalize()}Client")
        object.__setattr__(self, "proto_module", self.proto_module or f"genstack.{self.name}.v1.{self.name}_pb2")

    @property
    def queue(self) -> str:
        """Each service has its own Celery queue, named after it."""
        return self.name

    @property
    def package(self) -> str:
        """The service's own Python package (server side), from its API module."""
        return self.api.partition(":")[0].rsplit(".", 1)[0]

    @property
    def full_proto_service(self) -> str:
        """The gRPC service name on the wire, e.g. genstack.generator.v1.GeneratorService."""
        return self.descriptor().full_name

    def descriptor(self):
        """The service descriptor from the generated stubs (message types and methods)."""
        import shared  # noqa: F401 - puts the generated stubs on sys.path

        return importlib.import_module(self.proto_module).DESCRIPTOR.services_by_name[self.proto_service]


def _catalogue(*specs: ServiceSpec) -> dict[str, ServiceSpec]:
    return {s.name: s for s in specs}


SERVICES: dict[str, ServiceSpec] = _catalogue(
    ServiceSpec("orchestrator", 50051, "OrchestratorService",
                calls=("retriever", "generator", "validator", "image", "video", "agent")),
    ServiceSpec("retriever", 50052, "RetrieverService", needs=("weaviate",)),
    ServiceSpec("generator", 50053, "GeneratorService", gpu=True),
    ServiceSpec("validator", 50054, "ValidatorService"),
    ServiceSpec("image", 50055, "ImageService", gpu=True),
    ServiceSpec("video", 50056, "VideoService", gpu=True),
    ServiceSpec("agent", 50057, "AgentService",
                calls=("retriever", "generator", "validator", "image", "video")),
)


def get_spec(name: str) -> ServiceSpec:
    try:
        return SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICES)}") from None


def implemented_services() -> list[str]:
    """Names of the services with code, in catalogue order."""
    return [s.name for s in SERVICES.values() if s.implemented]


def implemented_specs() -> list[ServiceSpec]:
    return [s for s in SERVICES.values() if s.implemented]


def dependencies(spec: ServiceSpec) -> list[str]:
    """The implemented services `spec` calls: what a deployment starts before it."""
    return [name for name in spec.calls if name in SERVICES and SERVICES[name].implemented]


def load(path: str) -> Any:
    """The object a "module:attribute" string names (the catalogue's api and client fields)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
