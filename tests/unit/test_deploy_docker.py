"""The image definition (deploy/docker) has the pieces the issue asks for, and they work.

No Docker engine runs here, so the image is not built: the Dockerfile is parsed and checked
(multi-stage, SERVICE/ROLE build arguments, non-root user, the cache volume, a grpc.health.v1
health command, stubs generated like `make protos`), its protoc step and its entrypoint script
are run for real, and .dockerignore is checked to send exactly what the COPY lines need.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from deploy import generate_k8s
from shared.services import SERVICES

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def stages(instructions) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list] = {}
    name = None
    for keyword, args in instructions:
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            name = m.group(2) or str(len(out))
            out[name] = [(keyword, args)]
        elif name is not None:
            out[name].append((keyword, args))
    return out


def env_of(stage) -> dict[str, str]:
    env = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def instructions():
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(instructions):
    return list(stages(instructions).values())[-1]


def test_one_multi_stage_dockerfile(instructions):
    by_stage = stages(instructions)
    assert list(by_stage) == ["build", "runtime"]
    copies_from_build = [a for k, a in by_stage["runtime"] if k == "COPY" and "--from=build" in a]
    assert any("/opt/venv" in a for a in copies_from_build) and any("/app" in a for a in copies_from_build)
    # build tools stay in the build stage
    assert not any("build-essential" in a for k, a in by_stage["runtime"] if k == "RUN")


def test_build_arguments_choose_service_and_role(runtime):
    args = dict(a.split("=", 1) for k, a in runtime if k == "ARG")
    assert args["SERVICE"] in SERVICES and args["ROLE"] in ("grpc", "worker")
    env = env_of(runtime)
    assert env["SERVICE"] == "${SERVICE}" and env["ROLE"] == "${ROLE}", "the args must reach the entrypoint"


def test_runs_as_a_non_root_user_with_the_uid_the_manifests_use(runtime):
    (user,) = [a for k, a in runtime if k == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes can verify runAsNonRoot"
    assert int(uid) == generate_k8s.UID
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["generator"]["user"] == f"{uid}:{gid}"
    # the user appears after everything root must do
    keywords = [k for k, _ in runtime]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k in ("RUN", "COPY"))


def test_model_cache_is_a_volume_owned_by_the_user(runtime):
    env = env_of(runtime)
    home = env["GENSTACK_HOME"]
    (volume,) = [a for k, a in runtime if k == "VOLUME"]
    assert home in volume
    runs = " ".join(a for k, a in runtime if k == "RUN")
    assert f"chown {generate_k8s.UID}:{generate_k8s.UID} {home}" in runs
    assert home == generate_k8s.HOME
    # caches of the libraries land on the volume too, never on the (read-only) root filesystem
    for var in ("HOME", "HF_HOME", "XDG_CACHE_HOME"):
        assert env[var].startswith(home), var
    assert env["HF_HUB_OFFLINE"] == "1"


def test_health_command_speaks_grpc_health(runtime):
    (health,) = [a for k, a in runtime if k == "HEALTHCHECK"]
    assert health.split("CMD", 1)[1].strip() == '["python", "-m", "deploy.healthcheck"]'
    assert "--start-period=" in health, "a model warm-up must not count as unhealthy"


def test_entrypoint_runs_the_service_under_tini(runtime):
    (entry,) = [a for k, a in runtime if k == "ENTRYPOINT"]
    assert entry == '["/usr/bin/tini", "--", "/app/deploy/docker/entrypoint.sh"]'
    assert os.access(ENTRYPOINT, os.X_OK)
    tracked = subprocess.run(["git", "ls-files", "-s", str(ENTRYPOINT)], capture_output=True, text=True, cwd=REPO)
    if tracked.stdout:  # once committed, git must keep the executable bit
        assert tracked.stdout.startswith("100755")


@pytest.fixture()
def fake_python(tmp_path) -> Path:
    """A `python` on PATH that prints its arguments: shows what the entrypoint would exec."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text("#!/bin/sh\necho \"python $*\"\n")
    fake.chmod(0o755)
    return bin_dir


def _entrypoint(bin_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full_env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", **env}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=full_env, timeout=30)


def test_entrypoint_dispatches_on_service_and_role(fake_python):
    run = _entrypoint(fake_python, {"SERVICE": "generator", "ROLE": "grpc"})
    assert run.returncode == 0 and run.stdout.strip() == "python -m services.generator grpc"
    run = _entrypoint(fake_python, {"SERVICE": "retriever", "ROLE": "worker"})
    assert run.stdout.strip() == "python -m services.retriever worker"
    run = _entrypoint(fake_python, {"SERVICE": "video", "ROLE": "grpc"}, "worker")
    assert run.stdout.strip() == "python -m services.video worker"
    run = _entrypoint(fake_python, {"SERVICE": "video", "ROLE": "grpc"}, "echo", "any", "command")
    assert run.stdout.strip() == "any command"


def test_entrypoint_refuses_to_guess(fake_python):
    run = _entrypoint(fake_python, {"ROLE": "grpc"})
    assert run.returncode != 0 and "SERVICE" in run.stderr and not run.stdout
    run = _entrypoint(fake_python, {"SERVICE": "generator"})
    assert run.returncode != 0 and "ROLE" in run.stderr and not run.stdout


def test_entrypoint_execs_the_real_module():
    """With the real interpreter the script execs `python -m services.$SERVICE`: a missing one fails there."""
    bin_dir = Path(sys.executable).parent
    run = subprocess.run(
        ["sh", str(ENTRYPOINT), "grpc"], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SERVICE": "nosuchservice"},
    )
    assert run.returncode != 0 and "services.nosuchservice" in run.stderr, run.stderr
    for name in SERVICES:
        if (REPO / "services" / name / "grpc_api.py").exists():  # a service that can be served has landed
            assert (REPO / "services" / name / "__main__.py").exists(), f"`python -m services.{name}` needs it"


def test_stubs_are_generated_like_make_protos(instructions, tmp_path):
    makefile = (REPO / "Makefile").read_text()
    make_flags = re.search(r"-m grpc_tools\.protoc (.*?) \$\(PROTO_SRC\)", makefile).group(1)
    (run,) = [a for k, a in instructions if k == "RUN" and "grpc_tools.protoc" in a]
    normalized = " ".join(run.split())
    assert f"find protos -name '*.proto' -exec python -m grpc_tools.protoc {make_flags} {{}} +" in normalized
    # run the Dockerfile's own step (up to the .pth line) on a copy of the protos
    step = run.split(" && echo ")[0]
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(["bash", "-c", step], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    protos = sorted((REPO / "protos").rglob("*.proto"))
    for proto in protos:
        stem = proto.relative_to(REPO / "protos").with_suffix("")
        assert (tmp_path / "gen" / f"{stem}_pb2.py").exists(), stem
        assert (tmp_path / "gen" / f"{stem}_pb2_grpc.py").exists(), stem
    check = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path / 'gen')!r})
        from genstack.generator.v1 import generator_pb2, generator_pb2_grpc
        print(generator_pb2.DESCRIPTOR.services_by_name['GeneratorService'].full_name)
    """)
    imported = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert imported.stdout.strip() == "genstack.generator.v1.GeneratorService", imported.stderr


def _venv_tool(name: str) -> str | None:
    """A console script of this virtualenv (even when its bin/ is not on PATH), or one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@pytest.mark.skipif(_venv_tool("hadolint") is None, reason="hadolint not installed (requirements-dev.txt, x86_64)")
def test_hadolint_finds_nothing():
    """Every rule on; the few ignores are inline in the Dockerfile, each with its reason."""
    run = subprocess.run([_venv_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    ignores = re.findall(r"# hadolint ignore=(\S+)", DOCKERFILE.read_text())
    assert sorted(ignores) == ["DL3008", "DL3008", "DL3013", "DL3064"], "a new ignore needs a reason and this list"


def test_parser_agrees_with_buildkits(instructions):
    """The small parser these tests use reads the file the way BuildKit's own parser does."""
    dockerfile = pytest.importorskip("dockerfile", reason="BuildKit's parser not installed (requirements-dev.txt)")
    official = dockerfile.parse_file(str(DOCKERFILE))
    assert [k for k, _ in instructions] == [c.cmd.upper() for c in official]
    for (keyword, args), command in zip(instructions, official, strict=True):
        assert " ".join(args.split()) == " ".join(command.original.split()[1:]), keyword


def test_torch_pin_comes_from_requirements(instructions):
    pins = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1, "the Dockerfile installs torch from the one torch== line of requirements.txt"
    (run,) = [a for k, a in instructions if k == "RUN" and "TORCH_PIN" in a]
    assert "grep -E '^torch==' requirements.txt" in run and "pip install -r requirements.txt" in run


# --- .dockerignore --------------------------------------------------------------------------

def _dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negate, re.compile(regex + "$")))
    return rules


def is_excluded(path: str, rules=None) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    rules = rules if rules is not None else _dockerignore_rules()
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_copy_needs_and_nothing_heavy(instructions):
    sources = []
    for keyword, args in instructions:
        if keyword == "COPY" and "--from=" not in args:
            *srcs, _dest = shlex.split(args)
            sources += [s for s in srcs if not s.startswith("--")]
    assert sources, "no COPY found"
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such path"
        files = [src] if (REPO / src).is_file() else [
            str(p.relative_to(REPO)) for p in (REPO / src).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ]
        for f in files:
            assert not is_excluded(f), f"{f} is needed by COPY {src} but .dockerignore leaves it out"
    for heavy in (".venv/bin/python", "gen/genstack/__init__.py", ".git/HEAD", "tests/unit/test_x.py",
                  "bench/generator.py", "deploy/k8s/base/kustomization.yaml", "shared/__pycache__/x.pyc",
                  "data/store.db", ".env"):
        assert is_excluded(heavy), f"{heavy} must stay out of the build context"
