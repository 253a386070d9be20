"""The validator's gRPC/Celery/inproc API: protobuf <-> core conversion, nothing else."""

from __future__ import annotations

from google.protobuf import json_format

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.validator.v1 import validator_pb2, validator_pb2_grpc
from services.validator.core import ValidatorCore
from services.validator.datatypes import Artifact, CheckSpec, Context, ExpectedMedia, Source, Verdict
from shared.errors import InvalidArgument
from shared.rpc import CallContext, ServiceApi


def artifact_from_proto(msg: validator_pb2.Artifact, core: ValidatorCore) -> Artifact:
    which = msg.WhichOneof("kind")
    if which == "text":
        return Artifact.of_text(msg.text)
    if which == "image":
        return Artifact.of_image(msg.image)
    if which == "video":
        return Artifact.of_video(msg.video)
    if which == "frames":
        return Artifact.of_frames(list(msg.frames.images), msg.frames.fps)
    if which == "ref":
        return core.artifact_from_ref(msg.ref.uri, msg.ref.mime_type, msg.ref.sha256)
    raise InvalidArgument("must set one of text, image, video, frames, ref", field="artifact")


def context_from_proto(msg: validator_pb2.ValidationContext) -> Context:
    e = msg.expected
    return Context(
        request=msg.request,
        sources=[Source(s.id, s.text) for s in msg.sources],
        expected=ExpectedMedia(e.width, e.height, e.num_frames, e.fps),
    )


def spec_from_proto(msg: validator_pb2.CheckSpec) -> CheckSpec:
    try:
        params = json_format.MessageToDict(msg.params) if msg.HasField("params") else {}
    except ValueError:  # NaN or Infinity in the Struct: no JSON for them, and no meaning as a parameter
        raise InvalidArgument(f"parameters of check {msg.name!r} must be finite numbers (got NaN or Infinity)",
                              field="checks.params") from None
    return CheckSpec(msg.name, _ints(params), msg.label, msg.advisory)


def _ints(value):
    """google.protobuf.Struct stores every number as a double: give whole numbers back as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def spec_to_proto(spec: CheckSpec) -> validator_pb2.CheckSpec:
    msg = validator_pb2.CheckSpec(name=spec.name, label=spec.label, advisory=spec.advisory)
    msg.params.update(spec.params)
    return msg


def verdict_to_proto(v: Verdict) -> validator_pb2.ValidateResponse:
    return validator_pb2.ValidateResponse(
        passed=v.passed,
        score=v.score,
        feedback=v.feedback,
        policy=v.policy,
        duration_ms=v.duration_ms,
        results=[
            validator_pb2.CheckResult(
                name=r.name, check=r.check, passed=r.passed, score=r.score, message=r.message, feedback=r.feedback,
                advisory=r.advisory, duration_ms=r.duration_ms,
                evidence=[
                    validator_pb2.Evidence(kind=e.kind, text=e.text, where=e.where, start=e.start, end=e.end,
                                           value=e.value)
                    for e in r.evidence
                ],
            )
            for r in v.results
        ],
    )


class ValidatorApi(ServiceApi):
    service = "validator"
    descriptor = validator_pb2.DESCRIPTOR.services_by_name["ValidatorService"]
    servicer_base = validator_pb2_grpc.ValidatorServiceServicer
    add_to_server = staticmethod(validator_pb2_grpc.add_ValidatorServiceServicer_to_server)

    def Validate(self, request: validator_pb2.ValidateRequest, ctx: CallContext) -> validator_pb2.ValidateResponse:
        ctx.check()
        verdict = self.core.validate(
            artifact_from_proto(request.artifact, self.core),
            context_from_proto(request.context),
            policy=request.policy,
            checks=[spec_from_proto(c) for c in request.checks],
            check_alive=ctx.check,
        )
        return verdict_to_proto(verdict)

    def ListPolicies(
        self, request: validator_pb2.ListPoliciesRequest, ctx: CallContext
    ) -> validator_pb2.ListPoliciesResponse:
        response = validator_pb2.ListPoliciesResponse(injection_detector=self.core.injection_detector_description())
        for p in self.core.policies():
            response.policies.append(validator_pb2.PolicyInfo(
                name=p.name, description=p.description, origin=p.origin, checks=[spec_to_proto(c) for c in p.checks]))
        for name, d in sorted(self.core.checks().items()):
            info = validator_pb2.CheckInfo(name=name, description=d.description, artifact_kinds=list(d.kinds))
            info.default_params.update(d.default_params())
            response.checks.append(info)
        return response


API_CLASS = ValidatorApi


def create_api() -> ValidatorApi:
    return ValidatorApi(ValidatorCore())
