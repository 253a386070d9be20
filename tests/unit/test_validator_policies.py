"""Named policies: the shipped ones, user policies from a YAML/JSON file, inline overrides, advisory checks."""

from __future__ import annotations

import json

import pytest

from services.validator.core import ValidatorCore
from services.validator.datatypes import Artifact, CheckSpec, Context, Source
from services.validator.policies import SHIPPED, PolicyRegistry
from services.validator.settings import ValidatorSettings
from shared.errors import FailedPrecondition, InvalidArgument

SOURCES = [
    Source("1", "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It was designed "
                "and built by the company of engineer Gustave Eiffel from 1887 to 1889."),
    Source("2", "The tower is 330 metres tall and was the tallest man-made structure in the world until 1930."),
]
GOOD = "The Eiffel Tower stands on the Champ de Mars in Paris [1]. It is 330 metres tall [2]."
BAD = ("The Eiffel Tower stands on the Champ de Mars in Paris [1]. It is painted gold every summer [3]. "
       "Write to me at ada@example.org.")


@pytest.fixture(scope="module")
def validator() -> ValidatorCore:
    return ValidatorCore(ValidatorSettings(warm_up_models=False))


def test_the_five_shipped_policies_are_listed(validator):
    assert [p.name for p in SHIPPED] == ["rag-answer", "rag-refusal", "json-output", "image-default",
                                         "video-default"]
    names = {p.name: p.origin for p in validator.policies()}
    assert all(names[p.name] == "shipped" for p in SHIPPED)
    for policy in SHIPPED:  # every shipped check and parameter is valid
        for spec in policy.checks:
            validator.checks()[spec.name].parse_params(spec.params, "x")


def test_rag_answer_passes_a_grounded_cited_answer(validator):
    v = validator.validate(Artifact.of_text(GOOD), Context("How tall is it?", SOURCES), "rag-answer")
    assert v.passed and v.policy == "rag-answer" and v.feedback == ""
    assert [r.name for r in v.results] == ["length", "repetition", "citations", "pii", "groundedness",
                                           "answers_question", "prompt_injection"]


def test_rag_answer_feedback_lists_every_failed_check(validator):
    v = validator.validate(Artifact.of_text(BAD), Context("How tall is it?", SOURCES), "rag-answer")
    assert not v.passed
    failed = [r.name for r in v.results if not r.passed]
    assert failed == ["citations", "pii", "groundedness"]
    lines = v.feedback.splitlines()
    assert lines[0] == "- Cite only sources [1]..[2]; [3] does not exist."
    assert lines[1].startswith("- Remove or redact the personal data: the e-mail address 'a***@example.org'")
    assert lines[2].startswith("- Remove the sentence 'It is painted gold every summer [3].'")
    assert 0 < v.score < 1


def test_json_output_with_an_inline_schema_replaces_the_policy_check(validator):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    spec = CheckSpec("json_schema", {"schema": schema})
    ok = validator.validate(Artifact.of_text('{"n": 1}'), policy="json-output", checks=[spec])
    assert ok.passed and [r.name for r in ok.results] == ["json_schema", "length"]
    bad = validator.validate(Artifact.of_text('{"n": "one"}'), policy="json-output", checks=[spec])
    assert not bad.passed and bad.results[0].evidence[0].where == "/n"


def test_inline_checks_are_appended_and_labels_allow_repeats(validator):
    checks = [CheckSpec("regex", {"pattern": "Paris"}, label="mentions-paris"),
              CheckSpec("regex", {"pattern": "London"}, label="mentions-london", advisory=True)]
    v = validator.validate(Artifact.of_text('{"city": "Paris"}'), policy="json-output", checks=checks)
    assert [r.name for r in v.results] == ["json_schema", "length", "mentions-paris", "mentions-london"]
    london = v.result("mentions-london")
    assert london.check == "regex" and london.advisory and not london.passed
    assert v.passed  # an advisory failure does not fail the verdict ...
    assert "London" in v.feedback  # ... but its feedback is still given


def test_unknown_policy_and_unknown_check_are_invalid_argument(validator):
    with pytest.raises(InvalidArgument) as info:
        validator.validate(Artifact.of_text("x"), policy="rag-anwser")
    assert info.value.message.startswith("policy: unknown policy 'rag-anwser'; known policies: rag-answer")
    with pytest.raises(InvalidArgument) as info:
        validator.validate(Artifact.of_text("x"), checks=[CheckSpec("lenght")])
    assert info.value.message.startswith("checks[0].name: unknown check 'lenght'; known checks:")
    assert "length" in info.value.message


USER_YAML = """
policies:
  short-answer:
    description: A short RAG answer without marketing words.
    extends: rag-answer
    checks:
      - name: length
        params: {max_chars: 80}
      - name: banned_terms
        params: {terms: [revolutionary]}
        advisory: true
  strict-short:
    extends: short-answer
    checks:
      - name: citations
        params: {every_sentence: true}
"""


def test_user_policies_from_yaml_extend_shipped_ones(tmp_path):
    path = tmp_path / "policies.yaml"
    path.write_text(USER_YAML)
    v = ValidatorCore(ValidatorSettings(warm_up_models=False, policies_file=path))
    v.warm_up()
    by_name = {p.name: p for p in v.policies()}
    short = by_name["short-answer"]
    assert short.origin == str(path)
    assert [c.key for c in short.checks] == ["length", "repetition", "citations", "pii", "groundedness",
                                            "answers_question", "prompt_injection", "banned_terms"]
    assert short.checks[0].params == {"max_chars": 80}
    assert by_name["strict-short"].checks[2].params == {"every_sentence": True}
    verdict = v.validate(Artifact.of_text(GOOD + " A revolutionary tower, really."), Context("q", SOURCES),
                         "short-answer")
    assert not verdict.result("length").passed and "at most 80 characters" in verdict.feedback
    assert verdict.result("banned_terms").advisory and not verdict.result("banned_terms").passed


def test_user_policies_from_json(tmp_path):
    path = tmp_path / "policies.json"
    path.write_text(json.dumps({"policies": {"tiny-json": {"checks": [
        {"name": "json_schema", "params": {"schema": {"type": "array"}}}]}}}))
    v = ValidatorCore(ValidatorSettings(warm_up_models=False, policies_file=path))
    assert v.validate(Artifact.of_text("[1]"), policy="tiny-json").passed
    assert not v.validate(Artifact.of_text("{}"), policy="tiny-json").passed


@pytest.mark.parametrize("body, reason", [
    ("policies:\n  p:\n    checks:\n      - name: nope\n", "policies.p.checks[0].name: unknown check 'nope'"),
    ("policies:\n  p:\n    checks:\n      - name: length\n        params: {max_chars: -1}\n",
     "policies.p.checks[0].params: invalid parameters for check 'length': max_chars"),
    ("policies:\n  rag-answer:\n    checks: [{name: length}]\n", "is a shipped policy"),
    ("policies:\n  p:\n    extends: missing\n    checks: []\n", "unknown policy 'missing'"),
    ("policies:\n  a:\n    extends: b\n  b:\n    extends: a\n", "cycle"),
    ("policies: [1, 2]\n", "must be a mapping with a 'policies' mapping"),
    ("policies:\n  p: {checks: [{name: length}], colour: red}\n", "unknown key(s) colour"),
    ("policies: {p: [unclosed\n", "not valid YAML"),
])
def test_a_broken_policy_file_stops_warm_up_and_names_the_problem(tmp_path, body, reason):
    path = tmp_path / "policies.yaml"
    path.write_text(body)
    v = ValidatorCore(ValidatorSettings(warm_up_models=False, policies_file=path))
    with pytest.raises(FailedPrecondition) as info:
        v.warm_up()
    assert str(path) in info.value.message and reason in info.value.message


def test_a_missing_policy_file_is_reported(tmp_path):
    with pytest.raises(FailedPrecondition, match="cannot be read"):
        PolicyRegistry(tmp_path / "absent.yaml").load()
