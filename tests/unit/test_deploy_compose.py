"""docker-compose.yml stays valid and true to the code.

Validated offline against the Compose Specification's JSON Schema (vendored in tests/data, see
its README), and checked for what a schema cannot see: every service and queue of
shared/services.py has a gRPC server and a Celery worker, dependencies wait on health, Redis
keeps an append-only file, Weaviate is pinned at >= 1.27 without a vectorizer, and .env.example
documents exactly the variables the file interpolates.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from deploy import consistency, generate_compose
from shared.services import SERVICES, dependencies, implemented_services

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "deploy" / "docker" / "compose.gpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
SCHEMA_FILE = REPO / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "89f4bdc4ba651ff024118917a7cdb67d9d78c1af4bab9b12ec2fc85f5b7d90d3"
HOME = "/var/lib/genstack"


@pytest.fixture(scope="module")
def schema() -> dict:
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256, (
        "tests/data/compose-spec.json changed: update it as tests/data/README.md says, with its sha256"
    )
    return json.loads(SCHEMA_FILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return consistency.load_compose(COMPOSE)


def _errors(schema: dict, doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


#: compose refuses to start without these (no default password); any value will do for the checks
SECRETS = consistency.COMPOSE_SECRETS


def _interpolated(text: str, env: dict[str, str]):
    """The compose document as `docker compose` sees it with `env` (values only: keys stay)."""
    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return consistency.interpolate(node, env) if isinstance(node, str) else node

    return walk(yaml.safe_load(text))


# --- schema ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [COMPOSE, GPU_OVERRIDE], ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_spec(schema, path):
    text = path.read_text()
    assert _errors(schema, yaml.safe_load(text)) == []
    # and once the ${...} values are filled in, with .env.example and with nothing set
    assert _errors(schema, _interpolated(text, {**_env_example(), **SECRETS})) == []
    assert _errors(schema, _interpolated(text, SECRETS)) == []


def test_schema_rejects_what_compose_would_reject(schema, compose):
    bad = copy.deepcopy(compose)
    bad["services"]["generator"]["healtcheck"] = bad["services"]["generator"].pop("healthcheck")  # sic
    assert any("healtcheck" in e for e in _errors(schema, bad))
    bad = copy.deepcopy(compose)
    bad["services"]["generator"]["depends_on"]["redis"]["condition"] = "healthy"
    assert _errors(schema, bad)


@pytest.mark.skipif(not (shutil.which("docker-compose") or shutil.which("docker")), reason="no Docker Compose CLI")
def test_docker_compose_cli_accepts_the_files(tmp_path):
    """Where a Compose CLI exists (no engine needed for `config`), it must accept the files too."""
    for cli in (["docker-compose"], ["docker", "compose"]):
        if shutil.which(cli[0]) is None:
            continue
        probe = subprocess.run([*cli, "version"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        result = subprocess.run(
            [*cli, "-f", str(COMPOSE), "-f", str(GPU_OVERRIDE), "config", "--quiet"],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
        # stderr too: some wrappers of the binary always exit 0; valid files print nothing with --quiet
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr
        return
    pytest.skip("docker is only the client here, without the compose plugin")


# --- true to the code -----------------------------------------------------------------------

def _genstack(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if consistency._is_genstack_compose_service(s)}


IMPLEMENTED = implemented_services()


def test_compose_files_are_generated_from_the_catalogue():
    stale = generate_compose.stale_files()
    assert not stale, f"regenerate with `python -m deploy.generate_compose`: {[str(p) for p in stale]}"


@pytest.mark.parametrize("name", sorted(IMPLEMENTED))
def test_every_service_has_a_server_and_a_worker(compose, name):
    spec = SERVICES[name]
    services = compose["services"]

    server = services[name]
    assert server["build"]["args"]["SERVICE"] == name and server["build"]["args"]["ROLE"] == "grpc"
    published = [consistency.interpolate(p, {}).rsplit(":", 1)[1] for p in server["ports"]]
    assert published == [str(spec.port)], f"{name} must publish its gRPC port {spec.port}"
    assert server["healthcheck"]["test"] == ["CMD", "python", "-m", "deploy.healthcheck", "grpc"]

    worker = services[f"{name}-worker"]
    assert worker["build"]["args"]["SERVICE"] == name and worker["build"]["args"]["ROLE"] == "worker"
    assert "ports" not in worker
    assert worker["labels"]["dev.genstack.queue"] == spec.queue
    assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "deploy.healthcheck", "broker"]

    # clients reach the server by its compose service name and port
    for svc in (server, worker):
        assert svc["environment"][f"GENSTACK_{name.upper()}_ADDRESS"] == f"{name}:{spec.port}"


def test_no_container_for_an_unknown_service(compose):
    expected = {n for name in IMPLEMENTED for n in (name, f"{name}-worker")}
    assert set(_genstack(compose)) == expected
    assert set(compose["services"]) - expected == {"redis", "weaviate", "console"}


def test_dependencies_wait_on_health(compose):
    services = compose["services"]
    for name, svc in _genstack(compose).items():
        deps = svc["depends_on"]
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        assert deps["redis"] == {"condition": "service_healthy"}, name
        for dep, how in deps.items():
            assert how["condition"] == "service_healthy", f"{name} -> {dep}"
            assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has no health check"
        service = svc["build"]["args"]["SERVICE"]
        if service == "retriever":
            assert "weaviate" in deps, f"{name} stores vectors in Weaviate"
        assert set(dependencies(SERVICES[service])) <= deps.keys(), f"{name} waits for the services it calls"
        assert deps.keys() <= {"redis", "weaviate", *IMPLEMENTED}, f"{name} waits for a service that does not exist"
        if service == "orchestrator":
            assert set(IMPLEMENTED) - {"orchestrator", "agent"} <= deps.keys(), "it waits for the services"
    # no cycles: a topological order exists
    remaining = {n: set(s.get("depends_on", {})) for n, s in services.items()}
    while remaining:
        ready = [n for n, deps in remaining.items() if not deps & remaining.keys()]
        assert ready, f"depends_on cycle among {sorted(remaining)}"
        for n in ready:
            del remaining[n]


def test_genstack_containers_are_locked_down(compose):
    volumes = compose["volumes"]
    for name, svc in _genstack(compose).items():
        assert svc["user"] == "10001:10001" and svc["read_only"] is True, name
        assert "/tmp" in svc["tmpfs"] and svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        mounts = dict(v.split(":", 1) for v in svc["volumes"])
        assert mounts.get("genstack-home") == HOME and "genstack-home" in volumes, name
        assert svc["environment"]["GENSTACK_HOME"] == HOME
        assert svc["environment"]["GENSTACK_GRPC_BIND_HOST"] == "0.0.0.0", f"{name}: reachable from other containers"


def test_redis_keeps_an_append_only_file(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    for svc in _genstack(compose).values():
        url = urlparse(consistency.interpolate(svc["environment"]["GENSTACK_REDIS_URL"], SECRETS))
        assert url.hostname == "redis" and url.port == 6379 and url.password == SECRETS["REDIS_PASSWORD"]


def test_compose_refuses_to_start_without_the_redis_password_and_weaviate_key():
    # no default secret to forget: `docker compose` stops with this message when .env lacks them
    text = COMPOSE.read_text()
    for missing in SECRETS:
        with pytest.raises(ValueError, match=f"required variable {missing} is not set: set {missing} in .env"):
            _interpolated(text, {k: v for k, v in SECRETS.items() if k != missing})
    assert "change-me" not in text and "change-me" not in ENV_EXAMPLE.read_text()


def test_weaviate_is_pinned_without_a_vectorizer(compose):
    weaviate = compose["services"]["weaviate"]
    version = re.fullmatch(r"cr\.weaviate\.io/semitechnologies/weaviate:(\d+)\.(\d+)\.(\d+)", weaviate["image"])
    assert version and tuple(map(int, version.groups())) >= (1, 27, 0), weaviate["image"]
    assert weaviate["environment"]["DEFAULT_VECTORIZER_MODULE"] == "none"
    assert "healthcheck" in weaviate and any(v.endswith(":/var/lib/weaviate") for v in weaviate["volumes"])
    retriever = compose["services"]["retriever"]["environment"]
    assert retriever["GENSTACK_RETRIEVER_BACKEND"] == "weaviate"
    assert urlparse(retriever["GENSTACK_RETRIEVER_WEAVIATE_URL"]).netloc == "weaviate:8080"
    settings = pytest.importorskip("services.retriever.settings", reason="the retriever has not landed yet")
    grpc_port = int(retriever.get("GENSTACK_RETRIEVER_WEAVIATE_GRPC_PORT",
                                  settings.RetrieverSettings.model_fields["weaviate_grpc_port"].default))
    # Weaviate serves gRPC on 50051 inside the compose network (the host sees it on WEAVIATE_GRPC_PORT)
    assert grpc_port == 50051


def test_env_example_documents_exactly_the_interpolated_variables():
    used = consistency.interpolation_variables(COMPOSE.read_text())
    used |= consistency.interpolation_variables(GPU_OVERRIDE.read_text())
    documented = set(_env_example())
    assert used == documented, f"only in compose: {used - documented}; only in .env.example: {documented - used}"


def test_gpu_override_targets_gpu_services_only(compose):
    override = yaml.safe_load(GPU_OVERRIDE.read_text())
    for name, svc in override["services"].items():
        assert name in compose["services"], f"override for unknown service {name}"
        service = compose["services"][name]["build"]["args"]["SERVICE"]
        assert SERVICES[service].gpu, f"{service} is not a GPU service in the catalogue"
        assert svc["environment"] == {f"GENSTACK_{service.upper()}_DEVICE": "cuda"}
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_gpu_override_covers_every_implemented_gpu_service():
    override = yaml.safe_load(GPU_OVERRIDE.read_text())
    gpu = {n for n in IMPLEMENTED if SERVICES[n].gpu}
    assert set(override["services"]) == {c for n in gpu for c in (n, f"{n}-worker")}


def test_console_runs_from_the_orchestrator_image_after_it(compose):
    console = compose["services"]["console"]
    assert console["image"] == compose["services"]["orchestrator"]["image"]
    assert console["command"][:3] == ["python", "-m", "services.console"]
    assert console["depends_on"] == {"orchestrator": {"condition": "service_healthy"}}
    assert console["environment"]["GENSTACK_ORCHESTRATOR_ADDRESS"].startswith("orchestrator:")
    assert console["read_only"] is True and console["cap_drop"] == ["ALL"]
    # every process, console included, serves /metrics on the same port inside its container
    assert {s["environment"]["GENSTACK_METRICS_PORT"] for s in _genstack(compose).values()} == {"9100"}
