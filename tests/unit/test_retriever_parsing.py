"""Parsing documents into text + blocks, with offsets that lead back to the source."""

from __future__ import annotations

import pytest

from services.retriever.parsing import (
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    ParseError,
    normalize_content_type,
    parse,
    parse_html,
    parse_markdown,
    parse_pdf,
    parse_plain,
)


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF whose pages hold the given lines in Helvetica (no PDF writer needed)."""
    objects: list[bytes] = []
    n_pages = len(pages)
    font_id = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, lines in enumerate(pages):
        ops = ["BT /F1 12 Tf 72 720 Td 14 TL"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for num, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{num} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def texts(parsed):
    return [(parsed.text[b.start : b.end], b.heading_level) for b in parsed.blocks]


def test_content_types_are_normalised_and_unknown_ones_rejected():
    assert normalize_content_type("") == (PLAIN, {})
    assert normalize_content_type("Text/HTML; charset=ISO-8859-1") == (HTML, {"charset": "iso-8859-1"})
    assert normalize_content_type("text/x-markdown")[0] == MARKDOWN
    assert normalize_content_type("application/pdf")[0] == PDF
    assert normalize_content_type("image/png")[0] == ""
    assert normalize_content_type("application/msword")[0] == ""


def test_plain_text_paragraphs_are_blocks_and_offsets_are_the_text():
    src = "  First paragraph\nstill first.\n\n\n  Second one.  \n \nThird"
    p = parse_plain(src)
    assert texts(p) == [("First paragraph\nstill first.", 0), ("Second one.", 0), ("Third", 0)]
    for b in p.blocks:
        assert p.source_span(b.start, b.end) == (b.start, b.end)


def test_markdown_headings_paragraphs_and_code_fences():
    src = "# Title\n\nIntro text\nwrapped.\n\nSetext\n------\n\n- a\n- b\n\n```\n# not a heading\n```\n\n## Deeper ##\n"
    p = parse_markdown(src)
    got = texts(p)
    assert got[0] == ("# Title", 1)
    assert got[1] == ("Intro text\nwrapped.", 0)
    assert got[2] == ("Setext\n------", 2)
    assert ("```\n# not a heading\n```", 0) in got
    assert got[-1] == ("## Deeper ##", 2)
    titles = [b.title for b in p.blocks if b.heading_level]
    assert titles == ["Title", "Setext", "Deeper"]


def test_html_text_maps_back_to_its_source_span():
    src = (
        "<html><head><title>x</title><style>p {color: red}</style><script>var a = '<p>no</p>';</script></head>"
        "<body><h1>Caf&eacute; &amp; Bar</h1><p>Hello   <b>bold</b>\n world.<br>Next line</p>"
        "<ul><li>one</li><li>two</li></ul><pre>keep\n   spacing</pre></body></html>"
    )
    p = parse_html(src)
    got = texts(p)
    assert got[0] == ("Café & Bar", 1)
    assert got[1] == ("Hello bold world.\nNext line", 0)
    assert ("one", 0) in got and ("two", 0) in got
    assert got[-1] == ("keep\n   spacing", 0)
    assert "color" not in p.text and "var a" not in p.text and "no" not in p.text.split()
    head = p.blocks[0]
    s, e = p.source_span(head.start, head.end)
    assert src[s:e] == "Caf&eacute; &amp; Bar"  # the span covers the whole entity at the end
    para = p.blocks[1]
    s, e = p.source_span(para.start, para.end)
    assert src[s:e] == "Hello   <b>bold</b>\n world.<br>Next line"
    assert p.blocks[0].title == "Café & Bar"


def test_pdf_pages_are_extracted_in_order_with_page_numbers():
    data = make_pdf([["Alpha page one.", "More of page one."], ["Beta on page two."]])
    p = parse_pdf(data)
    assert "Alpha page one." in p.text and "Beta on page two." in p.text
    assert p.text.index("Alpha") < p.text.index("Beta")
    assert p.page_at(p.text.index("Alpha")) == 1
    assert p.page_at(p.text.index("Beta")) == 2
    assert p.blocks and all(b.end <= len(p.text) for b in p.blocks)


def test_unreadable_content_raises_parse_error():
    with pytest.raises(ParseError, match="not a readable PDF"):
        parse(PDF, None, b"%PDF-1.4 this is not really a pdf")
    with pytest.raises(ParseError, match="needs the raw bytes"):
        parse(PDF, "text", None)
    with pytest.raises(ParseError, match="not valid utf-8"):
        parse(PLAIN, None, b"\xff\xfe\xfa", {})
    with pytest.raises(ParseError, match="unknown charset"):
        parse(PLAIN, None, b"abc", {"charset": "no-such-charset"})
    assert parse(PLAIN, None, "caf\u00e9".encode("latin-1"), {"charset": "latin-1"}).text == "café"
