"""The catalogue of services: names, default ports, queues and where their API lives."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    #: default gRPC port; GENSTACK_<NAME>_ADDRESS overrides where clients look for it
    port: int
    #: "module:factory" returning the service's API object (see shared.rpc.ServiceApi)
    api: str

    @property
    def queue(self) -> str:
        """Each service has its own Celery queue, named after it."""
        return self.name

    @property
    def proto_service(self) -> str:
        """Full gRPC service name, e.g. genstack.generator.v1.GeneratorService."""
        return f"genstack.{self.name}.v1.{self.name.capitalize()}Service"


SERVICES: dict[str, ServiceSpec] = {
    s.name: s
    for s in (
        ServiceSpec("orchestrator", 50051, "services.orchestrator.grpc_api:create_api"),
        ServiceSpec("retriever", 50052, "services.retriever.grpc_api:create_api"),
        ServiceSpec("generator", 50053, "services.generator.grpc_api:create_api"),
        ServiceSpec("validator", 50054, "services.validator.grpc_api:create_api"),
        ServiceSpec("image", 50055, "services.image.grpc_api:create_api"),
        ServiceSpec("video", 50056, "services.video.grpc_api:create_api"),
        ServiceSpec("agent", 50057, "services.agent.grpc_api:create_api"),
    )
}


def get_spec(name: str) -> ServiceSpec:
    try:
        return SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICES)}") from None
