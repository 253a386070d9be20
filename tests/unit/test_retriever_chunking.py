"""Token-aware chunking with the embedding model's real tokenizer."""

from __future__ import annotations

import pytest

from services.retriever.chunking import Chunker, sections_of
from services.retriever.parsing import parse_html, parse_markdown, parse_plain
from shared.embeddings import get_embedder


@pytest.fixture(scope="module")
def tokenizer():
    return get_embedder().tokenizer


def ntokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


LONG_SECTION = " ".join(f"Step {i} tightens bolt number {i} on the frame." for i in range(60))
DOC = (
    "# Bicycle manual\n\n"
    "## Assembly\n\n"
    f"{LONG_SECTION}\n\n"
    "A closing paragraph for assembly.\n\n"
    "## Riding\n\n"
    "Check the brakes before every ride.\n\n"
    "### Night\n\n"
    "Use lights after dark.\n"
)


def test_chunks_respect_the_token_limit_and_map_exactly_to_the_source(tokenizer):
    parsed = parse_markdown(DOC)
    chunks = Chunker(tokenizer, 48, 8).chunk(parsed)
    assert len(chunks) > 5
    for i, c in enumerate(chunks):
        assert c.index == i
        assert DOC[c.start : c.end] == c.text
        assert c.tokens <= 48
        assert ntokens(tokenizer, c.text) <= 48
    # everything is covered: every word of the document is in some chunk
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(DOC) if not ch.isspace())


def test_chunks_follow_headings_and_carry_the_section_path(tokenizer):
    chunks = Chunker(tokenizer, 48, 8).chunk(parse_markdown(DOC))
    sections = [c.section for c in chunks]
    assert sections[0] == "Bicycle manual > Assembly"  # the title heading has no text of its own
    assert chunks[0].text.startswith("# Bicycle manual\n\n## Assembly")
    assert sections[-2:] == ["Bicycle manual > Riding", "Bicycle manual > Riding > Night"]
    assert chunks[-1].text == "### Night\n\nUse lights after dark."
    # no chunk straddles two sections
    for c in chunks:
        assert c.text.count("## ") <= 2


def test_cuts_prefer_sentence_ends_and_overlap_starts_on_a_sentence(tokenizer):
    chunks = Chunker(tokenizer, 48, 12).chunk(parse_markdown(DOC))
    body = [c for c in chunks if c.section == "Bicycle manual > Assembly"]
    assert len(body) >= 4
    for c in body[:-1]:
        assert c.text.endswith("frame."), c.text[-40:]
    for prev, nxt in zip(body, body[1:], strict=False):
        assert nxt.start < prev.end, "consecutive chunks of a section overlap"
        assert nxt.text.startswith("Step "), nxt.text[:30]
        shared = DOC[nxt.start : prev.end]
        assert 0 < ntokens(tokenizer, shared) <= 12


def test_zero_overlap_gives_disjoint_chunks(tokenizer):
    chunks = Chunker(tokenizer, 40, 0).chunk(parse_plain(LONG_SECTION))
    assert len(chunks) > 3
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt.start >= prev.end


def test_a_paragraph_without_any_break_is_split_on_words(tokenizer):
    text = " ".join(["supercalifragilistic"] * 200)
    chunks = Chunker(tokenizer, 32, 4).chunk(parse_plain(text))
    assert len(chunks) > 5
    for c in chunks:
        assert c.tokens <= 32
        assert c.text.startswith("super") and c.text.endswith("istic")


def test_html_sections_use_heading_text(tokenizer):
    src = "<h1>Guide</h1><p>Intro.</p><h2>Setup &amp; install</h2><p>Run the installer.</p>"
    parsed = parse_html(src)
    sections = [s.path for s in sections_of(parsed)]
    assert sections == ["Guide", "Guide > Setup & install"]
    chunks = Chunker(tokenizer, 64, 0).chunk(parsed)
    assert [c.section for c in chunks] == sections
    s, e = parsed.source_span(chunks[1].start, chunks[1].end)
    assert src[s:e] == "Setup &amp; install</h2><p>Run the installer."


def test_invalid_sizes_are_refused(tokenizer):
    with pytest.raises(ValueError):
        Chunker(tokenizer, 10, 10)
    with pytest.raises(ValueError):
        Chunker(tokenizer, 0, 0)
