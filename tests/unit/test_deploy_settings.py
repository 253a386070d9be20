"""The environment the deployment sets matches the settings classes the code reads.

Walks shared.config.all_settings_classes(): every variable they read has a default or is set in
docker-compose.yml and in the Kubernetes ConfigMap; every GENSTACK_* variable set there (and in
the Dockerfile) is one they read; every value set parses as that setting's type.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from deploy import consistency, kustomize_lite
from shared.config import ClientSettings, ServiceSettings, Settings, all_settings_classes
from shared.services import SERVICES, implemented_services

REPO = Path(__file__).resolve().parents[2]
K8S_TARGETS = ["base", *(f"overlays/{p.name}" for p in sorted((REPO / "deploy/k8s/overlays").iterdir()))]


def _env_example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _compose_envs() -> dict[str, dict[str, str]]:
    """Each genstack container's environment: with .env.example, with nothing set, with GPUs."""
    compose = consistency.load_compose()
    envs = {}
    secrets = consistency.COMPOSE_SECRETS  # compose requires them
    for label, values in (("env.example", {**_env_example(), **secrets}), ("defaults", secrets)):
        for name, env in consistency.compose_environments(compose, values).items():
            envs[f"docker-compose.yml[{label}]:{name}"] = env
    override = consistency.load_compose(REPO / "deploy/docker/compose.gpu.yml")
    for name, extra in consistency.compose_environments(override, only_genstack=False).items():
        base = consistency.compose_environments(compose, secrets)[name]
        envs[f"docker-compose.yml+compose.gpu.yml:{name}"] = {**base, **extra}
    return envs


def _k8s_envs() -> dict[str, dict[str, str]]:
    envs = {}
    for target in K8S_TARGETS:
        for where, env in consistency.k8s_environments(kustomize_lite.render(REPO / "deploy/k8s" / target)).items():
            envs[f"deploy/k8s/{target}:{where}"] = env
    return envs


@pytest.fixture(scope="module")
def known():
    return consistency.settings_env_vars()


@pytest.fixture(scope="module")
def deployment_envs() -> dict[str, dict[str, str]]:
    envs = {**_compose_envs(), **_k8s_envs()}
    n = len(implemented_services())
    assert len(envs) >= 2 * 2 * n + 2 * n * len(K8S_TARGETS)
    return envs


def test_the_walk_covers_every_settings_class(known):
    classes = consistency.project_settings_classes()
    assert set(all_settings_classes()) <= set(classes)
    assert Settings in classes and ClientSettings in classes
    for cls in classes:
        for field_name in cls.model_fields:
            names = consistency._env_names(cls, field_name)
            assert names and all(n in known for n in names), f"{cls.__name__}.{field_name}"
    for name in ("GENSTACK_REDIS_URL", "GENSTACK_HOME", "GENSTACK_GENERATOR_DEVICE", "GENSTACK_EMBEDDING_MODEL"):
        assert name in known
    for service in SERVICES:
        assert f"GENSTACK_{service.upper()}_ADDRESS" in known


def test_every_variable_set_is_a_setting(deployment_envs, known):
    problems = [p for where, env in deployment_envs.items() for p in consistency.check_names(env, where, known)]
    assert not problems, "\n".join(problems)


def test_every_value_set_parses_as_its_setting(deployment_envs):
    problems = [p for where, env in deployment_envs.items() for p in consistency.check_values(env, where)]
    assert not problems, "\n".join(problems)


def test_settings_without_default_are_set_everywhere(deployment_envs, known):
    assert consistency.check_required(deployment_envs, known) == []


def test_deployment_wires_addresses_redis_and_bind_host(deployment_envs):
    """Defaults point at 127.0.0.1, which is wrong between containers: these must be set."""
    for where, env in deployment_envs.items():
        assert env["GENSTACK_GRPC_BIND_HOST"] == "0.0.0.0", where
        assert not env["GENSTACK_REDIS_URL"].startswith("redis://127.0.0.1"), where
        assert env["GENSTACK_TRANSPORT"] == "grpc", where
        for service in implemented_services():
            assert env[f"GENSTACK_{service.upper()}_ADDRESS"] == f"{service}:{SERVICES[service].port}", where
        if "SERVICE" in env:  # k8s containers name their service; compose bakes it in at build
            assert env["SERVICE"] in implemented_services(), where


def test_dockerfile_sets_only_real_settings(known):
    text = (REPO / "deploy/docker/Dockerfile").read_text().replace("\\\n", " ")
    names = set()
    for line in text.splitlines():
        if line.startswith("ENV "):
            names |= set(re.findall(r"(\w+)=", line))
    genstack = {n: "" for n in names if n.startswith("GENSTACK_")}
    assert {"GENSTACK_HOME", "GENSTACK_GRPC_BIND_HOST"} <= genstack.keys()
    assert consistency.check_names(genstack, "Dockerfile", known) == []


# --- the checkers catch what they are for ---------------------------------------------------

def test_check_names_catches_typos(known):
    problems = consistency.check_names(
        {"GENSTACK_REDIS_URI": "redis://redis:6379/0", "GENSTAK_LOG_LEVEL": "INFO", "GENSTACK_LOG_LEVEL": "INFO"},
        "compose", known,
    )
    assert len(problems) == 2
    assert any("GENSTACK_REDIS_URI" in p for p in problems) and any("GENSTAK_LOG_LEVEL" in p for p in problems)


def test_check_values_catches_wrong_types():
    problems = consistency.check_values({"GENSTACK_TRANSPORT": "rpc", "GENSTACK_GRPC_WORKERS": "many"}, "k8s")
    assert any("transport" in p for p in problems) and any("grpc_workers" in p for p in problems), problems


def test_check_required_catches_an_unset_setting_without_default():
    class NeedsKey(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="GENSTACK_DEPLOYTEST_", extra="ignore")
        api_key: str = Field(description="no default: the deployment must set it")

    known = consistency.settings_env_vars([NeedsKey])
    problems = consistency.check_required({"compose": {}, "k8s": {"GENSTACK_DEPLOYTEST_API_KEY": "x"}}, known)
    assert problems == [
        "compose: GENSTACK_DEPLOYTEST_API_KEY (NeedsKey.api_key) has no default and is not set"
    ]
