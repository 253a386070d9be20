"""A small kustomize renderer for the features deploy/k8s uses, for machines without kustomize.

The tests render the manifests with `kubectl kustomize` (or a `kustomize` binary) when one is on
PATH, and with this module otherwise; where both exist a test checks that they agree, so this
stays an honest stand-in. It supports exactly: `resources` (files and folders), `components`,
`patches` holding JSON 6902 operations (add, remove, replace) with a target selected by group,
version, kind, name and label selector, `namespace` and `images`. Anything else in a
kustomization raises `Unsupported` rather than being silently ignored.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "components", "patches", "namespace", "images"}
#: kinds the namespace transformer leaves alone (the ones deploy/k8s could contain)
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass"}


class Unsupported(Exception):
    """The kustomization uses a feature this renderer does not implement."""


def _kustomization(folder: Path) -> dict:
    for name in KUSTOMIZATION_FILES:
        path = folder / name
        if path.exists():
            doc = yaml.safe_load(path.read_text()) or {}
            unknown = set(doc) - SUPPORTED_KEYS
            if unknown:
                raise Unsupported(f"{path}: fields {sorted(unknown)} are not supported by kustomize_lite")
            return doc
    raise FileNotFoundError(f"no kustomization file in {folder}")


def _load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _matches(doc: dict, target: dict) -> bool:
    group, version = _group_version(doc.get("apiVersion", ""))
    meta = doc.get("metadata", {})
    for key, value in target.items():
        if key == "group" and group != value:
            return False
        if key == "version" and version != value:
            return False
        if key == "kind" and doc.get("kind") != value:
            return False
        if key == "name" and meta.get("name") != value:
            return False
        if key == "namespace" and meta.get("namespace") != value:
            return False
        if key == "labelSelector":
            labels = meta.get("labels") or {}
            for term in value.split(","):
                k, sep, v = term.partition("=")
                if not sep or "!" in k:
                    raise Unsupported(f"label selector term {term!r}: only key=value terms are supported")
                if labels.get(k.strip()) != v.strip():
                    return False
        if key not in ("group", "version", "kind", "name", "namespace", "labelSelector"):
            raise Unsupported(f"patch target field {key!r}")
    return True


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json_patch(doc: dict, operations: list[dict]) -> dict:
    """RFC 6902 add/remove/replace on a copy of `doc`."""
    doc = copy.deepcopy(doc)
    for op in operations:
        parts = _pointer(op["path"])
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        if kind == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]  # KeyError when absent, as kustomize fails too
        elif kind == "replace":
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(op["value"])
            else:
                if last not in parent:
                    raise KeyError(f"replace of missing path {op['path']}")
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise Unsupported(f"JSON patch op {kind!r}")
    return doc


def _apply_patches(docs: list[dict], patches: list[dict], folder: Path) -> list[dict]:
    for patch in patches:
        if "path" in patch:
            text = (folder / patch["path"]).read_text()
        else:
            text = patch["patch"]
        operations = yaml.safe_load(text)
        if not isinstance(operations, list):
            raise Unsupported("only JSON 6902 patches (a list of operations) are supported")
        target = patch.get("target")
        if not target:
            raise Unsupported("a JSON 6902 patch needs a target")
        hits = [i for i, doc in enumerate(docs) if _matches(doc, target)]
        if not hits:
            raise ValueError(f"patch target {target} matches no resource in {folder}")
        for i in hits:
            docs[i] = apply_json_patch(docs[i], operations)
    return docs


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    # a ':' after the last '/' starts the tag (a ':' before it belongs to a registry port)
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _apply_images(docs: list[dict], images: list[dict]) -> None:
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for rule in images:
                if _image_name(c["image"]) != rule["name"]:
                    continue
                name = rule.get("newName", rule["name"])
                if "digest" in rule:
                    c["image"] = f"{name}@{rule['digest']}"
                else:
                    current = c["image"][len(_image_name(c["image"])):]
                    tag = f":{rule['newTag']}" if "newTag" in rule else current
                    c["image"] = f"{name}{tag}"


def _render(folder: Path, docs: list[dict] | None = None, component: bool = False) -> list[dict]:
    spec = _kustomization(folder)
    expected = "Component" if component else "Kustomization"
    if spec.get("kind", "Kustomization") != expected:
        raise ValueError(f"{folder}: expected kind {expected}, found {spec.get('kind')}")
    out = list(docs or [])
    for entry in spec.get("resources", []):
        path = folder / entry
        out.extend(_render(path) if path.is_dir() else _load_documents(path))
    for entry in spec.get("components", []):
        out = _render(folder / entry, out, component=True)
    out = _apply_patches(out, spec.get("patches", []), folder)
    if "namespace" in spec:
        for doc in out:
            if doc.get("kind") not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    if "images" in spec:
        _apply_images(out, spec["images"])
    return out


def render(folder: str | Path) -> list[dict]:
    """The resources a kustomization folder produces."""
    return _render(Path(folder))


def kustomize_command() -> list[str] | None:
    """The real renderer on this machine, if any: `kustomize build` or `kubectl kustomize`."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render_with_kustomize(folder: str | Path, command: list[str] | None = None) -> list[dict]:
    command = command or kustomize_command()
    if command is None:
        raise FileNotFoundError("neither kustomize nor kubectl is on PATH")
    result = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} {folder} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
