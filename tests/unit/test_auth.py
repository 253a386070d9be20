"""Authentication on every gRPC server: bearer tokens with scopes, mutual TLS, open health checks.

Real gRPC servers on loopback with each implemented service's real servicer (models are not loaded:
a refused call never reaches the core). Certificates come from a test CA made here."""

from __future__ import annotations

import datetime
import json
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import auth
from shared.client import service_methods
from shared.errors import PermissionDenied, Unauthenticated
from shared.grpc_server import Server
from shared.services import get_spec, implemented_services, load

TOKENS = {
    "alice": ("tok-alice-jobs", ["jobs"]),
    "gen": ("tok-gen-only", ["generator"]),
    "ops": ("tok-ops-admin", ["admin"]),
    "old": ("tok-expired", ["admin"]),
    "gone": ("tok-revoked", ["admin"]),
}


def _tokens_file(path):
    entries = [{"token": t, "principal": p, "scopes": s} for p, (t, s) in TOKENS.items()]
    entries[3]["expires_at"] = "2020-01-01T00:00:00Z"
    entries[4]["revoked"] = True
    path.write_text(json.dumps({"tokens": entries}))
    return path


@pytest.fixture
def auth_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSTACK_AUTH_TOKENS_FILE", str(_tokens_file(tmp_path / "tokens.json")))
    for cache in (auth.get_auth_settings, auth.get_tls_settings, auth._task_registry):
        cache.cache_clear()
    yield tmp_path
    for cache in (auth.get_auth_settings, auth.get_tls_settings, auth._task_registry):
        cache.cache_clear()


def _serve(service: str) -> Server:
    """The service's real servicer behind the real interceptors, without loading its models."""
    server = Server(load(get_spec(service).api)(), 0, host="127.0.0.1")
    server.grpc_server.start()
    return server


def _call(channel, service: str, method, token: str | None):
    rpc = (channel.unary_stream if method.server_streaming else channel.unary_unary)(
        f"/{get_spec(service).full_proto_service}/{method.name}",
        request_serializer=method.request_type.SerializeToString,
        response_deserializer=method.response_type.FromString,
    )
    md = (("authorization", f"Bearer {token}"),) if token is not None else ()
    try:
        result = rpc(method.request_type(), timeout=10, metadata=md)
        if method.server_streaming:
            next(iter(result), None)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("service", implemented_services())
def test_every_rpc_refuses_bad_credentials_and_health_stays_open(auth_env, service):
    server = _serve(service)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING  # answered, without a token
            for method in service_methods(service).values():
                where = f"{service}.{method.name}"
                code, details = _call(channel, service, method, None)
                assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details, where
                for bad in ("not-a-token", TOKENS["old"][0], TOKENS["gone"][0]):
                    code, details = _call(channel, service, method, bad)
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (where, bad)
                    assert "not valid" in details and bad not in details, (where, details)
                # a valid token without this service's scope
                other = TOKENS["gen"][0] if service != "generator" else TOKENS["alice"][0]
                code, details = _call(channel, service, method, other)
                assert code == grpc.StatusCode.PERMISSION_DENIED and "scope" in details, where
    finally:
        server.stop(0)


def test_a_token_with_the_scope_gets_through(auth_env):
    server = _serve("orchestrator")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            list_jobs = service_methods("orchestrator")["ListJobs"]
            assert _call(channel, "orchestrator", list_jobs, TOKENS["alice"][0])[0] == grpc.StatusCode.OK
            assert _call(channel, "orchestrator", list_jobs, TOKENS["ops"][0])[0] == grpc.StatusCode.OK
    finally:
        server.stop(0)


def test_the_typed_client_sends_its_token(auth_env, monkeypatch):
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb
    from shared.clients import client_for

    server = _serve("orchestrator")
    try:
        with client_for("orchestrator", "grpc", address=f"127.0.0.1:{server.port}") as c:
            with pytest.raises(Unauthenticated):
                c.list_jobs(pb.ListJobsRequest(), timeout=10)
        monkeypatch.setenv("GENSTACK_AUTH_TOKEN", TOKENS["gen"][0])
        auth.get_auth_settings.cache_clear()
        with client_for("orchestrator", "grpc", address=f"127.0.0.1:{server.port}") as c:
            with pytest.raises(PermissionDenied):
                c.list_jobs(pb.ListJobsRequest(), timeout=10)
        token_file = auth_env / "alice.token"
        token_file.write_text(TOKENS["alice"][0] + "\n")
        monkeypatch.delenv("GENSTACK_AUTH_TOKEN")
        monkeypatch.setenv("GENSTACK_AUTH_TOKEN_FILE", str(token_file))  # e.g. a mounted Secret
        auth.get_auth_settings.cache_clear()
        with client_for("orchestrator", "grpc", address=f"127.0.0.1:{server.port}") as c:
            assert isinstance(c.list_jobs(pb.ListJobsRequest(), timeout=10), pb.ListJobsResponse)
    finally:
        server.stop(0)


def test_a_token_is_revoked_by_editing_the_file(auth_env):
    registry = auth.TokenRegistry(auth_env / "tokens.json", check_every_s=0)
    assert registry.identify(TOKENS["alice"][0]).principal == "alice"
    doc = json.loads((auth_env / "tokens.json").read_text())
    doc["tokens"][0]["revoked"] = True
    time.sleep(0.01)
    (auth_env / "tokens.json").write_text(json.dumps(doc))
    with pytest.raises(Unauthenticated):
        registry.identify(TOKENS["alice"][0])


def test_a_service_may_act_for_a_user_but_a_user_may_not_impersonate(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("tokens:\n  - {token: svc, principal: orchestrator, scopes: [service, generator]}\n"
                    "  - {token: usr, principal: bob, scopes: [generator]}\n")
    registry = auth.TokenRegistry(path)
    method = "/genstack.generator.v1.GeneratorService/Generate"
    acting = auth.authenticate(registry, method, {"authorization": "Bearer svc", auth.PRINCIPAL_HEADER: "alice"})
    assert acting.principal == "alice" and not acting.admin
    claimed = auth.authenticate(registry, method, {"authorization": "Bearer usr", auth.PRINCIPAL_HEADER: "alice"})
    assert claimed.principal == "bob"


def test_a_broken_tokens_file_stops_start_up(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"tokens": [{"token": "x"}]}')
    with pytest.raises(ValueError, match="needs a token and a principal"):
        auth.TokenRegistry(path)


# -- mutual TLS ----------------------------------------------------------------------------------

def _ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, name: str, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(folder, stem, key, cert):
    (folder / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture
def pki(tmp_path):
    ca_key, ca_cert = _ca("genstack test CA")
    other_key, other_cert = _ca("some other CA")
    _write(tmp_path, "ca", ca_key, ca_cert)
    _write(tmp_path, "server", *_leaf(ca_key, ca_cert, "localhost", server=True))
    _write(tmp_path, "client", *_leaf(ca_key, ca_cert, "alice", server=False))
    _write(tmp_path, "stranger", *_leaf(other_key, other_cert, "mallory", server=False))
    return tmp_path


def _tls_env(monkeypatch, pki, client: str | None):
    monkeypatch.setenv("GENSTACK_TLS_CERT_FILE", str(pki / "server.crt"))
    monkeypatch.setenv("GENSTACK_TLS_KEY_FILE", str(pki / "server.key"))
    monkeypatch.setenv("GENSTACK_TLS_CLIENT_CA_FILE", str(pki / "ca.crt"))
    monkeypatch.setenv("GENSTACK_TLS_CA_FILE", str(pki / "ca.crt"))
    monkeypatch.setenv("GENSTACK_TLS_SERVER_NAME", "localhost")
    if client:
        monkeypatch.setenv("GENSTACK_TLS_CLIENT_CERT_FILE", str(pki / f"{client}.crt"))
        monkeypatch.setenv("GENSTACK_TLS_CLIENT_KEY_FILE", str(pki / f"{client}.key"))
    auth.get_tls_settings.cache_clear()


@pytest.mark.parametrize("service", implemented_services())
def test_mutual_tls_refuses_a_certificate_from_another_ca(pki, monkeypatch, service):
    from shared.clients import client_for
    from shared.errors import Unavailable

    _tls_env(monkeypatch, pki, "client")
    server = _serve(service)
    try:
        assert server.tls
        address = f"127.0.0.1:{server.port}"
        with client_for(service, "grpc", address=address) as c:  # the right CA: the handshake succeeds
            status = health_pb2_grpc.HealthStub(c._channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        for client in ("stranger", None):  # a foreign certificate, and none at all
            for var in ("GENSTACK_TLS_CLIENT_CERT_FILE", "GENSTACK_TLS_CLIENT_KEY_FILE"):
                monkeypatch.delenv(var, raising=False)
            _tls_env(monkeypatch, pki, client)
            with client_for(service, "grpc", address=address) as c:
                method = next(iter(c.methods.values()))
                with pytest.raises(Unavailable):
                    if method.server_streaming:
                        next(iter(c.stream(method.name, method.request_type(), timeout=5)))
                    else:
                        c.call(method.name, method.request_type(), timeout=5)
    finally:
        server.stop(0)
        auth.get_tls_settings.cache_clear()
