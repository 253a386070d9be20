"""RAG checks: groundedness of each sentence in the sources, and citations that point at real sources.

Groundedness judges every sentence of the answer on its own. Its support is a weighted mix of
(a) the highest cosine similarity between the sentence and any source sentence or whole chunk,
with the embedding model (all-MiniLM-L6-v2 by default), and (b) lexical overlap: the share of the
sentence's content words (stop words dropped, lightly stemmed) that occur in the sources. A
sentence whose support is below the threshold is unsupported. A number the sentence states that
no source contains ("450 metres" when the sources say 330) also makes it unsupported: embeddings
barely see the difference between two numbers.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from services.validator.checks.base import Params, Subject, check, quote
from services.validator.datatypes import CheckOutcome, Evidence
from services.validator.textutil import (
    CITATION_MARKER,
    content_words,
    numbers,
    split_sentences,
    strip_citations,
)


def source_range(n: int) -> str:
    return "[1]" if n == 1 else f"[1]..[{n}]"


# -- groundedness -----------------------------------------------------------------------------


class GroundednessParams(Params):
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Least support a sentence needs")
    embedding_weight: float = Field(
        0.6, ge=0.0, le=1.0, description="Weight of embedding similarity in the support (the rest: lexical overlap)"
    )
    check_numbers: bool = Field(True, description="A number that appears in no source makes a sentence unsupported")
    min_content_words: int = Field(
        3, ge=0, le=50, description="Sentences with fewer content words ('Sure.', 'In short:') are not judged"
    )
    min_supported_fraction: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of judged sentences that must be supported for the check to pass"
    )


def _source_units(s: Subject) -> tuple[list[str], list[int]]:
    """Every source sentence and every whole chunk, with the (1-based) source each comes from."""
    units: list[str] = []
    owner: list[int] = []
    for i, src in enumerate(s.context.sources, start=1):
        sentences = split_sentences(src.text)
        for sp in sentences:
            units.append(sp.text)
            owner.append(i)
        if len(sentences) != 1:
            units.append(src.text)
            owner.append(i)
    return units, owner


@check("groundedness", kinds=("text",), params=GroundednessParams,
       description="Each sentence of the answer is supported by some source chunk (embedding similarity and "
       "lexical overlap; numbers must appear in a source); unsupported sentences are reported", needs_sources=True)
def groundedness(p: GroundednessParams, s: Subject) -> CheckOutcome:
    sentences = [sp for sp in split_sentences(s.text) if len(content_words(sp.text)) >= max(1, p.min_content_words)]
    n_sources = len(s.context.sources)
    if not sentences:
        return CheckOutcome(True, 1.0, "no sentence with enough content words to judge")
    units, owner = _source_units(s)
    vectors = s.resources.embed([strip_citations(sp.text) for sp in sentences] + units)
    answer_vecs, unit_vecs = vectors[: len(sentences)], vectors[len(sentences) :]
    sims = answer_vecs @ unit_vecs.T  # unit-length rows: cosine similarity
    source_words: set[str] = set()
    source_numbers: set[str] = set()
    for src in s.context.sources:
        source_words |= content_words(src.text)
        source_numbers |= numbers(src.text, words=True)

    evidence: list[Evidence] = []
    feedback: list[str] = []
    supported = 0
    for k, sp in enumerate(sentences):
        best = int(np.argmax(sims[k]))
        cosine = float(sims[k, best])
        words = content_words(sp.text)
        lexical = len(words & source_words) / len(words)
        support = p.embedding_weight * cosine + (1 - p.embedding_weight) * lexical
        missing = sorted(numbers(sp.text) - source_numbers) if p.check_numbers else []
        if support >= p.threshold and not missing:
            supported += 1
            continue
        if missing:
            nums = ", ".join(missing)
            evidence.append(Evidence("unsupported_number", sp.text, "artifact", sp.start, sp.end, support))
            feedback.append(f"The sentence {quote(sp.text)} states {nums}, which no source gives: use the "
                            f"figures in sources {source_range(n_sources)} or remove the sentence.")
        else:
            evidence.append(Evidence("unsupported_sentence", sp.text, "artifact", sp.start, sp.end, support))
            feedback.append(f"Remove the sentence {quote(sp.text)}, which is not supported by the sources, or "
                            f"rewrite it using only facts stated in sources {source_range(n_sources)}.")
    fraction = supported / len(sentences)
    passed = fraction >= p.min_supported_fraction and (p.min_supported_fraction < 1.0 or not evidence)
    summary = f"{supported} of {len(sentences)} sentence(s) supported by the {n_sources} source(s)"
    if evidence:
        worst = min(evidence, key=lambda e: e.value)
        why = f"support {worst.value:.2f} < {p.threshold}" if worst.kind == "unsupported_sentence" else (
            "number not in sources")
        summary += f"; unsupported: {quote(worst.text, 100)} ({why})"
        if len(evidence) > 1:
            summary += f" and {len(evidence) - 1} more"
    return CheckOutcome(passed, fraction, summary, evidence, " ".join(feedback) if not passed else "")


# -- citations --------------------------------------------------------------------------------


class CitationsParams(Params):
    required: bool = Field(True, description="At least one [n] citation must be present")
    every_sentence: bool = Field(
        False, description="Every sentence with content must carry a citation (not only the answer as a whole)"
    )
    min_content_words: int = Field(3, ge=0, le=50, description="Sentences shorter than this need no citation")


def _cited_numbers(marker_body: str) -> list[int]:
    out: list[int] = []
    for part in marker_body.replace("\u2013", "-").split(","):
        part = part.strip()
        if "-" in part:
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi)
            out.extend(range(a, b + 1) if 0 <= b - a <= 100 else [a, b])
        elif part:
            out.append(int(part))
    return out


@check("citations", kinds=("text",), params=CitationsParams,
       description="Every [n] citation refers to a given source (1..number of sources); at least one when required",
       needs_sources=True)
def citations(p: CitationsParams, s: Subject) -> CheckOutcome:
    n = len(s.context.sources)
    markers = list(CITATION_MARKER.finditer(s.text))
    evidence: list[Evidence] = []
    bad_numbers: list[int] = []
    cited: set[int] = set()
    for m in markers:
        for num in _cited_numbers(m.group(1)):
            if 1 <= num <= n:
                cited.add(num)
            else:
                bad_numbers.append(num)
                evidence.append(Evidence("unknown_source", m.group(0), "artifact", m.start(), m.end(), float(num)))
    feedback: list[str] = []
    problems: list[str] = []
    if bad_numbers:
        listed = ", ".join(f"[{b}]" for b in sorted(set(bad_numbers)))
        problems.append(f"citation(s) {listed} refer to no source (there are {n})")
        verb = "does" if len(set(bad_numbers)) == 1 else "do"
        feedback.append(f"Cite only sources {source_range(n)}; {listed} {verb} not exist.")
    if p.required and not markers:
        problems.append("no citation")
        feedback.append(f"Cite the sources you use with [n] markers after each claim, e.g. '... [1].'; "
                        f"sources {source_range(n)} are available.")
    if p.every_sentence:
        for sp in split_sentences(s.text):
            if len(content_words(sp.text)) >= max(1, p.min_content_words) and not CITATION_MARKER.search(sp.text):
                evidence.append(Evidence("uncited_sentence", sp.text, "artifact", sp.start, sp.end))
                feedback.append(f"Add a citation [n] to the sentence {quote(sp.text)}.")
        uncited = sum(1 for e in evidence if e.kind == "uncited_sentence")
        if uncited:
            problems.append(f"{uncited} sentence(s) without a citation")
    total_markers = max(1, sum(len(_cited_numbers(m.group(1))) for m in markers))
    if problems:
        score = 0.0 if not markers else max(0.0, 1.0 - len(bad_numbers) / total_markers) * (
            0.5 if any(e.kind == "uncited_sentence" for e in evidence) else 1.0)
        return CheckOutcome(False, min(score, 0.99), "; ".join(problems), evidence, " ".join(feedback))
    if not markers:
        return CheckOutcome(True, 1.0, "no citations (none required)")
    listed = ", ".join(f"[{c}]" for c in sorted(cited))
    return CheckOutcome(True, 1.0, f"{len(markers)} citation(s), all to existing sources ({listed} of {n})")
