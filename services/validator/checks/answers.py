"""Does the answer answer the question? A check on what an answer adds, not only on what it cites.

A grounded, cited sentence can still say nothing: "The shutil function deletes an entire directory
tree [1]." restates the question ("Which shutil function deletes an entire directory tree?") with
every word supported. `answers_question` asks two things instead:

- an answer must carry at least one term that is in a source it cites (any source when it cites
  none) and not in the question, leaving aside words that name no fact (function, default, value,
  ...). A restatement fails, and its feedback says what kind of fact is missing ("the name", "the
  number") and which source looks like it holds it;
- a refusal ("The sources do not contain the answer.") fails when one of the top sources has a
  passage that holds the question's key terms together with a term the question lacks (a candidate
  answer span); the feedback quotes that passage and names its source number;
- when several of the question's key terms appear in no source at all ("PostgreSQL",
  "shared_buffers" over SQLite's documentation), the sources are off the question's subject: any
  answer fails (it cannot come from them) and the refusal passes.
"""

from __future__ import annotations

import re

from pydantic import Field

from services.validator.checks.base import Params, Subject, check, quote
from services.validator.datatypes import CheckOutcome, Evidence
from services.validator.textutil import CITATION_MARKER, normalize, split_sentences, strip_citations

REFUSAL_TEXT = "The sources do not contain the answer."
# Phrases with which a small model says that the sources lack the answer.
REFUSAL = re.compile(
    r"(do(?:es)? not (?:contain|include|mention|say|provide|specify|state)|not (?:in|found in|given in|stated in) "
    r"the (?:sources|context|passages)|no (?:information|mention) (?:about|of|on)|cannot (?:find|answer|determine)|"
    r"can't (?:find|answer)|unable to (?:find|answer|determine)|there is no information)",
    re.IGNORECASE,
)

_STOP = frozenset(
    """a an the and or but if then else of to in on at by for with from as is are was were be been being it its this
    that these those there here which who whom whose what when where why how not no nor so than too very can could
    will would shall should may might must do does did done has have had having i you he she we they me him her us
    them my your his our their about into over under again further once also just only such both each few more most
    other some any all own same up down out off above below between through during before after until while because
    per via yes neither either answer answers source sources according stated states say says given provided context
    passage""".split()
)
# Words that frame a question or an answer without being the fact asked for.
_GENERIC = frozenset(
    """function functions method methods class classes module modules option options setting settings value values
    default defaults parameter parameters argument arguments command commands name names named called call use uses
    used using return returns returned set sets number numbers type types kind way ways thing things following
    specific specified particular version versions release released feature features support supported supports
    allow allows allowed make makes made provide provides mean means called known refer refers maximum minimum max
    min limit limits largest smallest total level levels many much one""".split()
)
_TERM = re.compile(r"[a-z0-9]+(?:[._:@/{}\-][a-z0-9{}]+)*")


def _stem(word: str) -> str:
    """A light stemmer that maps store/stores/stored/storing to one form."""
    if word[0].isdigit() or not word.isalpha():
        return word
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)] + repl
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def terms(text: str) -> set[str]:
    """Meaningful terms: lower-cased, lightly stemmed words and whole identifiers ("sqlite_stat1",
    "3.8.0"), plus the parts of each identifier, stop words dropped."""
    out: set[str] = set()
    for tok in _TERM.findall(normalize(strip_citations(text))):
        tok = tok.strip("._:-/")
        if not tok:
            continue
        parts = [tok] + ([p for p in re.split(r"[._:@/{}\-]+", tok) if p] if not re.fullmatch(r"[\d.]+", tok) else [])
        for p in parts:
            if p in _STOP or (len(p) < 2 and not p.isdigit()):
                continue
            out.add(_stem(p))
    return out


def is_refusal(text: str) -> bool:
    return bool(REFUSAL.search(text))


def _ask(question: str) -> str:
    """What kind of fact the question asks for, in words for feedback."""
    q = question.lower()
    if re.search(r"\bhow (many|much|long|large|big|old|often)\b|\bwhat (number|size|percentage)\b", q):
        return "the number (with its unit) that the question asks for"
    if re.search(r"\b(which|what) (version|release|year)\b|\bsince (which|what)\b|\bwhen\b", q):
        return "the version, release or date"
    m = re.search(r"\b(?:which|what)\s+([a-z_][\w-]*)", q)
    if m and m.group(1) not in {"is", "are", "was", "does", "do", "did", "the", "a", "an"}:
        return f"the name of the {m.group(1)}"
    if "default" in q:
        return "the default value itself"
    return "the specific fact the question asks for"


def _choices(question: str) -> set[str]:
    """Terms a question offers to choose from: the words on each side of 'or' / 'nor'."""
    out: set[str] = set()
    for m in re.finditer(r"([\w.:-]+)\s+n?or\s+([\w.:-]+)", question):
        out |= terms(m.group(1)) | terms(m.group(2))
    return out - _GENERIC


def _cited(text: str, n: int) -> list[int]:
    found: list[int] = []
    for m in CITATION_MARKER.finditer(text):
        for part in re.split(r"\s*,\s*", m.group(1)):
            lo, _, hi = part.partition("-")
            for k in range(int(lo), int(hi or lo) + 1):
                if 1 <= k <= n and k not in found:
                    found.append(k)
    return found


WANTS_NUMBER = re.compile(r"\bhow (many|much|long|large|big|old|often)\b|\b(number|size|maximum|minimum|limit|"
                          r"version|release|year|port|permissions)\b", re.IGNORECASE)
NUMBER_BONUS = 0.1


def candidate_span(question: str, source: str, min_coverage: float, window: int = 2) -> tuple[float, str, set[str]]:
    """The passage of `source` (up to `window` consecutive sentences) that best covers the question's
    key terms and adds a term of its own: (coverage, passage, new terms); coverage 0 when none adds one."""
    key = terms(question) - _GENERIC
    if not key:
        return 0.0, "", set()
    sentences = [sp.text for sp in split_sentences(source)] or [source]
    # a question after a quantity is answered by a passage with a number: such a passage wins over
    # one that covers a little more of the question without one (a heading and its first sentence)
    bonus = NUMBER_BONUS if WANTS_NUMBER.search(question) else 0.0
    best, rank = (0.0, "", set()), 0.0
    for i in range(len(sentences)):
        for j in range(i + 1, min(len(sentences), i + window) + 1):
            passage = " ".join(sentences[i:j])
            if len(passage) > 1200:
                break
            found = terms(passage)
            coverage = len(key & found) / len(key)
            new = found - terms(question) - _GENERIC
            score = coverage + (bonus if any(t[0].isdigit() for t in new) else 0.0)
            if new and score > rank + 1e-9:
                best, rank = (coverage, passage, new), score
    return best if best[0] >= min_coverage else (best[0], "", set())


def absent_terms(question: str, sources) -> tuple[set[str], set[str]]:
    """The question's key terms, and those of them that no source mentions in any form."""
    key = terms(question) - _GENERIC
    present: set[str] = set()
    for src in sources:
        present |= terms(src.text)
    return key, key - present


class AnswersQuestionParams(Params):
    min_new_terms: int = Field(
        1, ge=1, le=20, description="Terms from a cited source that an answer must add to the question's own"
    )
    check_refusals: bool = Field(True, description="A refusal fails when a top source holds a candidate answer")
    top_sources: int = Field(3, ge=1, le=50, description="How many of the first sources a refusal is checked against")
    min_coverage: float = Field(
        0.75, ge=0.0, le=1.0,
        description="Share of the question's key terms a source passage must hold to count as a candidate answer",
    )
    off_subject_terms: int = Field(
        2, ge=0, le=20,
        description="The sources are off the question's subject when at least this many of its key terms (and "
        "off_subject_share of them) appear in none of them: an answer then fails and a refusal passes (0: off)",
    )
    off_subject_share: float = Field(0.3, ge=0.0, le=1.0,
                                     description="Share of the question's key terms that no source mentions, with "
                                     "off_subject_terms, for the sources to be off the question's subject")


@check("answers_question", kinds=("text",), params=AnswersQuestionParams,
       description="The answer adds a fact from a cited source that the question does not already state (a "
       "restatement fails); a refusal fails when a top source holds the question's key terms and a candidate "
       "answer span; when the sources never mention several of the question's key terms, an answer fails and "
       "the refusal passes", needs_sources=True)
def answers_question(p: AnswersQuestionParams, s: Subject) -> CheckOutcome:
    question = s.context.request
    sources = s.context.sources
    if not question.strip():
        return CheckOutcome(True, 1.0, "no question in context.request; nothing to compare the answer with")
    key, absent = absent_terms(question, sources)
    off_subject = bool(p.off_subject_terms) and len(absent) >= max(p.off_subject_terms, p.off_subject_share * len(key))
    missing = ", ".join(sorted(absent)[:6])
    if is_refusal(s.text) and off_subject:
        return CheckOutcome(True, 1.0, f"refusal; no source mentions {len(absent)} of the question's {len(key)} key "
                            f"terms ({missing})")
    if off_subject:
        evidence = [Evidence("off_subject", missing, "sources", 0, 0, len(absent) / len(key))]
        feedback = (f"No source mentions {missing}, which the question asks about, so the sources do not hold its "
                    f"answer. Reply exactly: {REFUSAL_TEXT}")
        return CheckOutcome(False, 0.0, f"the sources never mention {len(absent)} of the question's {len(key)} key "
                            f"terms ({missing}): the answer cannot come from them", evidence, feedback)
    spans = [candidate_span(question, src.text, p.min_coverage) for src in sources[: p.top_sources]]
    best_i = max(range(len(spans)), key=lambda i: spans[i][0]) if spans else -1
    has_candidate = best_i >= 0 and bool(spans[best_i][1])

    if is_refusal(s.text):
        if not p.check_refusals or not has_candidate:
            return CheckOutcome(True, 1.0, f"refusal; none of the top {min(p.top_sources, len(sources))} source(s) "
                                "holds the question's key terms with a candidate answer")
        coverage, passage, _new = spans[best_i]
        n = best_i + 1
        evidence = [Evidence("candidate_answer", passage, f"source {n}", 0, 0, coverage)]
        feedback = (f"Source [{n}] appears to contain the answer: {quote(passage, 300)}. Answer the question from "
                    f"source [{n}] with {_ask(question)}, citing [{n}], instead of saying the sources lack it.")
        return CheckOutcome(False, 0.0, f"refusal, but source [{n}] holds {coverage:.0%} of the question's key terms "
                            f"and a candidate answer: {quote(passage, 100)}", evidence, feedback)

    cited = _cited(s.text, len(sources)) or list(range(1, len(sources) + 1))
    source_terms: set[str] = set()
    for k in cited:
        source_terms |= terms(sources[k - 1].text)
    answer_terms = terms(s.text)
    added = (answer_terms - terms(question) - _GENERIC) & source_terms
    # a choice question ("VIRTUAL or STORED?") is answered by naming one of the choices it offers
    offered = _choices(question)
    if len(offered) >= 2 and 1 <= len(offered & answer_terms) < len(offered):
        added |= (offered & answer_terms) & source_terms
    if len(added) >= p.min_new_terms:
        shown = ", ".join(sorted(added)[:8])
        return CheckOutcome(True, 1.0,
                            f"adds {len(added)} term(s) from the cited source(s) not in the question: {shown}")
    where = f" Source [{best_i + 1}] looks like it holds it: {quote(spans[best_i][1], 240)}." if has_candidate else ""
    evidence = [Evidence("restatement", strip_citations(s.text), "artifact", 0, len(s.text), 0.0)]
    if has_candidate:
        evidence.append(Evidence("candidate_answer", spans[best_i][1], f"source {best_i + 1}", 0, 0, spans[best_i][0]))
    feedback = (f"The answer {quote(s.text)} only restates the question and is missing {_ask(question)}.{where} "
                "Reply with that fact first, in one short sentence that cites its source.")
    return CheckOutcome(False, 0.0, "restates the question: no term from the cited source(s) beyond the question's own",
                        evidence, feedback)
