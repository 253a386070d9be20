"""Typed clients, one module per service, each a thin ServiceClient subclass; `client_for` builds
the one the catalogue names for a service (no per-service branches anywhere else)."""

from __future__ import annotations

from shared.client import ServiceClient
from shared.services import get_spec, load


def client_for(service: str, transport: str | None = None, **kwargs) -> ServiceClient:
    """The typed client of `service` (its catalogue entry's `client`) over `transport`."""
    cls = load(get_spec(service).client)
    return cls(transport, service=service, **kwargs)
