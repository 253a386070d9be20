"""The validator core: planning (bad input before any work), limits, verdict aggregation, artifact refs."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from services.validator.core import ValidatorCore
from services.validator.datatypes import Artifact, CheckSpec, Context, Source
from services.validator.settings import ValidatorSettings
from shared.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted


@pytest.fixture(scope="module")
def validator() -> ValidatorCore:
    return ValidatorCore(ValidatorSettings(warm_up_models=False))


def test_a_policy_or_checks_are_required(validator):
    with pytest.raises(InvalidArgument, match="policy: give a policy name .*rag-answer.* or checks"):
        validator.validate(Artifact.of_text("x"))


def test_checks_needing_sources_without_sources_are_invalid_argument(validator):
    with pytest.raises(InvalidArgument, match="context.sources: check 'citations' needs the sources"):
        validator.validate(Artifact.of_text("A [1]."), policy="rag-answer")


def test_all_bad_input_is_found_before_any_check_runs(validator):
    calls = []
    checks = [CheckSpec("length", {"max_chars": 5}), CheckSpec("regex", {"pattern": "("})]
    with pytest.raises(InvalidArgument, match=r"checks\[1\].params"):
        validator.validate(Artifact.of_text("x"), checks=checks, check_alive=lambda: calls.append(1))
    assert calls == []


def test_verdict_aggregates_scores_and_feedback(validator):
    checks = [CheckSpec("length", {"max_chars": 10}), CheckSpec("regex", {"pattern": "^Hello"}),
              CheckSpec("banned_terms", {"terms": ["world"]})]
    v = validator.validate(Artifact.of_text("Hello there, world!"), checks=checks)
    assert v.policy == "inline" and not v.passed
    assert [r.passed for r in v.results] == [False, True, False]
    assert v.score == pytest.approx(np.mean([r.score for r in v.results]))
    assert v.feedback.splitlines() == [
        "- Shorten the output to at most 10 characters (it has 19).",
        "- Rewrite the output without the term(s) 'world' (found 1 time(s)).",
    ]
    assert all(r.duration_ms >= 0 for r in v.results) and v.duration_ms >= sum(r.duration_ms for r in v.results)


def test_a_passing_verdict_has_no_feedback(validator):
    v = validator.validate(Artifact.of_text("Hello"), checks=[CheckSpec("length", {"max_chars": 10})])
    assert v.passed and v.score == 1.0 and v.feedback == "" and v.results[0].feedback == ""


def test_the_deadline_is_checked_between_checks(validator):
    def expired():
        raise DeadlineExceeded("the call's deadline passed")

    with pytest.raises(DeadlineExceeded):
        validator.validate(Artifact.of_text("x"), checks=[CheckSpec("length")], check_alive=expired)


def test_payload_source_and_check_limits_are_resource_exhausted():
    v = ValidatorCore(ValidatorSettings(warm_up_models=False, max_payload_bytes=1000, max_sources=2, max_checks=2))
    with pytest.raises(ResourceExhausted, match="payload of 1001 bytes .* exceeds the limit of 1000 bytes"):
        v.validate(Artifact.of_text("x" * 1001), checks=[CheckSpec("length")])
    with pytest.raises(ResourceExhausted, match="payload of 1004 bytes"):  # context counts too
        v.validate(Artifact.of_text("x" * 4), Context(sources=[Source("", "y" * 1000)]), checks=[CheckSpec("length")])
    with pytest.raises(ResourceExhausted, match="3 sources exceed the limit of 2"):
        v.validate(Artifact.of_text("x"), Context(sources=[Source("", "s")] * 3), checks=[CheckSpec("length")])
    with pytest.raises(ResourceExhausted, match="3 checks exceed the limit of 2"):
        v.validate(Artifact.of_text("x"), checks=[CheckSpec("length", label=f"l{i}") for i in range(3)])


def _png() -> bytes:
    buf = io.BytesIO()
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[2:6, 2:6] = 200
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_artifacts_by_reference_inside_the_root(tmp_path):
    v = ValidatorCore(ValidatorSettings(warm_up_models=False, artifact_root=tmp_path))
    data = _png()
    path = tmp_path / "img" / "a.png"
    path.parent.mkdir()
    path.write_bytes(data)
    artifact = v.artifact_from_ref(path.as_uri(), "image/png", hashlib.sha256(data).hexdigest())
    assert artifact.kind == "image" and artifact.data == data
    assert v.validate(artifact, policy="image-default").passed
    # a wrong hash, a file outside the root, a folder and a missing file read alike: no probing
    refused = set()
    for uri, digest in ((path.as_uri(), "0" * 64), ((tmp_path / ".." / "etc.png").resolve().as_uri(), ""),
                        (path.parent.as_uri(), ""), ((tmp_path / "nope.png").as_uri(), "")):
        with pytest.raises(NotFound) as e:
            v.artifact_from_ref(uri, "image/png", digest)
        assert str(tmp_path) not in e.value.message and "sha256" not in e.value.message
        refused.add(e.value.message)
    assert len(refused) == 1
    with pytest.raises(InvalidArgument, match="only file:// URIs"):
        v.artifact_from_ref("https://example.com/a.png", "image/png")
    with pytest.raises(InvalidArgument, match="image/\\* or video/\\*"):
        v.artifact_from_ref(path.as_uri(), "text/plain")
    with pytest.raises(NotFound):
        v.artifact_from_ref((tmp_path / "missing.png").as_uri(), "image/png")
