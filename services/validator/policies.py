"""Named policies: the shipped ones and those a user defines in a YAML or JSON file.

A user file (GENSTACK_VALIDATOR_POLICIES_FILE) looks like::

    policies:
      short-answer:
        description: A RAG answer of at most 400 characters, no marketing words.
        extends: rag-answer          # optional: start from another policy's checks
        checks:
          - name: length             # same label as the parent's check: replaces it
            params: {max_chars: 400}
          - name: banned_terms       # new label: appended
            params: {terms: [revolutionary, best-in-class]}
            advisory: true

Every check name and parameter is validated when the file is loaded, so a typo stops the service
at start-up rather than at the first request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.validator.checks import all_checks
from services.validator.datatypes import CheckSpec, Policy
from shared.errors import FailedPrecondition, InvalidArgument

SHIPPED: tuple[Policy, ...] = (
    Policy(
        "rag-answer",
        "An answer generated from retrieved sources: bounded length, no looping repetition, citations to existing "
        "sources, no personal data, every sentence grounded in the sources, a fact from a cited source that the "
        "question does not already state (no restatement), no prompt injection in the request or the sources.",
        [
            CheckSpec("length", {"min_chars": 1, "max_chars": 8000}),
            CheckSpec("repetition", {}),
            CheckSpec("citations", {"required": True}),
            CheckSpec("pii", {}),
            CheckSpec("groundedness", {"threshold": 0.5}),
            CheckSpec("answers_question", {}),
            CheckSpec("prompt_injection", {"targets": ["request", "sources"]}),
        ],
    ),
    Policy(
        "rag-refusal",
        "A RAG answer that says the sources lack the answer: short, and fails when one of the top sources holds "
        "the question's key terms with a candidate answer; no prompt injection in the request or the sources.",
        [
            CheckSpec("length", {"min_chars": 1, "max_chars": 2000}),
            CheckSpec("answers_question", {}),
            CheckSpec("prompt_injection", {"targets": ["request", "sources"]}),
        ],
    ),
    Policy(
        "json-output",
        "Structured output: valid JSON (no code fence), satisfying the JSON Schema given as the json_schema "
        "check's 'schema' parameter (pass it inline: {name: json_schema, params: {schema: {...}}}).",
        [
            CheckSpec("json_schema", {}),
            CheckSpec("length", {"min_chars": 1, "max_chars": 1_000_000}),
        ],
    ),
    Policy(
        "image-default",
        "A generated image: decodes, has the requested size (params or context.expected), is not blank or "
        "uniform, holds no NaN, and is not all black.",
        [
            CheckSpec("image_decodes", {}),
            CheckSpec("image_size", {}),
            CheckSpec("image_no_nan", {}),
            CheckSpec("image_not_black", {}),
            CheckSpec("image_variance", {"min_std": 0.02}),
        ],
    ),
    Policy(
        "video-default",
        "A generated video: decodes completely, has the requested frame count/fps/size (params or "
        "context.expected), consecutive frames are coherent (mean SSIM >= 0.5) and it does not flicker.",
        [
            CheckSpec("video_decodes", {}),
            CheckSpec("video_frames", {}),
            CheckSpec("video_coherence", {"min_mean_ssim": 0.5}),
            CheckSpec("video_flicker", {"max_flicker": 0.02}),
        ],
    ),
)


def merge_checks(base: list[CheckSpec], extra: list[CheckSpec]) -> list[CheckSpec]:
    """`base` with each check of `extra` replacing the one with the same label (or name), or appended."""
    out = list(base)
    for spec in extra:
        for i, existing in enumerate(out):
            if existing.key == spec.key:
                out[i] = spec
                break
        else:
            out.append(spec)
    return out


def spec_from_dict(doc: Any, field: str) -> CheckSpec:
    """A CheckSpec from its JSON/YAML form: {name, params?, label?, advisory?}."""
    if not isinstance(doc, dict):
        raise InvalidArgument("must be a mapping with 'name' and optional 'params', 'label', 'advisory'", field=field)
    unknown = set(doc) - {"name", "params", "label", "advisory"}
    if unknown:
        raise InvalidArgument(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: name, params, label, advisory",
                              field=field)
    name, params = doc.get("name"), doc.get("params") or {}
    if not isinstance(name, str) or not name:
        raise InvalidArgument("'name' must be a check name", field=field)
    if not isinstance(params, dict):
        raise InvalidArgument("'params' must be a mapping", field=field)
    return CheckSpec(name, params, str(doc.get("label") or ""), bool(doc.get("advisory", False)))


def validate_spec(spec: CheckSpec, field: str) -> None:
    """The check exists and its parameters parse (raises InvalidArgument naming `field`)."""
    checks = all_checks()
    if spec.name not in checks:
        raise InvalidArgument(f"unknown check {spec.name!r}; known checks: {', '.join(sorted(checks))}",
                              field=f"{field}.name")
    checks[spec.name].parse_params(spec.params, f"{field}.params")


class PolicyRegistry:
    """Shipped policies plus the user file's, by name."""

    def __init__(self, user_file: Path | None = None):
        self.user_file = user_file
        self._policies: dict[str, Policy] | None = None

    def load(self) -> PolicyRegistry:
        if self._policies is None:
            policies = {p.name: p for p in SHIPPED}
            if self.user_file is not None:
                for policy in load_user_policies(self.user_file, policies):
                    policies[policy.name] = policy
            self._policies = policies
        return self

    def all(self) -> list[Policy]:
        return list(self.load()._policies.values())

    def get(self, name: str) -> Policy:
        policies = self.load()._policies
        if name not in policies:
            raise InvalidArgument(f"unknown policy {name!r}; known policies: {', '.join(policies)}", field="policy")
        return policies[name]


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FailedPrecondition(f"policy file {path}: cannot be read ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is reported with the file name
        raise FailedPrecondition(f"policy file {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                                 f"{exc}") from None


def load_user_policies(path: Path, known: dict[str, Policy]) -> list[Policy]:
    doc = _read(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("policies"), dict):
        raise FailedPrecondition(f"policy file {path}: must be a mapping with a 'policies' mapping (name -> policy)")
    shipped = {p.name for p in SHIPPED}
    out: list[Policy] = []
    resolved = dict(known)
    pending = dict(doc["policies"])
    # Resolve in dependency order so that a policy may extend one defined later in the file.
    while pending:
        progressed = False
        for name, body in list(pending.items()):
            field = f"policies.{name}"
            if not isinstance(body, dict):
                raise FailedPrecondition(f"policy file {path}: {field} must be a mapping")
            parent = body.get("extends")
            if parent and parent not in resolved:
                if parent in pending:
                    continue
                raise FailedPrecondition(f"policy file {path}: {field}.extends: unknown policy {parent!r}")
            try:
                if name in shipped:
                    raise InvalidArgument("is a shipped policy; pick another name (use 'extends' to build on it)",
                                          field=field)
                unknown = set(body) - {"description", "extends", "checks"}
                if unknown:
                    raise InvalidArgument(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: description, "
                                          "extends, checks", field=field)
                raw_checks = body.get("checks") or []
                if not isinstance(raw_checks, list):
                    raise InvalidArgument("must be a list of checks", field=f"{field}.checks")
                specs = [spec_from_dict(c, f"{field}.checks[{i}]") for i, c in enumerate(raw_checks)]
                for i, spec in enumerate(specs):
                    validate_spec(spec, f"{field}.checks[{i}]")
                checks = merge_checks(resolved[parent].checks, specs) if parent else specs
                if not checks:
                    raise InvalidArgument("has no checks", field=field)
            except InvalidArgument as exc:
                raise FailedPrecondition(f"policy file {path}: {exc.message}") from None
            policy = Policy(str(name), str(body.get("description") or ""), checks, str(path))
            resolved[policy.name] = policy
            out.append(policy)
            del pending[name]
            progressed = True
        if not progressed:
            raise FailedPrecondition(f"policy file {path}: 'extends' forms a cycle among {', '.join(pending)}")
    return out
