"""Property-based fuzzing of every RPC of every implemented service (issue 18): requests are built
from each RPC's request descriptor by hypothesis (any field set or not, extreme numbers, NaN and
Infinity, odd text, unknown enum values, nested messages, lists, maps, Structs). No request may
answer INTERNAL or UNKNOWN, and each service still answers a plain request afterwards.

In-process for every service (CI), and a bounded run over real gRPC servers for the services that
need no model, with undecodable request bytes too. Few examples per RPC and short deadlines keep
the run to a few minutes on two cores (derandomized, so CI runs the same cases every time)."""

from __future__ import annotations

import contextlib
import math

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.client import ServiceClient, service_methods
from shared.errors import GenstackError
from shared.services import implemented_specs

pytestmark = pytest.mark.slow

CALL_TIMEOUT_S = 2.0
EXAMPLES_INPROC = 6
EXAMPLES_GRPC = 3
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

_INT_RANGES = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_ODD_TEXT = st.sampled_from(["", " ", "(", "-1", "1-", "+", "\x00", "9" * 30, "../../etc/passwd", "#", "{}",
                             "[" * 50, "default", "smollm2-135m", "a" * 300, "\u202e\ufeff", "0-0", "$ref"])
_TEXT = st.one_of(_ODD_TEXT, st.text(max_size=24))
_JSONISH = st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=8), st.integers(-(10**6), 10**6))


def _scalar(field: d.FieldDescriptor):
    t = field.type
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        return st.one_of(st.integers(max(lo, -3), min(hi, 64)), st.sampled_from([lo, hi]), st.integers(lo, hi))
    if t in (d.FieldDescriptor.TYPE_FLOAT, d.FieldDescriptor.TYPE_DOUBLE):
        return st.one_of(st.floats(-2, 2), st.sampled_from([math.nan, math.inf, -math.inf, 1e-38, 1e38, -0.0]),
                         st.floats(width=32 if t == d.FieldDescriptor.TYPE_FLOAT else 64))
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == d.FieldDescriptor.TYPE_STRING:
        return _TEXT
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=48), st.sampled_from([b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\x00" * 64]))
    if t == d.FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [999])
    raise AssertionError(f"unhandled field type {t}")


def message_strategy(desc: d.Descriptor, depth: int = 0):
    """Messages of type `desc`: every field optional, nested messages up to depth 3."""
    cls = message_factory.GetMessageClass(desc)
    if desc.full_name == "google.protobuf.Struct":
        return st.dictionaries(st.text(max_size=12), _JSONISH, max_size=3).map(lambda v: _struct(cls, v))
    optional = {}
    for field in desc.fields:
        if field.type == d.FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                key_f, val_f = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
                if val_f.type == d.FieldDescriptor.TYPE_MESSAGE:
                    if depth >= 2:
                        continue
                    values = message_strategy(val_f.message_type, depth + 1)
                else:
                    values = _scalar(val_f)
                optional[field.name] = st.dictionaries(_scalar(key_f), values, max_size=2)
                continue
            if depth >= 3:
                continue
            inner = message_strategy(field.message_type, depth + 1)
        else:
            inner = _scalar(field)
        optional[field.name] = st.lists(inner, max_size=3) if field.is_repeated else inner
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))


def _struct(cls, values):
    msg = cls()
    with contextlib.suppress(ValueError, TypeError):
        msg.update(values)
    return msg


def _build(cls, values: dict):
    msg = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        if field.type == d.FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            target = getattr(msg, name)
            for k, v in value.items():
                if isinstance(v, type(msg)) or hasattr(v, "DESCRIPTOR"):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            if field.type == d.FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, name).extend(value)
            else:
                getattr(msg, name).extend(value)
        elif field.type == d.FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, name).CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def call_once(client: ServiceClient, method, request) -> grpc.StatusCode | None:
    """Make one call (reading at most a few messages of a stream); the status it ended with."""
    try:
        if method.server_streaming:
            stream = client.stream(method.name, request, timeout=CALL_TIMEOUT_S)
            try:
                for i, _ in enumerate(stream):
                    if i >= 8:
                        break
            finally:
                stream.cancel()
        else:
            client.call(method.name, request, timeout=CALL_TIMEOUT_S)
    except GenstackError as exc:
        return exc.code
    return None


HEALTH_CALLS = {
    "orchestrator": ("ListJobs", {}), "retriever": ("ListCollections", {}), "generator": ("ListModels", {}),
    "validator": ("ListPolicies", {}), "image": None, "agent": None, "video": None,
}


def assert_healthy(client: ServiceClient, service: str) -> None:
    probe = HEALTH_CALLS.get(service)
    if probe is None:
        return
    method = client.methods[probe[0]]
    client.call(method.name, method.request_type(**probe[1]), timeout=60)


def _cheap_orchestrator_api():
    from services.orchestrator.core import OrchestratorCore
    from services.orchestrator.grpc_api import OrchestratorApi
    from services.orchestrator.settings import OrchestratorSettings

    # memory store, short deadlines, one job at a time: fuzzed jobs must not keep the CPU busy
    core = OrchestratorCore(OrchestratorSettings(store="memory", default_deadline_s=3, max_deadline_s=5,
                                                 max_concurrent_jobs=1, recover=False, call_retries=1))
    return OrchestratorApi(core)


RPCS = [(spec.name, m) for spec in implemented_specs() for m in service_methods(spec.name).values()]


@pytest.fixture(scope="module")
def clients():
    made: dict[str, ServiceClient] = {}

    def get(service: str) -> ServiceClient:
        if service not in made:
            api = _cheap_orchestrator_api() if service == "orchestrator" else None
            made[service] = ServiceClient("inproc", service=service, api=api)
        return made[service]

    yield get
    for client in made.values():
        if client._api is not None and client.service == "orchestrator":
            client._api.close()


@pytest.mark.parametrize("service,method", RPCS, ids=[f"{s}.{m.name}" for s, m in RPCS])
def test_no_request_answers_internal_inproc(clients, service, method):
    client = clients(service)
    seen: list[grpc.StatusCode | None] = []

    @settings(max_examples=EXAMPLES_INPROC, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(message_strategy(method.request_type.DESCRIPTOR))
    def check(request):
        code = call_once(client, method, request)
        seen.append(code)
        assert code not in BAD, f"{service}.{method.name} answered {code} to {request!r}"[:2000]

    check()
    assert seen
    assert_healthy(client, service)


# -- over gRPC ----------------------------------------------------------------------------------------

GRPC_SERVICES = ("orchestrator", "validator")  # no model needed to answer most requests


@pytest.fixture(scope="module")
def grpc_servers():
    from shared.grpc_server import Server

    servers = {}
    for name in GRPC_SERVICES:
        if name == "orchestrator":
            api = _cheap_orchestrator_api()
        else:
            from services.validator.core import ValidatorCore
            from services.validator.grpc_api import ValidatorApi
            from services.validator.settings import ValidatorSettings

            api = ValidatorApi(ValidatorCore(ValidatorSettings(warm_up_models=False)))
        servers[name] = Server(api, 0, host="127.0.0.1").start(warm_up_in_background=False)
    yield servers
    for server in servers.values():
        server.stop(grace=0)


GRPC_RPCS = [(s, m) for s, m in RPCS if s in GRPC_SERVICES]


@pytest.mark.parametrize("service,method", GRPC_RPCS, ids=[f"{s}.{m.name}" for s, m in GRPC_RPCS])
def test_no_request_answers_internal_over_grpc(grpc_servers, service, method):
    server = grpc_servers[service]
    client = ServiceClient("grpc", service=service, address=f"127.0.0.1:{server.port}")
    try:
        @settings(max_examples=EXAMPLES_GRPC, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(message_strategy(method.request_type.DESCRIPTOR))
        def check(request):
            code = call_once(client, method, request)
            assert code not in BAD, f"{service}.{method.name} answered {code} to {request!r}"[:2000]

        check()
        assert_healthy(client, service)
    finally:
        client.close()


@pytest.mark.parametrize("service", GRPC_SERVICES)
def test_undecodable_request_bytes_are_invalid_argument_and_the_server_stays_serving(grpc_servers, service):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = grpc_servers[service]
    spec = next(s for s in implemented_specs() if s.name == service)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method in service_methods(service).values():
            path = f"/{spec.full_proto_service}/{method.name}"
            for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 3):
                if method.server_streaming:
                    rpc = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
                    with pytest.raises(grpc.RpcError) as err:
                        list(rpc(garbage, timeout=5))
                else:
                    rpc = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
                    with pytest.raises(grpc.RpcError) as err:
                        rpc(garbage, timeout=5)
                assert err.value.code() not in BAD, (method.name, garbage, err.value.details())
                if garbage == b"\xff\xff\xff\xff":
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, err.value.details())
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
