"""Token-aware chunking that follows headings and paragraphs and keeps character offsets.

A document is first cut into sections at its headings (a heading with no text of its own stays
with the next one). Each section is tokenised with the embedding model's tokenizer; chunks hold at
most `size` tokens and are cut, in order of preference, where a paragraph, a sentence, a line or a
word starts. Consecutive chunks of one section share about `overlap` tokens (starting on a word).
A chunk never crosses a section boundary (nor a PDF page break), so its section path (and page)
describes all of it.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from services.retriever.parsing import ParsedText

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")
_LINE_END = re.compile(r"\n\s*")


@dataclass
class Chunk:
    index: int
    # offsets into ParsedText.text
    start: int
    end: int
    text: str
    # heading path, e.g. "Install > Linux"
    section: str
    tokens: int


@dataclass
class _Section:
    start: int
    end: int
    path: str
    has_body: bool
    block_starts: list[int] = field(default_factory=list)


def sections_of(parsed: ParsedText) -> list[_Section]:
    sections: list[_Section] = []
    stack: list[tuple[int, str]] = []
    current: _Section | None = None
    page = 0
    for block in parsed.blocks:
        # a page break ends a section too, so that every chunk of a PDF lies on one page
        block_page = parsed.page_at(block.start)
        if block_page != page:
            page = block_page
            if current is not None and current.has_body:
                sections.append(current)
                current = None
        if block.heading_level:
            if current is not None and current.has_body:
                sections.append(current)
                current = None
            while stack and stack[-1][0] >= block.heading_level:
                stack.pop()
            stack.append((block.heading_level, block.title))
            path = " > ".join(title for _, title in stack if title)
            if current is None:
                current = _Section(block.start, block.end, path, False, [block.start])
            else:  # consecutive headings: the section takes the deepest path
                current.end, current.path = block.end, path
                current.block_starts.append(block.start)
        else:
            if current is None:
                path = " > ".join(title for _, title in stack if title)
                current = _Section(block.start, block.end, path, True, [block.start])
            else:
                current.end, current.has_body = block.end, True
                current.block_starts.append(block.start)
    if current is not None:
        sections.append(current)
    return sections


class Chunker:
    def __init__(self, tokenizer, size: int, overlap: int):
        if size < 1 or not 0 <= overlap < size:
            raise ValueError(f"need size >= 1 and 0 <= overlap < size (got size={size}, overlap={overlap})")
        self.tokenizer = tokenizer
        self.size = size
        self.overlap = overlap

    def chunk(self, parsed: ParsedText) -> list[Chunk]:
        chunks: list[Chunk] = []
        for section in sections_of(parsed):
            for start, end, ntok in self._split(parsed.text, section):
                chunks.append(Chunk(len(chunks), start, end, parsed.text[start:end], section.path, ntok))
        return chunks

    def _split(self, text: str, section: _Section) -> list[tuple[int, int, int]]:
        body = text[section.start : section.end]
        enc = self.tokenizer(body, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        spans = [(section.start + a, section.start + b) for a, b in enc["offset_mapping"] if b > a]
        n = len(spans)
        if n == 0:
            return [(section.start, section.end, 0)]
        if n <= self.size:
            return [(spans[0][0], spans[-1][1], n)]

        starts = [a for a, _ in spans]

        def token_at(char_pos: int) -> int:
            """Index of the first token starting at or after char_pos."""
            return bisect.bisect_left(starts, char_pos)

        def positions(pattern: re.Pattern) -> list[int]:
            return sorted({token_at(section.start + m.end()) for m in pattern.finditer(body)} - {0, n})

        paragraphs = sorted({token_at(p) for p in section.block_starts} - {0, n})
        sentences = positions(_SENTENCE_END)
        lines = positions(_LINE_END)
        words = [i for i in range(1, n) if text[starts[i] - 1].isspace()]

        def last_in(candidates: list[int], low: int, high: int) -> int | None:
            i = bisect.bisect_right(candidates, high) - 1
            return candidates[i] if i >= 0 and candidates[i] > low else None

        out = []
        s = 0
        while s < n:
            if n - s <= self.size:
                out.append((spans[s][0], spans[n - 1][1], n - s))
                break
            high = s + self.size
            cut = (
                last_in(paragraphs, s + self.size // 3, high)
                or last_in(sentences, s + self.size // 2, high)
                or last_in(lines, s + self.size // 2, high)
                or last_in(words, s + self.size // 2, high)
                or high
            )
            out.append((spans[s][0], spans[cut - 1][1], cut - s))
            nxt = cut
            if self.overlap:
                # start the overlap on a sentence if that keeps at least half of it, else on a word
                i = bisect.bisect_left(sentences, cut - self.overlap)
                j = bisect.bisect_left(words, cut - self.overlap)
                if i < len(sentences) and sentences[i] <= cut - max(1, self.overlap // 2):
                    nxt = sentences[i]
                elif j < len(words) and words[j] < cut:
                    nxt = words[j]
            s = nxt if nxt > s else cut
        return out
