"""The validator's answers_question check: restatements and refusals with the answer in the sources
fail with feedback that says what is missing and where; correct short answers pass."""

from __future__ import annotations

import pytest

from services.validator.checks import all_checks
from services.validator.checks.answers import AnswersQuestionParams, answers_question, is_refusal, terms
from services.validator.checks.base import Subject
from services.validator.datatypes import Artifact, Context, Source
from services.validator.policies import PolicyRegistry

ANALYZE = ("The ANALYZE command gathers statistics about tables and indices. The default implementation stores all "
           "statistics in a single table named \"sqlite_stat1\". If SQLite is compiled with the SQLITE_ENABLE_STAT4 "
           "option, then additional histogram data is collected.")
VACUUM = "The VACUUM command rebuilds the database file, repacking it into a minimal amount of disk space."
LIMITS = ("The SQLITE_MAX_EXPR_DEPTH parameter determines the maximum expression tree depth. If the value is 0, then "
          "no limit is enforced. The current implementation has a default value of 1000.")
PAIRWISE = "itertools.pairwise(iterable): Return successive overlapping pairs taken from the input iterable."


def run(answer: str, question: str, sources: list[str], **params):
    subject = Subject(Artifact.of_text(answer), Context(question, [Source(str(i), t) for i, t in
                                                                   enumerate(sources, 1)]), resources=None)
    return answers_question(AnswersQuestionParams(**params), subject)


@pytest.mark.parametrize("answer,question,sources", [
    ("The default ANALYZE implementation stores its statistics in a table [1].",
     "Which table does the default ANALYZE implementation store its statistics in?", [ANALYZE, VACUUM]),
    ("The itertools function returns successive overlapping pairs taken from the input iterable [1].",
     "Which itertools function returns successive overlapping pairs taken from the input iterable?", [PAIRWISE]),
    ("SQLITE_MAX_EXPR_DEPTH sets the maximum expression tree depth [1].",
     "What is the default value of SQLITE_MAX_EXPR_DEPTH, the maximum expression tree depth?", [LIMITS]),
])
def test_restatement_fails_and_names_what_is_missing(answer, question, sources):
    out = run(answer, question, sources)
    assert not out.passed
    assert "restates the question" in out.feedback
    assert "missing the" in out.feedback
    assert any(e.kind == "restatement" for e in out.evidence)
    # the feedback points at the source that holds the fact
    assert "Source [1]" in out.feedback


def test_restatement_feedback_names_the_kind_of_fact():
    out = run("The default ANALYZE implementation stores its statistics in a table [1].",
              "Which table does the default ANALYZE implementation store its statistics in?", [ANALYZE])
    assert "the name of the table" in out.feedback
    out = run("The default maximum depth is set by SQLITE_MAX_EXPR_DEPTH [1].",
              "How many levels deep can an expression tree be by default with SQLITE_MAX_EXPR_DEPTH?", [LIMITS])
    assert not out.passed and "number" in out.feedback


@pytest.mark.parametrize("answer,question,sources", [
    ("sqlite_stat1 [1].", "Which table does the default ANALYZE implementation store its statistics in?",
     [ANALYZE, VACUUM]),
    ("The statistics go into the sqlite_stat1 table [1].",
     "Which table does the default ANALYZE implementation store its statistics in?", [ANALYZE, VACUUM]),
    ("1000 [1]", "What is the default value of SQLITE_MAX_EXPR_DEPTH, the maximum expression tree depth?", [LIMITS]),
    ("itertools.pairwise returns them [1].",
     "Which itertools function returns successive overlapping pairs taken from the input iterable?", [PAIRWISE]),
])
def test_correct_short_answers_pass(answer, question, sources):
    out = run(answer, question, sources)
    assert out.passed, out.message
    assert out.score == 1.0


def test_naming_one_of_the_offered_choices_answers_a_choice_question():
    source = ('The statement above has three ordinary columns and two generated columns "d" and "e". If the '
              'trailing "VIRTUAL" or "STORED" keyword is omitted, then VIRTUAL is the default.')
    question = "If neither VIRTUAL nor STORED is given for a generated column, which one is the default?"
    assert run("VIRTUAL [1].", question, [source]).passed
    assert not run("VIRTUAL or STORED [1].", question, [source]).passed


def test_the_new_fact_must_come_from_a_cited_source():
    # "1000" is only in source 2; citing source 1 alone does not carry it
    question = "What is the default value of SQLITE_MAX_EXPR_DEPTH?"
    assert not run("The default value of SQLITE_MAX_EXPR_DEPTH is 1000 [1].", question, [VACUUM, LIMITS]).passed
    assert run("The default value of SQLITE_MAX_EXPR_DEPTH is 1000 [2].", question, [VACUUM, LIMITS]).passed


def test_refusal_with_the_answer_in_a_top_source_fails_and_points_at_it():
    out = run("The sources do not contain the answer.",
              "Which table does the default ANALYZE implementation store its statistics in?", [VACUUM, ANALYZE])
    assert not out.passed
    assert "Source [2]" in out.feedback and "sqlite_stat1" in out.feedback
    assert out.evidence[0].kind == "candidate_answer" and "sqlite_stat1" in out.evidence[0].text


def test_honest_refusal_passes():
    out = run("The sources do not contain the answer.",
              "What is the default value of PostgreSQL's shared_buffers setting?", [ANALYZE, VACUUM, LIMITS])
    assert out.passed, out.message


def test_refusal_outside_the_top_sources_is_not_held_against_it():
    question = "Which table does the default ANALYZE implementation store its statistics in?"
    assert run("The sources do not contain the answer.", question, [VACUUM, LIMITS, ANALYZE], top_sources=2).passed
    assert not run("The sources do not contain the answer.", question, [VACUUM, LIMITS, ANALYZE],
                   top_sources=3).passed


def test_refusal_phrasings_and_terms():
    assert is_refusal("The sources do not contain the answer.")
    assert is_refusal("The provided context does not mention the port.")
    assert not is_refusal("The default is 4096 [1].")
    assert {"sqlite_stat1", "3.8.0"} | terms("store") <= terms("It stores sqlite_stat1 since 3.8.0 [2].")
    assert terms("stores") == terms("stored") == terms("store")


def test_registered_and_in_the_rag_policies():
    assert "answers_question" in all_checks()
    registry = PolicyRegistry()
    assert "answers_question" in [c.name for c in registry.get("rag-answer").checks]
    refusal = [c.name for c in registry.get("rag-refusal").checks]
    assert "answers_question" in refusal and "citations" not in refusal


SHARED_CACHE = ("SQLite includes a special shared-cache mode. In shared-cache mode, connections to the same database "
                "share a single data and schema cache, which can significantly reduce memory use.")


def test_when_the_sources_never_mention_the_questions_subject_an_answer_fails_and_the_refusal_passes():
    question = "What is the default value of PostgreSQL's shared_buffers setting?"
    # "shared" and "cache" are there, "postgresql" and "buffers" are in no source
    wrong = run("The default value of shared_buffers is a single cache [1].", question, [SHARED_CACHE, VACUUM])
    assert not wrong.passed and "postgresql" in wrong.feedback and "The sources do not contain" in wrong.feedback
    assert [e.kind for e in wrong.evidence] == ["off_subject"]
    refusal = run("The sources do not contain the answer.", question, [SHARED_CACHE, VACUUM])
    assert refusal.passed and "no source mentions" in refusal.message
    # off: the same answer is judged on what it adds
    assert run("The default value of shared_buffers is a single cache [1].", question, [SHARED_CACHE, VACUUM],
               off_subject_terms=0).passed


def test_one_key_term_absent_from_the_sources_is_not_off_subject():
    # "activate" is in no source, yet the source answers the question
    question = "Which compile-time option activates the built-in SQL math functions?"
    source = ("The built-in SQL math functions are enabled by the -DSQLITE_ENABLE_MATH_FUNCTIONS compile-time "
              "option.")
    assert run("SQLITE_ENABLE_MATH_FUNCTIONS [1].", question, [source]).passed
    refusal = run("The sources do not contain the answer.", question, [source])
    assert not refusal.passed and "[1]" in refusal.feedback


def test_a_question_after_a_quantity_points_at_the_passage_with_the_number():
    source = ("Maximum Depth Of An Expression Tree. SQLite parses expressions into a tree for processing. "
              "During code generation, SQLite walks this tree recursively. The depth of expression trees is "
              "therefore limited in order to avoid using too much stack space. The SQLITE_MAX_EXPR_DEPTH "
              "default is 1000.")
    question = "What is the maximum depth of an expression tree by default?"
    out = run("The sources do not contain the answer.", question, [source])
    assert not out.passed and "1000" in out.feedback
