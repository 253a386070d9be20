"""Text checks of the validator: JSON Schema, regex, length (characters and tokens), banned terms."""

from __future__ import annotations

import json

import pytest

from services.validator.core import ValidatorCore
from services.validator.datatypes import Artifact, CheckSpec
from services.validator.settings import ValidatorSettings
from shared.errors import InvalidArgument


@pytest.fixture(scope="module")
def validator() -> ValidatorCore:
    return ValidatorCore(ValidatorSettings(warm_up_models=False))


def run(validator, name, text, **params):
    verdict = validator.validate(Artifact.of_text(text), checks=[CheckSpec(name, params)])
    return verdict.results[0]


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                   "email": {"type": "string", "format": "email"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


# -- json_schema --------------------------------------------------------------------------------


def test_json_that_satisfies_the_schema_passes(validator):
    r = run(validator, "json_schema", json.dumps({"name": "Ada", "age": 36}), schema=PERSON)
    assert r.passed and r.score == 1.0 and not r.feedback


def test_json_with_a_field_of_the_wrong_type_fails_with_its_pointer(validator):
    r = run(validator, "json_schema", '{"name": "Ada", "age": "thirty-six"}', schema=PERSON)
    assert not r.passed and r.score < 1.0
    assert [(e.kind, e.where) for e in r.evidence] == [("schema_error", "/age")]
    assert "'thirty-six' is not of type 'integer'" in r.evidence[0].text
    assert "/age" in r.feedback and "integer" in r.feedback


def test_every_schema_error_is_reported(validator):
    r = run(validator, "json_schema", '{"age": -1, "extra": true}', schema=PERSON)
    wheres = sorted(e.where for e in r.evidence)
    assert wheres == ["/", "/", "/age"]  # missing name, additional property, minimum
    assert "'name' is a required property" in r.message


def test_json_that_does_not_parse_fails_and_says_where(validator):
    r = run(validator, "json_schema", '{"name": "Ada", "age": 36', schema=PERSON)
    assert not r.passed and r.score == 0.0
    assert r.evidence[0].kind == "json_parse_error"
    assert "valid JSON" in r.feedback and "line 1" in r.feedback


def test_code_fence_is_rejected_unless_allowed(validator):
    fenced = '```json\n{"name": "Ada", "age": 36}\n```'
    r = run(validator, "json_schema", fenced, schema=PERSON)
    assert not r.passed and "without a Markdown code fence" in r.feedback
    assert run(validator, "json_schema", fenced, schema=PERSON, allow_code_fence=True).passed


def test_format_keywords_are_checked(validator):
    r = run(validator, "json_schema", '{"name": "Ada", "age": 3, "email": "not-an-address"}', schema=PERSON)
    assert not r.passed and r.evidence[0].where == "/email"


def test_without_a_schema_only_validity_is_checked(validator):
    assert run(validator, "json_schema", "[1, 2, 3]").passed
    assert not run(validator, "json_schema", "[1, 2,").passed


def test_an_invalid_json_schema_is_invalid_argument(validator):
    with pytest.raises(InvalidArgument) as info:
        run(validator, "json_schema", "{}", schema={"type": "integerr"})
    msg = info.value.message
    assert "checks[0].params" in msg and "invalid JSON Schema" in msg and "integerr" in msg


def test_an_unresolvable_reference_is_invalid_argument(validator):
    with pytest.raises(InvalidArgument, match="cannot be resolved"):
        run(validator, "json_schema", "{}", schema={"$ref": "https://example.invalid/schema.json"})


# -- regex --------------------------------------------------------------------------------------


def test_regex_that_must_match(validator):
    assert run(validator, "regex", "Answer: 42", pattern=r"Answer: \d+").passed
    r = run(validator, "regex", "I think 42", pattern=r"^Answer: \d+", description="start with 'Answer: <number>'")
    assert not r.passed and "start with 'Answer: <number>'" in r.feedback


def test_regex_that_must_not_match_reports_every_span(validator):
    text = "Call me maybe. TODO: fix. Another TODO here."
    r = run(validator, "regex", text, pattern="todo", must_match=False, flags="i")
    assert not r.passed
    assert [(e.start, e.end) for e in r.evidence] == [(15, 19), (34, 38)]
    assert all(text[e.start:e.end] == e.text for e in r.evidence)
    assert run(validator, "regex", "all clean", pattern="todo", must_match=False, flags="i").passed


def test_bad_regex_and_flags_are_invalid_argument(validator):
    with pytest.raises(InvalidArgument, match="invalid regular expression"):
        run(validator, "regex", "x", pattern="(unclosed")
    with pytest.raises(InvalidArgument, match="unknown flag"):
        run(validator, "regex", "x", pattern="x", flags="q")
    with pytest.raises(InvalidArgument, match="non-empty"):
        run(validator, "regex", "x")


def test_catastrophic_backtracking_is_stopped(validator):
    with pytest.raises(InvalidArgument, match="longer than"):
        run(validator, "regex", "a" * 60 + "b", pattern=r"(a|aa)+$")


# -- length -------------------------------------------------------------------------------------


def test_length_in_characters(validator):
    assert run(validator, "length", "x" * 10, min_chars=10, max_chars=10).passed
    r = run(validator, "length", "x" * 25, max_chars=20)
    assert not r.passed and r.score == pytest.approx(20 / 25)
    assert "at most 20 characters (it has 25)" in r.feedback
    r = run(validator, "length", "short", min_chars=20)
    assert not r.passed and "at least 20 characters" in r.feedback


def test_length_in_tokens_uses_the_embedding_tokenizer(validator):
    text = "Retrieval-augmented generation conditions a model on retrieved chunks."
    tokens = validator.resources.count_tokens(text)
    expected = len(validator.resources.embedder.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tokens == expected and tokens > len(text.split())  # WordPiece splits the long words
    assert run(validator, "length", text, max_tokens=tokens).passed
    r = run(validator, "length", text, max_tokens=tokens - 1)
    assert not r.passed and f"at most {tokens - 1} tokens (it has {tokens})" in r.feedback


def test_inconsistent_length_bounds_are_invalid_argument(validator):
    with pytest.raises(InvalidArgument, match="min_chars .* must be <= max_chars"):
        run(validator, "length", "x", min_chars=10, max_chars=5)
    with pytest.raises(InvalidArgument, match="unknown parameter 'max_char'"):
        run(validator, "length", "x", max_char=5)


# -- banned_terms -------------------------------------------------------------------------------


def test_banned_terms_are_found_with_spans(validator):
    text = "Our Revolutionary product is best-in-class."
    r = run(validator, "banned_terms", text, terms=["revolutionary", "best-in-class"])
    assert not r.passed
    assert [text[e.start:e.end] for e in r.evidence] == ["Revolutionary", "best-in-class"]
    assert "'revolutionary'" in r.feedback and "'best-in-class'" in r.feedback


def test_banned_terms_hidden_by_separators_lookalikes_or_invisible_characters(validator):
    for text in ("a r.e.v.o.l.u.t.i.o.n.a.r.y idea", "a ｒｅｖｏｌｕｔｉｏｎａｒｙ idea",
                 "a revo\u200blutionary idea", "a REVOLUTIONARY idea"):
        r = run(validator, "banned_terms", text, terms=["revolutionary"])
        assert not r.passed, text
        assert r.evidence[0].start == 2 and r.evidence[0].end == len(text) - 5, text


def test_whole_words_only_by_default(validator):
    assert run(validator, "banned_terms", "a classic assessment", terms=["ass"]).passed
    assert not run(validator, "banned_terms", "a classic assessment", terms=["ass"], whole_words=False).passed


def test_case_sensitive_matching(validator):
    assert run(validator, "banned_terms", "apple pie", terms=["Apple"], case_sensitive=True).passed
    assert not run(validator, "banned_terms", "Apple pie", terms=["Apple"], case_sensitive=True).passed


def test_empty_term_list_is_invalid_argument(validator):
    with pytest.raises(InvalidArgument, match="at least one non-blank term"):
        run(validator, "banned_terms", "x", terms=["  "])


# -- repetition ---------------------------------------------------------------------------------

LOOP = ("The validator checks the generator's output against the generator's output [1]. "
        "The validator checks the generator's output against the generator's output [1]. "
        "The validator checks the generator's output against the generator's output [1].")


def test_a_looping_answer_fails_with_the_repeated_phrase(validator):
    # The degenerate answer smollm2-135m gave in a `genstack up` run, which used to pass rag-answer.
    r = run(validator, "repetition", LOOP)
    assert not r.passed and r.score < 0.5
    assert "repeats itself" in r.message and "'the generator's output' occurs 6 times" in r.message
    ev = r.evidence[0]
    assert ev.kind == "repeated_phrase" and LOOP[ev.start:ev.end] == ev.text and ev.value == 6
    assert r.feedback.startswith("Say each thing once:")


def test_ordinary_prose_and_repeated_citations_pass(validator):
    text = ("The retriever stores chunks in faiss and SQLite [1]. It answers hybrid queries with an alpha "
            "between BM25 and vector scores [1]. Filters narrow the hits by metadata [2]. The orchestrator "
            "calls the retriever over gRPC [2].")
    r = run(validator, "repetition", text)
    assert r.passed and r.score > 0.9
    assert run(validator, "repetition", "yes yes yes yes").passed  # too short to judge
    assert not run(validator, "repetition", "yes " * 20).passed


def test_repetition_threshold_and_bad_parameters(validator):
    half = "one two three four five six seven eight nine ten " * 2
    assert not run(validator, "repetition", half).passed
    assert run(validator, "repetition", half, max_repeated_share=0.5).passed
    for bad in ({"ngram": 1}, {"ngram": 13}, {"max_repeated_share": 1.5}, {"min_words": 0}, {"n": 3}):
        with pytest.raises(InvalidArgument) as info:
            run(validator, "repetition", half, **bad)
        assert "repetition" in info.value.message and next(iter(bad)) in info.value.message
