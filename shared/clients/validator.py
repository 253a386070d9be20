"""Typed validator client over grpc, celery or inproc."""

from __future__ import annotations

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.validator.v1 import validator_pb2 as pb
from shared.client import ServiceClient


class ValidatorClient(ServiceClient):
    service = "validator"

    def validate(self, request: pb.ValidateRequest, timeout: float | None = None) -> pb.ValidateResponse:
        return self.call("Validate", request, timeout)

    def list_policies(self, timeout: float | None = None) -> pb.ListPoliciesResponse:
        return self.call("ListPolicies", pb.ListPoliciesRequest(), timeout)
