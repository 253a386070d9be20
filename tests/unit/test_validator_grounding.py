"""RAG checks: groundedness (embeddings + lexical overlap + numbers) and citations to existing sources."""

from __future__ import annotations

import pytest

from services.validator.core import ValidatorCore
from services.validator.datatypes import Artifact, CheckSpec, Context, Source
from services.validator.settings import ValidatorSettings
from shared.errors import InvalidArgument

SOURCES = [
    Source("eiffel-1", "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is "
               "named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to "
               "1889."),
    Source("eiffel-2", "The tower is 330 metres tall, about the same height as an 81-storey building, and the tallest "
               "structure in Paris. It was the tallest man-made structure in the world until the Chrysler Building "
               "in New York was finished in 1930."),
    Source("eiffel-3", "The tower has three levels for visitors, with restaurants on the first and second levels. The "
               "top level's upper platform is 276 m above the ground."),
]
CONTEXT = Context("Tell me about the Eiffel Tower.", SOURCES)

GROUNDED = ("The Eiffel Tower stands on the Champ de Mars in Paris [1]. Gustave Eiffel's company designed and built "
            "it between 1887 and 1889 [1]. It is 330 metres tall [2]. Visitors can eat at restaurants on the first "
            "and second levels [3].")
INVENTED = "The tower is painted gold every summer to celebrate Bastille Day [2]."


@pytest.fixture(scope="module")
def validator() -> ValidatorCore:
    return ValidatorCore(ValidatorSettings(warm_up_models=False))


def check(validator, name, text, context=CONTEXT, **params):
    return validator.validate(Artifact.of_text(text), context, checks=[CheckSpec(name, params)]).results[0]


# -- groundedness -------------------------------------------------------------------------------


def test_a_grounded_answer_passes(validator):
    r = check(validator, "groundedness", GROUNDED)
    assert r.passed and r.score == 1.0, r.message
    assert "4 of 4 sentence(s) supported" in r.message


def test_a_paraphrased_answer_passes(validator):
    text = ("Paris's Eiffel Tower, an iron lattice structure, was named for engineer Gustave Eiffel [1]. Until 1930 "
            "no man-made structure in the world was taller [2]. Its highest public platform is 276 m up [3].")
    r = check(validator, "groundedness", text)
    assert r.passed, r.message


def test_one_invented_sentence_in_a_grounded_answer_is_reported(validator):
    first, rest = GROUNDED.split(" [1]. ", 1)
    text = f"{first} [1]. {INVENTED} {rest}"
    r = check(validator, "groundedness", text)
    assert not r.passed
    assert r.score == pytest.approx(4 / 5)
    assert [e.kind for e in r.evidence] == ["unsupported_sentence"]
    e = r.evidence[0]
    assert e.text == INVENTED and text[e.start : e.end] == INVENTED and e.value < 0.5
    assert r.feedback.startswith(f"Remove the sentence '{INVENTED}', which is not supported by the sources")
    assert "sources [1]..[3]" in r.feedback


def test_a_wrong_number_makes_a_sentence_unsupported(validator):
    r = check(validator, "groundedness", "The Eiffel Tower is 450 metres tall [2]. It was built from 1887 to 1889 [1].")
    assert not r.passed and [e.kind for e in r.evidence] == ["unsupported_number"]
    assert "states 450, which no source gives" in r.feedback
    # the same sentence passes when number checking is off: embeddings alone barely see the difference
    assert check(validator, "groundedness", "The Eiffel Tower is 450 metres tall [2].", check_numbers=False).passed


def test_numbers_written_as_words_in_sources_count(validator):
    assert check(validator, "groundedness", "The tower has 3 levels for visitors [3].").passed


def test_an_off_topic_answer_fails_every_sentence(validator):
    r = check(validator, "groundedness", "Mount Everest is the highest mountain on Earth. Photosynthesis happens in "
                                         "the chloroplasts of plant cells.")
    assert not r.passed and r.score == 0.0 and len(r.evidence) == 2


def test_short_non_claims_are_not_judged(validator):
    r = check(validator, "groundedness", "Sure! " + GROUNDED)
    assert r.passed and "4 of 4" in r.message


def test_min_supported_fraction_allows_some_slack(validator):
    text = GROUNDED + " " + INVENTED
    assert not check(validator, "groundedness", text).passed
    r = check(validator, "groundedness", text, min_supported_fraction=0.75)
    assert r.passed and r.score == pytest.approx(0.8) and len(r.evidence) == 1 and not r.feedback


def test_groundedness_without_sources_is_invalid_argument(validator):
    with pytest.raises(InvalidArgument) as info:
        check(validator, "groundedness", GROUNDED, context=Context())
    assert "context.sources" in info.value.message and "groundedness" in info.value.message


# -- citations ----------------------------------------------------------------------------------


def test_citations_to_existing_sources_pass(validator):
    r = check(validator, "citations", "A [1]. B [2, 3]. C [1-3].")
    assert r.passed and "[1], [2], [3] of 3" in r.message


def test_a_citation_to_a_source_that_does_not_exist_fails(validator):
    text = "The tower is in Paris [1]. It is 330 metres tall [4]."
    r = check(validator, "citations", text)
    assert not r.passed
    assert [(e.kind, e.text, text[e.start : e.end]) for e in r.evidence] == [("unknown_source", "[4]", "[4]")]
    assert r.feedback == "Cite only sources [1]..[3]; [4] does not exist."


def test_ranges_and_lists_are_checked_item_by_item(validator):
    r = check(validator, "citations", "Claim [2, 7]. Other [0].")
    assert not r.passed and sorted(e.value for e in r.evidence) == [0.0, 7.0]
    assert "[0], [7] do not exist" in r.feedback


def test_a_missing_citation_fails_only_when_required(validator):
    r = check(validator, "citations", "The tower is in Paris.")
    assert not r.passed and "no citation" in r.message and "[n] markers" in r.feedback
    assert check(validator, "citations", "The tower is in Paris.", required=False).passed


def test_every_sentence_mode_reports_uncited_sentences(validator):
    text = "The tower is in Paris [1]. It is 330 metres tall."
    r = check(validator, "citations", text, every_sentence=True)
    assert not r.passed
    assert [(e.kind, e.text) for e in r.evidence] == [("uncited_sentence", "It is 330 metres tall.")]
    assert "Add a citation [n] to the sentence 'It is 330 metres tall.'" in r.feedback


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to encode."""

    def __init__(self):
        from shared.embeddings import get_embedder

        self.inner = get_embedder()
        self.encoded: list[str] = []

    def encode(self, texts):
        self.encoded.extend(texts)
        return self.inner.encode(texts)

    @property
    def dimension(self):
        return self.inner.dimension


def test_sources_are_embedded_once_across_a_retry_loop():
    embedder = CountingEmbedder()
    v = ValidatorCore(ValidatorSettings(warm_up_models=False), embedder=embedder)
    first = check(v, "groundedness", GROUNDED + " " + INVENTED)
    n_first = len(embedder.encoded)
    assert n_first > 4 + len(SOURCES)  # the answer's sentences plus every source sentence and chunk
    retry = check(v, "groundedness", GROUNDED)  # the retry drops the invented sentence
    assert embedder.encoded[n_first:] == []  # every sentence and source already has a vector
    assert not first.passed and retry.passed
    reworded = check(v, "groundedness", GROUNDED.replace("stands on", "is on"))
    assert len(embedder.encoded) == n_first + 1 and reworded.passed  # only the changed sentence is new
    uncached = ValidatorCore(ValidatorSettings(warm_up_models=False, embedding_cache_size=0))
    assert check(uncached, "groundedness", GROUNDED + " " + INVENTED).evidence == first.evidence
