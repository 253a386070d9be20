"""The Kubernetes manifests (deploy/k8s) stay valid and true to the code.

Every kustomize target (the base, each overlay, and the base with each component alone) is
rendered, with `kubectl kustomize` / `kustomize build` when one is installed and with
deploy.kustomize_lite otherwise, then validated offline: Kubernetes kinds with kubernetes-validate
in strict mode (for the oldest and the newest Kubernetes version we claim), KEDA's ScaledObject
with tests/data/keda-scaledobject.schema.json. The rest checks what a schema cannot: every
service and queue of shared/services.py is deployed, probes and ports agree, pods are locked
down, and the components do what they say.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kv

from deploy import generate_k8s, kustomize_lite
from deploy.generate_k8s import METRICS_PORT
from shared.services import SERVICES, implemented_services

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KEDA_SCHEMA = json.loads((REPO / "tests" / "data" / "keda-scaledobject.schema.json").read_text())
KEDA_AUTH_SCHEMA = json.loads((REPO / "tests" / "data" / "keda-triggerauthentication.schema.json").read_text())
SERVICEMONITOR_SCHEMA = json.loads((REPO / "tests" / "data" / "servicemonitor.schema.json").read_text())
#: oldest Kubernetes we support (native gRPC probes are GA from 1.27) and the newest schemas shipped
K8S_VERSIONS = ("1.27.0", kv.latest_version())
NAMESPACE = "genstack"
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if p.is_dir())
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
TARGETS = ["base", *(f"overlays/{o}" for o in OVERLAYS), *(f"base+{c}" for c in COMPONENTS)]
IMPLEMENTED = implemented_services()
GPU_SERVICES = {name for name in IMPLEMENTED if SERVICES[name].gpu}


def _render_target(root: Path, target: str, use_kustomize: bool) -> list[dict]:
    folder = root / target
    if target.startswith("base+"):
        # a component alone on the base, in a throwaway kustomization beside them
        component = target.split("+", 1)[1]
        folder = root / f"combo-{component}"
        folder.mkdir(exist_ok=True)
        (folder / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": NAMESPACE,
            "resources": ["../base"],
            "components": [f"../components/{component}"],
        }))
    if use_kustomize:
        return kustomize_lite.render_with_kustomize(folder)
    return kustomize_lite.render(folder)


@pytest.fixture(scope="module", autouse=True)
def _schemas_loaded_once():
    """kubernetes-validate re-reads its 1.8 MB definitions for every resource: read them once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kv, "schema_contents", functools.cache(kv.schema_contents))
        yield


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy") / "k8s"
    shutil.copytree(K8S, root)
    return root


@pytest.fixture(scope="module")
def rendered(k8s_copy) -> dict[str, list[dict]]:
    """Every target's resources, rendered by the real kustomize when this machine has one."""
    use_kustomize = kustomize_lite.kustomize_command() is not None
    return {t: _render_target(k8s_copy, t, use_kustomize) for t in TARGETS}


def _by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _validate(doc: dict) -> list[str]:
    """Errors of one resource; a kind without a schema is an error too (nothing passes unchecked)."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc.get("apiVersion", "").startswith(("keda.sh/", "monitoring.coreos.com/")):
        schema = ({"TriggerAuthentication": KEDA_AUTH_SCHEMA}.get(doc.get("kind"), KEDA_SCHEMA)
                  if doc["apiVersion"].startswith("keda.sh/") else SERVICEMONITOR_SCHEMA)
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    errors = []
    for version in K8S_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            errors.append(f"{name} (k8s {version}): {'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
    return errors


# --- schema validation ----------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_every_manifest_validates_strictly(rendered, target):
    docs = rendered[target]
    assert docs, f"{target} rendered no resources"
    errors = [e for doc in docs for e in _validate(doc)]
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_a_misspelt_field(rendered):
    deployment = copy.deepcopy(_by_kind(rendered["base"], "Deployment")["generator"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesytem"] = True  # sic
    assert any("readOnlyRootFilesytem" in e for e in _validate(deployment))
    probe = container["readinessProbe"]
    probe["exec"]["command"] = "python -m deploy.healthcheck grpc"  # a list of arguments, not a string
    assert any("readinessProbe" in e for e in _validate(deployment))


def test_keda_schema_rejects_a_misspelt_trigger_key(rendered):
    scaled = copy.deepcopy(next(iter(_by_kind(rendered["overlays/cpu"], "ScaledObject").values())))
    assert _validate(scaled) == []
    meta = scaled["spec"]["triggers"][0]["metadata"]
    meta["listname"] = meta.pop("listName")
    errors = _validate(scaled)
    assert any("listname" in e for e in errors) and any("listName" in e for e in errors), errors
    scaled = copy.deepcopy(next(iter(_by_kind(rendered["overlays/cpu"], "ScaledObject").values())))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 5  # KEDA metadata values are strings
    assert _validate(scaled)


@pytest.mark.skipif(kustomize_lite.kustomize_command() is None, reason="no kustomize or kubectl on PATH")
@pytest.mark.parametrize("target", TARGETS)
def test_lite_renderer_agrees_with_kustomize(k8s_copy, rendered, target):
    def key(d):
        return (d["apiVersion"], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])

    lite = {key(d): d for d in _render_target(k8s_copy, target, use_kustomize=False)}
    real = {key(d): d for d in rendered[target]}
    assert lite.keys() == real.keys()
    for k in real:
        assert lite[k] == real[k], f"{k} differs between kustomize and kustomize_lite"


def test_generated_manifests_are_up_to_date():
    stale = generate_k8s.stale_files()
    assert not stale, f"regenerate with `python -m deploy.generate_k8s`: {[str(p) for p in stale]}"


# --- true to the code -----------------------------------------------------------------------

def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.parametrize("name", sorted(IMPLEMENTED))
def test_every_service_has_server_worker_and_queue(rendered, name):
    spec = SERVICES[name]
    docs = rendered["base"]
    deployments = _by_kind(docs, "Deployment")
    config = _by_kind(docs, "ConfigMap")["genstack-config"]["data"]

    server = deployments[name]
    c = server["spec"]["template"]["spec"]["containers"][0]
    assert _env(c)["SERVICE"] == name and _env(c)["ROLE"] == "grpc"
    assert [p["containerPort"] for p in c["ports"]] == [spec.port, METRICS_PORT]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # the image's health command asks grpc.health.v1 on $SERVICE's port, over the pod's TLS
        # (Kubernetes' native gRPC probes cannot speak TLS)
        assert c[probe]["exec"]["command"] == ["python", "-m", "deploy.healthcheck", "grpc"], f"{name} {probe}"

    svc = _by_kind(docs, "Service")[name]
    assert svc["spec"]["selector"].items() <= server["spec"]["template"]["metadata"]["labels"].items()
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(spec.port, "grpc"),
                                                                            (METRICS_PORT, "metrics")]
    # clients find it through GENSTACK_<SVC>_ADDRESS = the Service's DNS name and port
    assert config[f"GENSTACK_{name.upper()}_ADDRESS"] == f"{name}:{spec.port}"

    hpa = _by_kind(docs, "HorizontalPodAutoscaler")[name]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in server["spec"], "the HPA owns the server's replica count"

    worker = deployments[f"{name}-worker"]
    wc = worker["spec"]["template"]["spec"]["containers"][0]
    assert _env(wc)["SERVICE"] == name and _env(wc)["ROLE"] == "worker"
    assert worker["metadata"]["labels"]["genstack.dev/queue"] == spec.queue
    assert [(p["name"], p["containerPort"]) for p in wc["ports"]] == [("metrics", METRICS_PORT)]
    assert config["GENSTACK_METRICS_PORT"] == str(METRICS_PORT)

    pdbs = _by_kind(docs, "PodDisruptionBudget")
    for deployment in (server, worker):
        pdb = pdbs[deployment["metadata"]["name"]]
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert pdb["spec"].get("maxUnavailable") == 1, "a PDB must not block draining a single replica"


def test_no_deployment_for_an_unknown_service(rendered):
    for target, docs in rendered.items():
        for d in _by_kind(docs, "Deployment").values():
            if target == "base+console" and d["metadata"]["name"] == "console":
                continue  # the web console: a process, not a catalogue service (test_console_component)
            service = d["metadata"]["labels"].get("genstack.dev/service")
            assert service in IMPLEMENTED, f"{target}: Deployment {d['metadata']['name']} is for no known service"
            assert d["metadata"]["name"] in (service, f"{service}-worker")


@pytest.mark.parametrize("target", TARGETS)
def test_selectors_and_targets_resolve(rendered, target):
    docs = rendered[target]
    workloads = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    templates = {k: w["spec"]["template"]["metadata"]["labels"] for k, w in workloads.items()}
    for key, w in workloads.items():
        assert w["spec"]["selector"]["matchLabels"].items() <= templates[key].items(), key

    def selected(selector: dict) -> list:
        return [k for k, labels in templates.items() if selector.items() <= labels.items()]

    for svc in _by_kind(docs, "Service").values():
        assert len(selected(svc["spec"]["selector"])) == 1, f"Service {svc['metadata']['name']}"
        ports = {p["name"] for w in (workloads[k] for k in selected(svc["spec"]["selector"]))
                 for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    for pdb in _by_kind(docs, "PodDisruptionBudget").values():
        assert len(selected(pdb["spec"]["selector"]["matchLabels"])) == 1, f"PDB {pdb['metadata']['name']}"
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for obj in _by_kind(docs, kind).values():
            ref = obj["spec"]["scaleTargetRef"]
            assert ("Deployment", ref["name"]) in workloads, f"{kind} {obj['metadata']['name']} targets nothing"


@pytest.mark.parametrize("target", TARGETS)
def test_everything_lives_in_one_namespace(rendered, target):
    for d in rendered[target]:
        if d["kind"] == "Namespace":
            assert d["metadata"]["name"] == NAMESPACE
        else:
            assert d["metadata"].get("namespace") == NAMESPACE, f"{target}: {d['kind']}/{d['metadata']['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_pods_are_locked_down(rendered, target):
    docs = rendered[target]
    config = _by_kind(docs, "ConfigMap")["genstack-config"]["data"]
    for w in docs:
        if w["kind"] not in ("Deployment", "StatefulSet"):
            continue
        where = f"{target}: {w['kind']}/{w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
        volumes = {v["name"]: v for v in pod["volumes"]}
        # the volume types the "restricted" Pod Security Standard (enforced on the namespace) allows
        for v in volumes.values():
            assert set(v) - {"name"} <= {"emptyDir", "configMap", "secret", "persistentVolumeClaim", "projected",
                                         "downwardAPI", "csi", "ephemeral"}, f"{where}: volume {v['name']}"
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert not any("hostPort" in p for p in c.get("ports", [])), where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= c["resources"][kind].keys(), f"{where}: resources.{kind}"
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be a writable emptyDir"
            for m in c["volumeMounts"]:
                assert m["name"] in volumes or m["name"] in claims, f"{where}: mount {m['name']} has no volume"
            if w["metadata"]["labels"].get("genstack.dev/service"):
                # the model cache: GENSTACK_HOME must be a volume, the root filesystem is read-only
                assert config["GENSTACK_HOME"] in mounts, f"{where}: no volume at GENSTACK_HOME"
                assert c["envFrom"] == [{"configMapRef": {"name": "genstack-config"}}]


def test_redis_persists_with_aof_and_matches_the_url(rendered):
    docs = rendered["base"]
    redis = _by_kind(docs, "StatefulSet")["redis"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    url = urlparse(_by_kind(docs, "ConfigMap")["genstack-config"]["data"]["GENSTACK_REDIS_URL"])
    svc = _by_kind(docs, "Service")[url.hostname]
    assert url.port in [p["port"] for p in svc["spec"]["ports"]]


# --- components -----------------------------------------------------------------------------

def test_gpu_component_puts_model_services_on_gpu_nodes(rendered):
    assert {"generator", "image"} <= GPU_SERVICES
    for target in ("base+gpu", "overlays/gpu"):
        docs = rendered[target]
        config = _by_kind(docs, "ConfigMap")["genstack-config"]["data"]
        for d in _by_kind(docs, "Deployment").values():
            pod = d["spec"]["template"]["spec"]
            limits = pod["containers"][0]["resources"]["limits"]
            service = d["metadata"]["labels"]["genstack.dev/service"]
            if service in GPU_SERVICES:
                assert limits.get("nvidia.com/gpu") == 1, d["metadata"]["name"]
                assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
                assert config[f"GENSTACK_{service.upper()}_DEVICE"] == "cuda"
            else:
                assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod, d["metadata"]["name"]
    for d in _by_kind(rendered["base"], "Deployment").values():
        assert "nvidia.com/gpu" not in d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("target", ["base+keda", "overlays/cpu", "overlays/gpu"])
def test_keda_scales_one_worker_deployment_per_queue(rendered, target):
    docs = rendered[target]
    scaled = _by_kind(docs, "ScaledObject")
    deployments = _by_kind(docs, "Deployment")
    config = _by_kind(docs, "ConfigMap")["genstack-config"]["data"]
    url = urlparse(config["GENSTACK_REDIS_URL"])
    queues = {}
    for obj in scaled.values():
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        target_name = obj["spec"]["scaleTargetRef"]["name"]
        queues[meta["listName"]] = deployments[target_name]["metadata"]["labels"]["genstack.dev/service"]
        assert deployments[target_name]["metadata"]["labels"]["genstack.dev/role"] == "worker"
        # KEDA's operator resolves the address from its own namespace: full Service name, same DB
        host, port = meta["address"].rsplit(":", 1)
        assert host == f"{url.hostname}.{NAMESPACE}.svc.cluster.local" and int(port) == url.port
        assert meta["databaseIndex"] == url.path.lstrip("/")
        assert obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
        # Redis speaks TLS only: the scaler's TriggerAuthentication turns TLS on (from the worker's
        # REDIS_TLS) and trusts the genstack CA
        auth = _by_kind(docs, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]["spec"]
        worker_env = {e["name"]: e.get("value") for e in
                      deployments[target_name]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert [e["parameter"] for e in auth["env"]] == ["tls"] and worker_env[auth["env"][0]["name"]] == "enable"
        assert auth["secretTargetRef"] == [{"parameter": "ca", "name": "genstack-tls", "key": "ca.crt"}]
    # every queue in the code has exactly one scaler, on its own service's worker
    assert queues == {SERVICES[name].queue: name for name in IMPLEMENTED}
    for d in deployments.values():
        if d["metadata"]["labels"]["genstack.dev/role"] == "worker":
            assert "replicas" not in d["spec"], f"{d['metadata']['name']}: KEDA owns the worker replicas"
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in _by_kind(docs, "HorizontalPodAutoscaler").values()}
    assert not hpa_targets & {o["spec"]["scaleTargetRef"]["name"] for o in scaled.values()}, "HPA and KEDA collide"


def _retriever_default(field: str):
    settings = pytest.importorskip("services.retriever.settings", reason="the retriever has not landed yet")
    return settings.RetrieverSettings.model_fields[field].default


def test_weaviate_component_is_pinned_and_wired_to_the_retriever(rendered):
    for target in ("base+weaviate", *(f"overlays/{o}" for o in OVERLAYS)):
        docs = rendered[target]
        weaviate = _by_kind(docs, "StatefulSet")["weaviate"]
        c = weaviate["spec"]["template"]["spec"]["containers"][0]
        version = re.fullmatch(r"cr\.weaviate\.io/semitechnologies/weaviate:(\d+)\.(\d+)\.(\d+)", c["image"])
        assert version and tuple(map(int, version.groups())) >= (1, 27, 0), c["image"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["DEFAULT_VECTORIZER_MODULE"] == "none"
        config = _by_kind(docs, "ConfigMap")["genstack-config"]["data"]
        assert config["GENSTACK_RETRIEVER_BACKEND"] == "weaviate"
        url = urlparse(config["GENSTACK_RETRIEVER_WEAVIATE_URL"])
        svc = _by_kind(docs, "Service")[url.hostname]
        assert url.port in [p["port"] for p in svc["spec"]["ports"] if p["name"] == "http"]
        # the v4 client also speaks gRPC to the same host, on the retriever's configured port
        grpc_port = int(config.get("GENSTACK_RETRIEVER_WEAVIATE_GRPC_PORT", _retriever_default("weaviate_grpc_port")))
        assert grpc_port in [p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"]
    assert "weaviate" not in _by_kind(rendered["base"], "StatefulSet")


# --- the stand-in renderer ------------------------------------------------------------------

def test_lite_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(kustomize_lite.Unsupported, match="configMapGenerator"):
        kustomize_lite.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n  - target: {kind: ConfigMap}\n    patch: |-\n      data: {a: b}\n"
    )
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(kustomize_lite.Unsupported, match="JSON 6902"):
        kustomize_lite.render(tmp_path)


def test_lite_json_patch_follows_rfc_6902():
    doc = {"a": {"b": [1, 2]}, "c/d": 1, "e": {"f": 1}}
    out = kustomize_lite.apply_json_patch(doc, [
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "remove", "path": "/c~1d"},
        {"op": "replace", "path": "/e/f", "value": {"g": 2}},
        {"op": "add", "path": "/e/h", "value": [1]},
    ])
    assert out == {"a": {"b": [0, 1, 2, 3]}, "e": {"f": {"g": 2}, "h": [1]}}
    assert doc == {"a": {"b": [1, 2]}, "c/d": 1, "e": {"f": 1}}, "the input stays untouched"
    with pytest.raises(KeyError):
        kustomize_lite.apply_json_patch(doc, [{"op": "replace", "path": "/nope", "value": 1}])
    with pytest.raises(KeyError):
        kustomize_lite.apply_json_patch(doc, [{"op": "remove", "path": "/nope"}])


# --- security -------------------------------------------------------------------------------

def _ingress_peers(policy: dict) -> set[str]:
    return {p.get("podSelector", {}).get("matchLabels", {}).get("genstack.dev/service", "")
            for rule in policy["spec"].get("ingress", []) for p in rule.get("from", [])}


def test_network_policies_let_each_service_accept_only_its_callers(rendered):
    for target in ("base", "overlays/cpu", "overlays/gpu"):
        policies = _by_kind(rendered[target], "NetworkPolicy")
        deny = policies["default-deny-ingress"]["spec"]
        assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
        orchestrator = policies["orchestrator-ingress"]["spec"]["ingress"]
        assert orchestrator == [{"ports": [{"port": "grpc", "protocol": "TCP"}]}], "clients reach the orchestrator"
        for name in IMPLEMENTED:
            if name == "orchestrator":
                continue
            callers = {s for s in IMPLEMENTED if name in SERVICES[s].calls}
            assert _ingress_peers(policies[f"{name}-ingress"]) == callers, f"{target}: {name}"
            assert "orchestrator" in callers, f"{name} must be reachable by the orchestrator"
        redis = policies["redis-ingress"]["spec"]["ingress"][0]
        assert {"key": "genstack.dev/service", "operator": "Exists"} in redis["from"][0]["podSelector"][
            "matchExpressions"]
    weaviate = _by_kind(rendered["overlays/cpu"], "NetworkPolicy")["weaviate-ingress"]
    assert _ingress_peers(weaviate) == {"retriever"}


def test_pods_require_tokens_and_reach_redis_with_its_password(rendered):
    docs = rendered["overlays/cpu"]
    for d in _by_kind(docs, "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["GENSTACK_AUTH_TOKENS_FILE"]["value"].startswith("/etc/genstack/auth/"), d["metadata"]["name"]
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "genstack-redis"
        # Redis speaks TLS only: the URL checks its certificate against the genstack CA
        url = urlparse(env["GENSTACK_REDIS_URL"]["value"])
        assert (url.scheme, url.password, url.hostname, url.port, url.path) == (
            "rediss", "$(REDIS_PASSWORD)", "redis", 6379, "/0")
        assert parse_qs(url.query) == {"ssl_cert_reqs": ["required"], "ssl_ca_certs": ["/etc/genstack/tls/ca.crt"]}
        assert list(env).index("REDIS_PASSWORD") < list(env).index("GENSTACK_REDIS_URL"), "$(VAR) needs it first"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["auth"]["secret"]["secretName"] == "genstack-auth"
        # gRPC over TLS between pods, on by default: servers present the certificate, clients check the CA
        assert volumes["tls"]["secret"]["secretName"] == "genstack-tls"
        assert {"name": "tls", "mountPath": "/etc/genstack/tls", "readOnly": True} in pod["containers"][0][
            "volumeMounts"]
        assert {n: env[n]["value"] for n in ("GENSTACK_TLS_CA_FILE", "GENSTACK_TLS_CERT_FILE",
                                             "GENSTACK_TLS_KEY_FILE")} == {
            "GENSTACK_TLS_CA_FILE": "/etc/genstack/tls/ca.crt", "GENSTACK_TLS_CERT_FILE": "/etc/genstack/tls/tls.crt",
            "GENSTACK_TLS_KEY_FILE": "/etc/genstack/tls/tls.key"}
        if d["metadata"]["labels"]["genstack.dev/service"] == "retriever":
            key = env["GENSTACK_RETRIEVER_WEAVIATE_API_KEY"]["valueFrom"]["secretKeyRef"]
            assert key["name"] == "genstack-weaviate"
    redis = _by_kind(docs, "StatefulSet")["redis"]["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][redis["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    weaviate = _by_kind(docs, "StatefulSet")["weaviate"]["spec"]["template"]["spec"]["containers"][0]
    wenv = {e["name"]: e for e in weaviate["env"]}
    assert wenv["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"]["value"] == "false"
    assert wenv["AUTHENTICATION_APIKEY_ALLOWED_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "genstack-weaviate"
    for so in _by_kind(docs, "ScaledObject").values():
        assert so["spec"]["triggers"][0]["metadata"]["passwordFromEnv"] == "REDIS_PASSWORD"


# --- observability and the console ----------------------------------------------------------

def test_monitoring_component_scrapes_every_genstack_process(rendered):
    docs = rendered["base+monitoring"]
    (monitor,) = _by_kind(docs, "ServiceMonitor").values()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    def matches(labels: dict) -> bool:
        return all(labels.get(e["key"]) in e["values"] for e in monitor["spec"]["selector"]["matchExpressions"])

    scraped = {svc["metadata"]["name"] for svc in _by_kind(docs, "Service").values()
               if matches(svc["metadata"]["labels"]) and any(p["name"] == "metrics" for p in svc["spec"]["ports"])}
    # every server and every worker, each through a Service with a metrics port
    assert scraped == {*IMPLEMENTED, *(f"{n}-worker-metrics" for n in IMPLEMENTED)}
    for name in IMPLEMENTED:
        assert _by_kind(docs, "Service")[f"{name}-worker-metrics"]["spec"]["clusterIP"] == "None"
    policy = _by_kind(docs, "NetworkPolicy")["metrics-ingress"]["spec"]
    assert policy["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert policy["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": generate_k8s.MONITORING_NAMESPACE}


def test_servicemonitor_schema_rejects_a_misspelt_field(rendered):
    monitor = copy.deepcopy(next(iter(_by_kind(rendered["base+monitoring"], "ServiceMonitor").values())))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in e for e in _validate(monitor))


def test_console_component_serves_the_page_next_to_the_orchestrator(rendered):
    docs = rendered["base+console"]
    console = _by_kind(docs, "Deployment")["console"]
    c = console["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:3] == ["python", "-m", "services.console"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": generate_k8s.CONSOLE_PORT,
                                                                  "metrics": METRICS_PORT}
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    config = _by_kind(docs, "ConfigMap")["genstack-config"]["data"]
    assert config["GENSTACK_ORCHESTRATOR_ADDRESS"] == f"orchestrator:{SERVICES['orchestrator'].port}"
    # no secret of its own: no token file, no auth volume (a person types a token into the page)
    assert "GENSTACK_AUTH_TOKEN_FILE" not in {e["name"] for e in c.get("env", [])}
    assert "auth" not in {v["name"] for v in console["spec"]["template"]["spec"]["volumes"]}
    # it dials the orchestrator over TLS: the CA only, no server certificate
    assert {e["name"]: e["value"] for e in c["env"]} == {"GENSTACK_TLS_CA_FILE": "/etc/genstack/tls/ca.crt"}
    assert _by_kind(docs, "NetworkPolicy")["console-ingress"]["spec"]["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}]}]
