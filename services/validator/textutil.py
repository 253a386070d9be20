"""Text helpers shared by the text checks: sentence spans, content words, normalisation."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    text: str


# Words that end with a period without ending a sentence.
_ABBREVIATIONS = {
    "e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "no", "fig", "approx",
    "inc", "ltd", "co", "corp", "u.s", "u.k", "a.m", "p.m", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "al",
}
_CITATION = r"(?:\s*\[\d+(?:\s*[,\-\u2013]\s*\d+)*\])*"
# A sentence ends at . ! or ? (plus closing quotes/brackets and trailing citations), before
# whitespace and the start of a new sentence; a line break always ends one.
_BOUNDARY = re.compile(r"[.!?]+[\"')\u201d\u2019]*" + _CITATION + r"(?=\s+[\"'(\[\u201c\u2018]?[A-Z0-9])|\n+")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def split_sentences(text: str) -> list[Span]:
    """Sentences of `text` with their character offsets (stripped of surrounding space and bullets)."""
    spans: list[Span] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if m.group(0)[0] == ".":
            word = _WORD_BEFORE.search(text[start : m.start()])
            if word:
                w = word.group(1).lower()
                if w in _ABBREVIATIONS:
                    continue
                if len(word.group(1)) == 1 and word.group(1).isupper():
                    continue  # an initial, as in "J. Smith"
        _append(spans, text, start, m.end())
        start = m.end()
    _append(spans, text, start, len(text))
    return spans


_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


def _append(spans: list[Span], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    bullet = _BULLET.match(piece)
    lead = bullet.end() if bullet else len(piece) - len(piece.lstrip())
    trail = len(piece.rstrip())
    if trail > lead:
        spans.append(Span(start + lead, start + trail, piece[lead:trail]))


CITATION_MARKER = re.compile(r"\[(\d+(?:\s*[,\-\u2013]\s*\d+)*)\]")


def strip_citations(text: str) -> str:
    """The text without [n] markers (and without the space they leave before punctuation)."""
    return re.sub(r"\s+([.,;:!?])", r"\1", " ".join(CITATION_MARKER.sub(" ", text).split()))


_STOPWORDS = set(
    """a an the and or but if then else of to in on at by for with from as is are was were be been being it its this
    that these those there here which who whom whose what when where why how not no nor so than too very can could
    will would shall should may might must do does did done has have had having i you he she we they me him her us
    them my your his our their mine yours about into over under again further once also just only such both each
    few more most other some any all own same up down out off above below between through during before after until
    while because per via yes""".split()
)
_TOKEN = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")


def _stem(word: str) -> str:
    if word[0].isdigit():
        return word
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)] + repl
    return word


def content_words(text: str) -> set[str]:
    """Lower-cased, lightly stemmed words that carry meaning (stop words dropped)."""
    words = _TOKEN.findall(normalize(strip_citations(text)))
    return {_stem(w.replace(",", "")) for w in words if w not in _STOPWORDS and (len(w) > 1 or w.isdigit())}


_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")


_NUMBER_WORDS = {
    w: str(i) for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}


def numbers(text: str, words: bool = False) -> set[str]:
    """Numbers written in `text` (citation markers excluded), thousands separators removed;
    with `words`, also "three" as "3" and so on up to twenty."""
    clean = strip_citations(text)
    found = {n.replace(",", "").rstrip(".") for n in _NUMBER.findall(clean)}
    if words:
        found |= {_NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", clean.lower()) if w in _NUMBER_WORDS}
    return found


def normalize(text: str) -> str:
    """NFKC + case folding: full-width letters, ligatures and case do not hide a term."""
    return unicodedata.normalize("NFKC", text).casefold()


# Characters that render as nothing and can hide a term ("ba\u200bd").
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"}


@dataclass(frozen=True)
class View:
    """A transformed copy of a text that remembers, for each of its characters, where it came from."""

    text: str
    origin: list[int]  # origin[i] = index in the source text of view char i
    source_len: int

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Source offsets of view[start:end]."""
        if end <= start:
            pos = self.origin[start] if start < len(self.origin) else self.source_len
            return pos, pos
        return self.origin[start], self.origin[end - 1] + 1


def normalized_view(text: str) -> View:
    """NFKC + case folding, invisible characters dropped, offsets kept."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if ch in _INVISIBLE:
            continue
        norm = unicodedata.normalize("NFKC", ch).casefold() if not ch.isascii() else ch.lower()
        for c in norm:
            out.append(c)
            origin.append(i)
    return View("".join(out), origin, len(text))


# Three or more single characters separated by single spaces: "j o h n", "4 1 1 1".
_SPACED_SINGLES = re.compile(r"(?<!\S)\S(?: \S(?!\S)){2,}")


def despaced_view(view: View) -> View:
    """Collapse runs of spaced-out single characters ("j o h n" -> "john") in a view."""
    out: list[str] = []
    origin: list[int] = []
    pos = 0
    for m in _SPACED_SINGLES.finditer(view.text):
        out.extend(view.text[pos : m.start()])
        origin.extend(view.origin[pos : m.start()])
        for k in range(m.start(), m.end()):
            if view.text[k] != " ":
                out.append(view.text[k])
                origin.append(view.origin[k])
        pos = m.end()
    out.extend(view.text[pos:])
    origin.extend(view.origin[pos:])
    return View("".join(out), origin, view.source_len)
