"""Turning a document (plain text, Markdown, HTML, PDF) into text plus its block structure.

The chunker works on `ParsedText.text` and the blocks (headings and paragraphs) found in it.
Offsets reported to users refer to the source: for plain text and Markdown the parsed text *is*
the source; for HTML every character of the extracted text remembers where it came from in the
HTML; for PDF the reference is the extracted text (pages joined by blank lines).

HTML reference pages keep their definition structure: a definition term (`<dt>`, or a paragraph
that is nothing but a short bold or code run, as in "<p><b>SQLITE_DEFAULT_PAGE_SIZE=N</b></p>
<blockquote>...") becomes a minor heading (level TERM_LEVEL) under the page's headings, so the
chunker keeps each term with its definition and the term names the chunk's section.
"""

from __future__ import annotations

import bisect
import html
import io
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

PLAIN = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"

# Accepted MIME types (lower case, parameters stripped) and what they are parsed as.
CONTENT_TYPES: dict[str, str] = {
    PLAIN: PLAIN,
    MARKDOWN: MARKDOWN,
    "text/x-markdown": MARKDOWN,
    HTML: HTML,
    "application/xhtml+xml": HTML,
    PDF: PDF,
}
SUPPORTED = f"{PLAIN}, {MARKDOWN}, {HTML} or {PDF}"


class ParseError(ValueError):
    """The content cannot be read as its declared type; the message says why."""


@dataclass
class Block:
    """A run of parsed text: a heading (level 1-6) or body text (level 0)."""

    start: int
    end: int
    heading_level: int = 0
    # a heading's own words (without Markdown's '#' or underline), for section paths
    title: str = ""


@dataclass
class ParsedText:
    text: str
    blocks: list[Block]
    # source span [start, end) of every character of `text`; None means the text is the source
    source_starts: list[int] | None = None
    source_ends: list[int] | None = None
    # offsets in `text` where PDF pages start
    page_starts: list[int] | None = None
    content_type: str = PLAIN
    source_length: int = field(default=0)

    def source_span(self, start: int, end: int) -> tuple[int, int]:
        if self.source_starts is None or self.source_ends is None:
            return start, end
        if end <= start:
            at = self.source_starts[start] if start < len(self.source_starts) else self.source_length
            return at, at
        return self.source_starts[start], self.source_ends[end - 1]

    def page_at(self, offset: int) -> int:
        if not self.page_starts:
            return 0
        return bisect.bisect_right(self.page_starts, offset)


def normalize_content_type(value: str) -> tuple[str, dict[str, str]]:
    """("text/html", {"charset": "utf-8"}) from "Text/HTML; charset=UTF-8"; ("", {}) for an unknown type."""
    raw = (value or PLAIN).strip()
    mime, _, rest = raw.partition(";")
    params = {}
    for part in rest.split(";"):
        if "=" in part:
            k, _, v = part.partition("=")
            params[k.strip().lower()] = v.strip().strip('"').lower()
    return CONTENT_TYPES.get(mime.strip().lower(), ""), params


def decode_text(data: bytes, params: dict[str, str]) -> str:
    charset = params.get("charset", "utf-8")
    try:
        return data.decode(charset)
    except LookupError:
        raise ParseError(f"unknown charset {charset!r}") from None
    except UnicodeDecodeError as exc:
        raise ParseError(f"bytes are not valid {charset}: {exc.reason} at byte {exc.start}") from None


def parse(content_type: str, text: str | None, data: bytes | None, params: dict[str, str] | None = None) -> ParsedText:
    """Parse one document. `content_type` is a normalised type from CONTENT_TYPES' values."""
    params = params or {}
    if content_type == PDF:
        if data is None:
            raise ParseError("application/pdf needs the raw bytes in `data`, not `text`")
        return parse_pdf(data)
    if text is None:
        text = decode_text(data or b"", params)
    if content_type == MARKDOWN:
        return parse_markdown(text)
    if content_type == HTML:
        return parse_html(text)
    return parse_plain(text)


# -- plain text ----------------------------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def paragraph_blocks(text: str, start: int = 0, end: int | None = None) -> list[Block]:
    """Blocks separated by blank lines inside text[start:end], trimmed of surrounding whitespace."""
    end = len(text) if end is None else end
    blocks = []
    pos = start
    for m in _PARAGRAPH_BREAK.finditer(text, start, end):
        blocks.extend(_trimmed(text, pos, m.start()))
        pos = m.end()
    blocks.extend(_trimmed(text, pos, end))
    return blocks


def _trimmed(text: str, start: int, end: int) -> list[Block]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [Block(start, end)] if end > start else []


def parse_plain(text: str) -> ParsedText:
    return ParsedText(text, paragraph_blocks(text), content_type=PLAIN, source_length=len(text))


# -- Markdown (CommonMark block structure via markdown-it-py) --------------------------------------

_MD_BLOCK_TOKENS = {"paragraph_open", "heading_open", "fence", "code_block", "html_block", "table_open", "hr"}


def parse_markdown(text: str) -> ParsedText:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    line_starts.append(len(text))

    def offset(line: int) -> int:
        return line_starts[min(line, len(line_starts) - 1)]

    blocks: list[Block] = []
    for i, tok in enumerate(tokens):
        if tok.type not in _MD_BLOCK_TOKENS or not tok.map:
            continue
        first, last = tok.map
        spans = _trimmed(text, offset(first), offset(last))
        if not spans:
            continue
        if tok.type == "heading_open" and tok.level == 0:
            title = tokens[i + 1].content.strip() if i + 1 < len(tokens) else ""
            blocks.append(Block(spans[0].start, spans[0].end, int(tok.tag[1]), title))
        else:
            blocks.append(Block(spans[0].start, spans[0].end))
    # markdown-it reports blocks in document order and they do not nest for the types above
    return ParsedText(text, blocks, content_type=MARKDOWN, source_length=len(text))


# -- HTML (stdlib parser, keeping a source offset for every extracted character) --------------------

_BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "dialog", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
    "section", "summary", "table", "tbody", "thead", "tfoot", "tr", "ul",
}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
#: heading level given to definition terms (below every real heading)
TERM_LEVEL = 7
#: whether HTML definition terms become minor headings (a switch for side-by-side measurements)
HTML_TERMS = True
_TERM_MAX_CHARS = 160
_EMPHASIS_TAGS = {"b", "strong", "code", "tt", "kbd", "samp"}
_SKIP_TAGS = {"script", "style", "head", "noscript", "template", "svg", "iframe", "object"}
_CELL_TAGS = {"td", "th"}
_VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class _HtmlText(HTMLParser):
    def __init__(self, source: str):
        super().__init__(convert_charrefs=False)
        self.source = source
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.chars: list[str] = []
        self.where: list[int] = []
        self.where_end: list[int] = []
        self.blocks: list[Block] = []
        self.block_start: int | None = None
        self.block_level = 0
        self.skip_depth = 0
        self.pre_depth = 0
        self.pending_space = False
        self.terms = HTML_TERMS
        self.emphasis_depth = 0
        # the current block is a <p> whose every character so far is inside an emphasis tag
        self.all_emphasis = False
        self.block_tag = ""

    def _pos(self) -> int:
        line, col = self.getpos()
        return self.line_starts[line - 1] + col

    # a block ends: close the current run of text and separate it from the next by a blank line
    def _break(self, heading_level: int = 0) -> None:
        if self.block_start is not None:
            end = len(self.chars)
            while end > self.block_start and self.chars[end - 1].isspace():
                end -= 1
            if end > self.block_start:
                level = self.block_level
                if (self.terms and not level and self.block_tag == "p" and self.all_emphasis
                        and end - self.block_start <= _TERM_MAX_CHARS):
                    level = TERM_LEVEL  # a bold-only paragraph introduces the definition after it
                title = "".join(self.chars[self.block_start:end]) if level else ""
                self.blocks.append(Block(self.block_start, end, level, " ".join(title.split())))
        self.block_start = None
        self.block_level = heading_level
        self.pending_space = False
        self.block_tag = ""
        self.all_emphasis = False

    def _emit(self, text: str, pos: int, raw_len: int | None = None) -> None:
        """Append `text` found at source offset `pos`; an entity (raw_len given) maps wholly to its source."""
        for i, ch in enumerate(text):
            at, at_end = (pos, pos + raw_len) if raw_len is not None else (pos + i, pos + i + 1)
            if ch.isspace():
                if self.block_start is None:
                    continue
                if self.pre_depth == 0:  # runs of whitespace collapse to one space, as a browser shows them
                    self.pending_space = True
                    continue
            if self.block_start is None:
                if self.chars:  # blank line between blocks, mapped to where this block starts
                    self.chars.extend("\n\n")
                    self.where.extend((at, at))
                    self.where_end.extend((at, at))
                self.block_start = len(self.chars)
                self.all_emphasis = self.emphasis_depth > 0
            elif self.pending_space:
                self.chars.append(" ")
                self.where.append(at)
                self.where_end.append(at)
            self.pending_space = False
            if self.emphasis_depth == 0:
                self.all_emphasis = False
            self.chars.append(ch)
            self.where.append(at)
            self.where_end.append(at_end)

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP_TAGS:
            if tag not in _VOID_TAGS:
                self.skip_depth += 1
            return
        if self.skip_depth:
            return
        if tag in _HEADINGS:
            self._break(_HEADINGS[tag])
        elif tag == "dt" and self.terms:
            self._break(TERM_LEVEL)
        elif tag in _BLOCK_TAGS:
            self._break()
            self.block_tag = tag
            if tag == "pre":
                self.pre_depth += 1
        elif tag in _EMPHASIS_TAGS:
            self.emphasis_depth += 1
        elif tag == "br":
            self._emit_newline()
        elif tag in _CELL_TAGS:
            self.pending_space = self.block_start is not None

    def _emit_newline(self) -> None:
        if self.block_start is not None:
            at = self._pos()
            self.chars.append("\n")
            self.where.append(at)
            self.where_end.append(at)
            self.pending_space = False

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in _SKIP_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag in _HEADINGS or tag in _BLOCK_TAGS:
            self._break()
            if tag == "pre":
                self.pre_depth = max(0, self.pre_depth - 1)
        elif tag in _EMPHASIS_TAGS:
            self.emphasis_depth = max(0, self.emphasis_depth - 1)

    def handle_data(self, data):
        if not self.skip_depth:
            self._emit(data, self._pos())

    def _entity(self, raw: str):
        if not self.skip_depth:
            self._emit(html.unescape(raw), self._pos(), len(raw))

    def handle_entityref(self, name):
        self._entity(f"&{name};")

    def handle_charref(self, name):
        self._entity(f"&#{name};")


def parse_html(source: str) -> ParsedText:
    parser = _HtmlText(source)
    try:
        parser.feed(source)
        parser.close()
    except Exception as exc:  # noqa: BLE001 - the stdlib parser is lenient; anything else is bad input
        raise ParseError(f"not parseable as HTML: {exc}") from None
    parser._break()
    text = "".join(parser.chars)
    return ParsedText(text, parser.blocks, parser.where, parser.where_end, content_type=HTML, source_length=len(source))


# -- PDF (pypdf) ----------------------------------------------------------------------------------


def parse_pdf(data: bytes) -> ParsedText:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise ParseError("the PDF is encrypted; decrypt it before ingesting")
        pages = [(page.extract_text() or "") for page in reader.pages]
    except ParseError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ParseError(f"not a readable PDF: {type(exc).__name__}: {exc}") from None
    parts: list[str] = []
    page_starts: list[int] = []
    blocks: list[Block] = []
    pos = 0
    for page_text in pages:
        page_text = page_text.replace("\r\n", "\n").strip()
        if parts:
            parts.append("\n\n")
            pos += 2
        page_starts.append(pos)
        parts.append(page_text)
        pos += len(page_text)
    text = "".join(parts)
    for i, start in enumerate(page_starts):
        end = page_starts[i + 1] - 2 if i + 1 < len(page_starts) else len(text)
        blocks.extend(paragraph_blocks(text, start, end))
    return ParsedText(text, blocks, page_starts=page_starts, content_type=PDF, source_length=len(text))
