"""The validator core: resolves a policy into checks, runs them on an artifact, returns a verdict.

No gRPC or Celery here: `ValidatorCore.validate` takes plain data (services/validator/datatypes.py)
and the transports convert protobuf to and from it (grpc_api.py). Models load lazily or in
`warm_up()`: the embedding model (groundedness, token counts) and the prompt-injection detector.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from services.validator.checks import all_checks
from services.validator.checks.base import CheckDef, Params, Subject
from services.validator.checks.injection import InjectionDetector
from services.validator.datatypes import (
    Artifact,
    CheckResult,
    CheckSpec,
    Context,
    Policy,
    Verdict,
)
from services.validator.policies import PolicyRegistry, merge_checks
from services.validator.settings import ValidatorSettings, get_validator_settings
from shared import metrics, tracing
from shared.config import get_settings
from shared.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted

log = logging.getLogger(__name__)


class Resources:
    """Models shared by all checks in this process, loaded once and on first use."""

    def __init__(self, settings: ValidatorSettings, embedder=None):
        self.settings = settings
        self._embedder = embedder
        self._detectors: dict[str, InjectionDetector] = {}
        self._lock = threading.Lock()
        # Sentence vectors by text. A validate-and-retry loop re-sends the same sources with each new
        # answer, so after the first attempt only the answer's sentences need the model.
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._vectors_lock = threading.Lock()

    @property
    def embedder(self):
        if self._embedder is None:
            from shared.embeddings import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length vectors of `texts` (rows in order), computing only those not cached."""
        limit = self.settings.embedding_cache_size
        with self._vectors_lock:
            cached = {t: self._vectors[t] for t in texts if t in self._vectors}
            for t in cached:
                self._vectors.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in cached))
        if missing:
            fresh = self.embedder.encode(missing)
            cached.update(zip(missing, fresh, strict=True))
            if limit > 0:
                with self._vectors_lock:
                    for t, v in zip(missing, fresh, strict=True):
                        self._vectors[t] = v
                    while len(self._vectors) > limit:
                        self._vectors.popitem(last=False)
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return np.stack([cached[t] for t in texts])

    def count_tokens(self, text: str) -> int:
        """Tokens of the embedding model's tokenizer, without special tokens and without truncation."""
        tokenizer = self.embedder.tokenizer
        # No truncation and no special tokens: the length of the text itself, however long.
        return len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])

    def injection_detector(self, mode: str | None = None) -> InjectionDetector:
        mode = mode or self.settings.injection_detector
        with self._lock:
            detector = self._detectors.get(mode)
            if detector is None:
                detector = self._detectors[mode] = InjectionDetector(mode)
        return detector.load()


class PlannedCheck:
    def __init__(self, spec: CheckSpec, definition: CheckDef, params: Params):
        self.spec = spec
        self.definition = definition
        self.params = params


class ValidatorCore:
    """Runs policies on artifacts. Thread-safe; one instance serves every request of a process."""

    def __init__(
        self, settings: ValidatorSettings | None = None, embedder=None, registry: PolicyRegistry | None = None
    ):
        self.settings = settings or get_validator_settings()
        self.registry = registry or PolicyRegistry(self.settings.policies_file)
        self.resources = Resources(self.settings, embedder)

    def warm_up(self) -> None:
        """Validate the policy file and load the models, so that the first request is not slow."""
        self.registry.load()
        all_checks()
        if self.settings.warm_up_models:
            self.resources.embed(["warm-up"])
            self.resources.count_tokens("warm-up")
            detector = self.resources.injection_detector()
            if detector.classifier is not None:
                detector.classifier.scores(["warm-up"])
            log.info("validator ready", extra={"fields": {"injection_detector": detector.describe()}})

    # -- catalogue ------------------------------------------------------------------------------

    def policies(self) -> list[Policy]:
        return self.registry.all()

    def checks(self) -> dict[str, CheckDef]:
        return dict(all_checks())

    def injection_detector_description(self) -> str:
        return self.resources.injection_detector().describe()

    # -- validation -----------------------------------------------------------------------------

    def plan(
        self, artifact: Artifact, context: Context, policy: str, checks: list[CheckSpec]
    ) -> tuple[str, list[PlannedCheck]]:
        """The checks to run, with parsed parameters; every bad input is raised here, before any work."""
        if artifact.kind not in ("text", "image", "video", "frames"):
            raise InvalidArgument("must set one of text, image, video, frames, ref", field="artifact")
        size = artifact.size_bytes() + context.size_bytes()
        if size > self.settings.max_payload_bytes:
            raise ResourceExhausted(
                f"payload of {size} bytes (artifact + context) exceeds the limit of {self.settings.max_payload_bytes} "
                "bytes (GENSTACK_VALIDATOR_MAX_PAYLOAD_BYTES)"
            )
        if len(context.sources) > self.settings.max_sources:
            raise ResourceExhausted(
                f"context.sources: {len(context.sources)} sources exceed the limit of {self.settings.max_sources} "
                "(GENSTACK_VALIDATOR_MAX_SOURCES)"
            )
        if not policy and not checks:
            raise InvalidArgument(
                f"give a policy name ({', '.join(p.name for p in self.policies())}) or checks", field="policy"
            )
        specs: list[tuple[CheckSpec, str]] = []
        if policy:
            named = self.registry.get(policy)
            for spec in merge_checks(named.checks, checks):
                origin = next((i for i, c in enumerate(checks) if c is spec), None)
                field = f"checks[{origin}]" if origin is not None else f"policy {policy!r} check {spec.key!r}"
                specs.append((spec, field))
        else:
            specs = [(spec, f"checks[{i}]") for i, spec in enumerate(checks)]
        if len(specs) > self.settings.max_checks:
            raise ResourceExhausted(
                f"checks: {len(specs)} checks exceed the limit of {self.settings.max_checks} "
                "(GENSTACK_VALIDATOR_MAX_CHECKS)"
            )
        catalogue = all_checks()
        planned: list[PlannedCheck] = []
        for spec, field in specs:
            definition = catalogue.get(spec.name)
            if definition is None:
                raise InvalidArgument(
                    f"unknown check {spec.name!r}; known checks: {', '.join(sorted(catalogue))}", field=f"{field}.name"
                )
            if artifact.family not in definition.kinds:
                raise InvalidArgument(
                    f"check {spec.name!r} applies to {' or '.join(definition.kinds)} artifacts, "
                    f"but the artifact is {artifact.family}",
                    field=field,
                )
            if definition.needs_sources and not context.sources:
                raise InvalidArgument(
                    f"check {spec.name!r} needs the sources the answer was generated from; give at least one",
                    field="context.sources",
                )
            planned.append(PlannedCheck(spec, definition, definition.parse_params(spec.params, f"{field}.params")))
        return (policy or "inline"), planned

    def validate(
        self,
        artifact: Artifact,
        context: Context | None = None,
        policy: str = "",
        checks: list[CheckSpec] | None = None,
        check_alive: Callable[[], None] | None = None,
    ) -> Verdict:
        """Run the policy; `check_alive` raises when the caller has gone away or the deadline passed."""
        started = time.perf_counter()
        context = context or Context()
        policy_name, planned = self.plan(artifact, context, policy, list(checks or []))
        subject = Subject(artifact, context, self.resources, check_alive)
        results: list[CheckResult] = []
        for item in planned:
            if check_alive is not None:
                check_alive()
            t0 = time.perf_counter()
            outcome = self._run_check(item, subject, check_alive)
            results.append(
                CheckResult(
                    name=item.spec.key,
                    check=item.definition.name,
                    passed=bool(outcome.passed),
                    score=float(min(1.0, max(0.0, outcome.score))),
                    message=outcome.message,
                    evidence=outcome.evidence,
                    feedback="" if outcome.passed else outcome.feedback,
                    advisory=item.spec.advisory,
                    duration_ms=(time.perf_counter() - t0) * 1000.0,
                )
            )
        passed = all(r.passed for r in results if not r.advisory)
        score = float(np.mean([r.score for r in results])) if results else 1.0
        feedback = "\n".join(f"- {r.feedback}" for r in results if not r.passed and r.feedback)
        verdict = Verdict(passed, score, results, feedback, policy_name, (time.perf_counter() - started) * 1000.0)
        metrics.observe_verdict(policy_name, passed, [(r.name, r.passed) for r in results])
        tracing.record("validator.validate", verdict.duration_ms / 1000, {"genstack.policy": policy_name,
                                                                       "genstack.passed": passed})
        log.info(
            "validated",
            extra={"fields": {"policy": policy_name, "passed": passed, "score": round(score, 4),
                              "failed": [r.name for r in results if not r.passed],
                              "duration_ms": round(verdict.duration_ms, 1)}},
        )
        return verdict

    def _run_check(self, item, subject: Subject, check_alive: Callable[[], None] | None):
        """One check under its time budget and the caller's deadline. The check runs on its own
        thread so that the request ends at either limit with a clear status even while the check is
        inside a library call that never looks at the clock (a model, a decoder); a check cut off
        this way finishes in the background and its result is dropped."""
        box: dict = {}
        context = contextvars.copy_context()  # checks read per-request limits from context variables

        def work():
            try:
                box["outcome"] = context.run(item.definition.fn, item.params, subject)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the request's thread
                box["error"] = exc

        worker = threading.Thread(target=work, name=f"check-{item.definition.name}", daemon=True)
        worker.start()
        budget = self.settings.check_budget_s
        deadline = time.monotonic() + budget
        while True:
            worker.join(min(0.05, max(0.0, deadline - time.monotonic())))
            if not worker.is_alive():
                break
            if check_alive is not None:
                check_alive()
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"check {item.spec.key!r} ran past its time budget of {budget:g} s; send a "
                                       "smaller artifact or fewer sources, or ask the operator to raise "
                                       "GENSTACK_VALIDATOR_CHECK_BUDGET_S")
        if "error" in box:
            raise box["error"]
        return box["outcome"]

    # -- artifacts by reference -----------------------------------------------------------------

    def artifact_from_ref(self, uri: str, mime_type: str, sha256: str = "") -> Artifact:
        """Read a stored artifact (file:// inside the artifact root) as an image or video artifact."""
        root = (self.settings.artifact_root or get_settings().data_path).resolve()
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise InvalidArgument(f"only file:// URIs are supported (got {uri!r})", field="artifact.ref.uri")
        kind = mime_type.split("/")[0]
        if kind not in ("image", "video"):
            raise InvalidArgument(f"must be image/* or video/* (got {mime_type!r})", field="artifact.ref.mime_type")

        def unreadable(why: str) -> NotFound:
            # One answer for missing, outside the root, not a file, unreadable and a wrong sha256, so
            # that a client learns nothing about the host's files; the reason goes to the log.
            log.warning("artifact ref refused: %s", why, extra={"fields": {"uri": uri}})
            return NotFound("artifact.ref.uri: no artifact at that URI that this validator may read")

        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(root):
            raise unreadable(f"{path} is outside the artifact root {root}")
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise unreadable(f"{path}: {exc.strerror}") from None
        if not path.is_file():
            raise unreadable(f"{path} is not a regular file")
        if size > self.settings.max_payload_bytes:
            raise ResourceExhausted(
                f"artifact.ref: {size} bytes exceed the limit of {self.settings.max_payload_bytes} bytes "
                "(GENSTACK_VALIDATOR_MAX_PAYLOAD_BYTES)"
            )
        data = path.read_bytes()
        if sha256 and hashlib.sha256(data).hexdigest() != sha256.lower():
            raise unreadable(f"{path}: its sha256 differs from artifact.ref.sha256")
        return Artifact.of_image(data) if kind == "image" else Artifact.of_video(data)
