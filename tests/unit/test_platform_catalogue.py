"""The service catalogue drives everything: a throwaway service added as one catalogue entry plus a
tiny core is picked up by the clients, `genstack serve`/`up`, compose and the Kubernetes renderer.
Clients load no server code, and the shared library never imports a service."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from deploy import generate_compose, generate_k8s
from services.orchestrator import stack
from shared.clients import client_for
from shared.config import get_client_settings
from shared.errors import InvalidArgument
from shared.services import SERVICES, ServiceSpec, get_spec, implemented_services, implemented_specs

REPO = Path(__file__).resolve().parents[2]

ECHO_PROTO = """
syntax = "proto3";
package echotest.v1;
// A throwaway service for the catalogue test.
service EchoService {
  // Says it back.
  rpc Echo(EchoRequest) returns (EchoResponse);
}
// What to say.
message EchoRequest { string text = 1; }
// What was said.
message EchoResponse { string text = 1; }
"""

ECHO_API = """
from echotest.v1 import echo_pb2 as pb
from echotest.v1 import echo_pb2_grpc as pb_grpc
from shared.errors import require
from shared.rpc import ServiceApi


class EchoCore:
    def warm_up(self):
        pass

    def echo(self, text):
        require(bool(text), "text", "a non-empty text")
        return text.upper()


class EchoApi(ServiceApi):
    service = "echo"
    descriptor = pb.DESCRIPTOR.services_by_name["EchoService"]
    servicer_base = pb_grpc.EchoServiceServicer
    add_to_server = staticmethod(pb_grpc.add_EchoServiceServicer_to_server)

    def Echo(self, request, ctx):
        return pb.EchoResponse(text=self.core.echo(request.text))


def create_api():
    return EchoApi(EchoCore())
"""


@pytest.fixture
def echo_service(tmp_path, monkeypatch):
    """A new service: its proto compiled into a temp folder, a tiny core, and one catalogue entry."""
    from grpc_tools import protoc

    (tmp_path / "echotest" / "v1").mkdir(parents=True)
    (tmp_path / "echotest" / "v1" / "echo.proto").write_text(ECHO_PROTO)
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                        str(tmp_path / "echotest" / "v1" / "echo.proto")]) == 0
    (tmp_path / "echo_service").mkdir()
    (tmp_path / "echo_service" / "__init__.py").write_text("")
    (tmp_path / "echo_service" / "grpc_api.py").write_text(ECHO_API)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ServiceSpec("echo", 50099, "EchoService", api="echo_service.grpc_api:create_api",
                       client="shared.client:ServiceClient", proto_module="echotest.v1.echo_pb2",
                       calls=("generator",))
    monkeypatch.setitem(SERVICES, "echo", spec)
    yield spec
    from shared import client as client_module

    client_module._inproc_apis.pop("echo", None)


def test_a_new_service_reaches_clients_over_inproc_and_grpc(echo_service):
    from echotest.v1 import echo_pb2 as pb

    from shared.client import inproc_api
    from shared.grpc_server import Server

    assert get_client_settings().address("echo") == "127.0.0.1:50099"  # the port, from the catalogue only
    inproc = client_for("echo", "inproc")
    assert set(inproc.methods) == {"Echo"} and inproc.methods["Echo"].task_name == "echo.echo"
    assert inproc.call("Echo", pb.EchoRequest(text="hi")).text == "HI"
    server = Server(inproc_api("echo"), 0, host="127.0.0.1").start(warm_up_in_background=False)
    try:
        with client_for("echo", "grpc", address=f"127.0.0.1:{server.port}") as remote:
            assert remote.call("Echo", pb.EchoRequest(text="over the wire"), timeout=10).text == "OVER THE WIRE"
            with pytest.raises(InvalidArgument, match="text"):
                remote.call("Echo", pb.EchoRequest(text=""), timeout=10)
    finally:
        server.stop(0)


def test_a_new_service_is_offered_by_serve_and_started_by_up(echo_service):
    from shared.cli import build_parser

    assert build_parser().parse_args(["serve", "echo"]).service == "echo"
    planned = dict(stack.plan(["echo"]))
    assert planned["echo grpc"][-4:] == ["serve", "echo", "--port", "50099"]
    assert planned["echo worker"][-2:] == ["worker", "echo"]
    assert {"echo grpc", "echo worker"} <= dict(stack.plan()).keys()  # and by default


@pytest.fixture
def video_unimplemented(monkeypatch):
    """A catalogue whose video entry has no code yet (every shipped entry has code now)."""
    monkeypatch.setitem(SERVICES, "video", ServiceSpec(**{**get_spec("video").__dict__, "implemented": False}))
    return "video"


def test_up_refuses_unknown_and_unimplemented_services(video_unimplemented):
    with pytest.raises(InvalidArgument, match="unknown service 'nosuch'"):
        stack.plan(["nosuch"])
    with pytest.raises(InvalidArgument, match="the video service is not implemented yet"):
        stack.plan(["video"])
    labels = [label for label, _ in stack.plan(None)]
    assert "generator grpc" in labels and not [label for label in labels if label.startswith("video")]


def test_a_new_service_is_deployed_by_compose(echo_service):
    doc = yaml.safe_load(generate_compose.render_compose([*implemented_specs()]))
    assert {"echo", "echo-worker"} <= doc["services"].keys()
    echo = doc["services"]["echo"]
    assert echo["build"]["args"] == {"TORCH_INDEX_URL": "${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}",
                                     "INSTALL_MODELS": "${INSTALL_MODELS:-1}", "SERVICE": "echo", "ROLE": "grpc"}
    assert echo["ports"] == ["${HOST_BIND:-127.0.0.1}:50099:50099"]
    assert echo["depends_on"] == {"redis": {"condition": "service_healthy"},
                                  "generator": {"condition": "service_healthy"}}
    assert doc["x-env"]["GENSTACK_ECHO_ADDRESS"] == "echo:50099"
    assert doc["services"]["echo-worker"]["labels"] == {"dev.genstack.queue": "echo"}


def test_a_new_service_is_deployed_by_kubernetes(echo_service):
    files = generate_k8s.render(implemented_specs())
    docs = list(yaml.safe_load_all(files[generate_k8s.ROOT / "base" / "services" / "echo.yaml"]))
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [("Deployment", "echo"), ("Deployment", "echo-worker"), ("HorizontalPodAutoscaler", "echo"),
                     ("PodDisruptionBudget", "echo"), ("PodDisruptionBudget", "echo-worker"), ("Service", "echo")]
    assert "echo.yaml" in files[generate_k8s.ROOT / "base" / "services" / "kustomization.yaml"]
    config = yaml.safe_load(files[generate_k8s.ROOT / "base" / "config.yaml"].split("---\n", 1)[1])
    assert config["data"]["GENSTACK_ECHO_ADDRESS"] == "echo:50099"


def test_gpu_placement_comes_from_the_catalogue(monkeypatch):
    generator = get_spec("generator")
    monkeypatch.setitem(SERVICES, "generator", ServiceSpec(**{**generator.__dict__, "gpu": False}))
    files = generate_k8s.render(implemented_specs())
    assert "GENSTACK_GENERATOR_DEVICE" not in files[generate_k8s.ROOT / "components" / "gpu" / "kustomization.yaml"]
    assert "generator:" not in generate_compose.render_gpu_override()


def test_unimplemented_services_are_neither_served_nor_deployed(video_unimplemented):
    missing = {s.name for s in SERVICES.values() if not s.implemented}
    assert missing == {"video"}
    compose = yaml.safe_load(generate_compose.render_compose())
    assert not missing & compose["services"].keys()
    for svc in compose["services"].values():
        assert not missing & set(svc.get("depends_on", {})), "nothing waits for a service without code"
    assert not {generate_k8s.ROOT / "base" / "services" / f"{n}.yaml" for n in missing} & generate_k8s.render().keys()
    from shared.cli import build_parser

    for name in missing:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", name])


def test_deploy_check_fails_when_compose_or_kubernetes_are_stale(video_unimplemented, capsys):
    """`make deploy-check` runs these --check commands: stale or orphaned files make them exit 1."""
    # the checked-in files still deploy video, which the patched catalogue no longer has
    assert generate_compose.main(["--check"]) == 1
    assert "out of date: docker-compose.yml (run `python -m deploy.generate_compose`)" in capsys.readouterr().out
    assert generate_k8s.main(["--check"]) == 1
    assert "out of date: deploy/k8s/base/services/video.yaml" in capsys.readouterr().out  # an orphan now


def test_deploy_check_passes_on_the_checked_in_files(capsys):
    assert generate_compose.main(["--check"]) == 0 and generate_k8s.main(["--check"]) == 0
    assert "out of date" not in capsys.readouterr().out


# -- layering ------------------------------------------------------------------------------------

def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_the_shared_library_never_imports_a_service():
    offenders = [f"{p.relative_to(REPO)}: {m}" for p in sorted((REPO / "shared").rglob("*.py"))
                 for m in _imports(p) if m == "services" or m.startswith("services.")]
    assert not offenders, offenders


CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    import shared
    from shared.clients import client_for
    from shared.services import implemented_services
    from genstack.orchestrator.v1 import orchestrator_pb2 as opb

    made = {}
    for name in implemented_services():
        for transport in ("grpc", "celery"):
            made[f"{name}/{transport}"] = type(client_for(name, transport)).__name__
    calls = {}
    for transport in ("grpc", "celery"):
        jobs = client_for("orchestrator", transport).list_jobs(opb.ListJobsRequest(page_size=1), timeout=60)
        calls[transport] = type(jobs).__name__
    heavy = sorted(m for m in ("torch", "transformers", "diffusers", "sentence_transformers") if m in sys.modules)
    loaded = sorted(m for m in sys.modules if m == "services" or m.startswith("services."))
    print(json.dumps({"made": made, "calls": calls, "heavy": heavy, "services_modules": loaded}))
""")


@pytest.mark.slow
def test_clients_load_no_server_code(service_process):
    server = service_process("orchestrator", "grpc")
    service_process("orchestrator", "worker")
    env = {"GENSTACK_ORCHESTRATOR_ADDRESS": server.address}
    import os

    run = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT], capture_output=True, text=True, timeout=120,
                         cwd=REPO, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(report["made"]) == 2 * len(implemented_services())
    assert report["made"]["generator/grpc"] == "GeneratorClient"
    assert report["calls"] == {"grpc": "ListJobsResponse", "celery": "ListJobsResponse"}
    assert report["heavy"] == [], f"a client process imported {report['heavy']}"
    assert report["services_modules"] == [], f"a client process imported {report['services_modules']}"
