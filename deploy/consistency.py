"""Checks that keep docker-compose.yml and the Kubernetes manifests true to the settings classes.

Every environment variable a settings class reads (shared.config.all_settings_classes()) must
either have a default or be set in compose and in the ConfigMap; every GENSTACK_* variable set
there must be one a settings class reads (no typos), and its value must parse as that setting's
type. Variables for libraries (HF_HUB_OFFLINE, ...) and for the image's entrypoint (SERVICE,
ROLE) are listed in OTHER_VARIABLES; anything else is reported.

    python -m deploy.consistency          # prints the problems of compose and every k8s overlay

The tests in tests/unit/test_deploy_settings.py call the same functions.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import yaml
from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
PREFIX = "GENSTACK_"

#: variables that are not genstack settings but are meant to be set
OTHER_VARIABLES = {
    "REDIS_PASSWORD": "from the genstack-redis Secret; GENSTACK_REDIS_URL is assembled from it",
    "REDIS_TLS": "read by KEDA's TriggerAuthentication (components/keda): its scaler reaches Redis over TLS",
    "SERVICE": "the image's entrypoint: which service to run",
    "ROLE": "the image's entrypoint: grpc or worker",
    "HF_HUB_OFFLINE": "huggingface_hub: never reach a model hub",
    "TRANSFORMERS_OFFLINE": "transformers: never reach a model hub",
    "TOKENIZERS_PARALLELISM": "tokenizers: no fork warnings in workers",
    "OMP_NUM_THREADS": "OpenMP pool size (matches the CPU limit)",
}

@dataclass(frozen=True)
class EnvVar:
    name: str
    settings_class: type[BaseSettings]
    field: str
    required: bool


def _env_names(cls: type[BaseSettings], field_name: str) -> list[str]:
    info = cls.model_fields[field_name]
    alias = info.validation_alias or info.alias
    if isinstance(alias, str):
        return [alias.upper()]
    if isinstance(alias, AliasChoices):
        return [c.upper() for c in alias.choices if isinstance(c, str)]
    prefix = cls.model_config.get("env_prefix", "") or ""
    return [f"{prefix}{field_name}".upper()]


_SETTINGS_CLASS = re.compile(r"^class \w+\((?:\w+\.)?(?:ServiceSettings|BaseSettings)\b", re.MULTILINE)


def project_settings_classes() -> list[type[BaseSettings]]:
    """all_settings_classes(), plus settings defined in modules nothing has imported yet.

    all_settings_classes() finds ServiceSettings subclasses among imported modules (it imports
    services/<name>/settings.py itself); a settings class elsewhere, such as
    shared.embeddings.EmbeddingSettings, would be missed unless some import happened to load
    it. So every module of shared/ and services/ that defines one is imported first.
    """
    import importlib

    from shared.config import all_settings_classes

    found: list[type[BaseSettings]] = []
    for package in ("shared", "services"):
        for path in sorted((REPO / package).rglob("*.py")):
            if not _SETTINGS_CLASS.search(path.read_text(encoding="utf-8")):
                continue
            module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
            for value in vars(module).values():
                if (isinstance(value, type) and issubclass(value, BaseSettings)
                        and value.__module__ == module.__name__):
                    found.append(value)
    classes = list(all_settings_classes())
    return classes + [c for c in found if c not in classes]


def settings_env_vars(classes: Iterable[type[BaseSettings]] | None = None) -> dict[str, EnvVar]:
    """Every environment variable the project's settings classes read, by name."""
    if classes is None:
        classes = project_settings_classes()
    out: dict[str, EnvVar] = {}
    for cls in classes:
        for field_name, info in cls.model_fields.items():
            for name in _env_names(cls, field_name):
                out[name] = EnvVar(name, cls, field_name, info.is_required())
    return out


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} with `env` (default: nothing set)."""
    env = env or {}

    def sub(m: re.Match) -> str:
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        if op == ":-":
            return env.get(name) or arg
        if op == "-":
            return env[name] if name in env else arg
        if op in (":?", "?"):
            if name not in env or (op == ":?" and not env[name]):
                raise ValueError(f"required variable {name} is not set: {arg}")
            return env[name]
        return env.get(name, "")

    return _INTERPOLATION.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def interpolation_variables(text: str) -> set[str]:
    return {m.group("name") for m in _INTERPOLATION.finditer(text.replace("$$", ""))}


def check_names(env: Mapping[str, str], where: str, known: Mapping[str, EnvVar] | None = None) -> list[str]:
    """Every variable set must be a setting (or a listed library/entrypoint variable)."""
    known = settings_env_vars() if known is None else known
    problems = []
    for name in env:
        if name in known or name in OTHER_VARIABLES:
            continue
        problems.append(f"{where}: {name} is not read by any settings class (typo?)")
    return problems


def check_values(env: Mapping[str, str], where: str, classes: Iterable[type[BaseSettings]] | None = None) -> list[str]:
    """The values set must parse as the settings' types (instantiate every class with `env` only)."""
    if classes is None:
        classes = project_settings_classes()
    problems = []
    with mock.patch.dict(os.environ, dict(env), clear=True):
        for cls in classes:
            try:
                cls()
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"])
                    problems.append(f"{where}: {cls.__module__}.{cls.__name__}.{loc}: {err['msg']}")
    return problems


def check_required(envs: Mapping[str, Mapping[str, str]], known: Mapping[str, EnvVar] | None = None) -> list[str]:
    """A setting without a default must be set in every environment given (where -> env)."""
    known = settings_env_vars() if known is None else known
    problems = []
    for var in known.values():
        if not var.required:
            continue
        for where, env in envs.items():
            if var.name not in env:
                problems.append(f"{where}: {var.name} ({var.settings_class.__name__}.{var.field}) has no default "
                                "and is not set")
    return problems


# --- reading the deployment files -------------------------------------------------------------

def load_compose(path: Path = COMPOSE_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def compose_environments(compose: Mapping, env: Mapping[str, str] | None = None,
                         only_genstack: bool = True) -> dict[str, dict[str, str]]:
    """Environment of each compose service (interpolated with `env`), genstack containers only."""
    out = {}
    for name, svc in compose.get("services", {}).items():
        if only_genstack and not _is_genstack_compose_service(svc):
            continue
        raw = svc.get("environment") or {}
        if isinstance(raw, list):
            raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
        out[name] = {k: interpolate("" if v is None else str(v), env) for k, v in raw.items()}
    return out


def _is_genstack_compose_service(svc: Mapping) -> bool:
    build = svc.get("build")
    return isinstance(build, Mapping) and str(build.get("dockerfile", "")).endswith("deploy/docker/Dockerfile")


def k8s_environments(docs: Iterable[Mapping]) -> dict[str, dict[str, str]]:
    """Environment of each genstack container in rendered manifests: ConfigMaps it loads + its env."""
    docs = list(docs)
    config_maps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"}
    out = {}
    for doc in docs:
        pod = (doc.get("spec") or {}).get("template", {}).get("spec")
        if not pod:
            continue
        for c in pod.get("containers", []):
            if not _is_genstack_image(c.get("image", "")):
                continue
            env: dict[str, str] = {}
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref is not None:
                    if ref not in config_maps:
                        raise KeyError(f"{doc['kind']}/{doc['metadata']['name']} loads missing ConfigMap {ref}")
                    env.update({k: str(v) for k, v in config_maps[ref].items()})
            for item in c.get("env", []):
                env[item["name"]] = str(item.get("value", ""))
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = env
    return out


def _is_genstack_image(image: str) -> bool:
    """genstack:TAG, REGISTRY/genstack:TAG or .../genstack@sha256:... (whatever overlays set)."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[0] == "genstack"


#: the secrets docker-compose.yml requires (`${VAR:?...}`, no defaults): placeholders for checks that need no .env
COMPOSE_SECRETS = {"REDIS_PASSWORD": "placeholder", "WEAVIATE_API_KEY": "placeholder"}


def all_problems() -> list[str]:
    from deploy import kustomize_lite

    known = settings_env_vars()
    problems: list[str] = []
    compose_envs = compose_environments(load_compose(), COMPOSE_SECRETS)
    for where, env in compose_envs.items():
        problems += check_names(env, f"docker-compose.yml:{where}", known)
        problems += check_values(env, f"docker-compose.yml:{where}")
    problems += check_required({f"docker-compose.yml:{k}": v for k, v in compose_envs.items()}, known)
    for overlay in [K8S / "base", *sorted((K8S / "overlays").iterdir())]:
        envs = k8s_environments(kustomize_lite.render(overlay))
        label = overlay.relative_to(REPO)
        for where, env in envs.items():
            problems += check_names(env, f"{label}:{where}", known)
            problems += check_values(env, f"{label}:{where}")
        problems += check_required({f"{label}:{k}": v for k, v in envs.items()}, known)
    return problems


def main() -> int:
    problems = all_problems()
    for line in problems:
        print(line)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
