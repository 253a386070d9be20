"""HTML reference pages keep their definitions together: a <dt> term, or a paragraph that is only a
bold/code run before its definition, becomes a minor heading, so each chunk's section names the term."""

from __future__ import annotations

from services.retriever import parsing
from services.retriever.chunking import sections_of
from services.retriever.parsing import TERM_LEVEL, parse_html

GIT_STYLE = """<h1>git-gc(1)</h1><h2>OPTIONS</h2><div class="dlist"><dl>
<dt class="hdlist1">--auto</dt><dd><p>With this option, <code>git gc</code> checks whether any housekeeping
is required.</p><p>See the <code>gc.auto</code> option.</p></dd>
<dt class="hdlist1">-q</dt><dt class="hdlist1">--quiet</dt><dd><p>Suppress all progress reports.</p></dd>
</dl></div>"""
SQLITE_STYLE = """<h1>Compile-time Options</h1><p>Options are <b>rarely</b> needed.</p>
<p><b>SQLITE_DEFAULT_PAGE_SIZE=<i>&lt;bytes&gt;</i></b></p><blockquote><p>The default value is 4096.</p></blockquote>
<p><b>SQLITE_DEFAULT_SYNCHRONOUS=<i>&lt;0-3&gt;</i></b></p><blockquote><p>The default setting is 2 (FULL).</p>
</blockquote>"""


def test_definition_terms_become_minor_headings_and_name_the_section():
    parsed = parse_html(GIT_STYLE)
    terms = [b.title for b in parsed.blocks if b.heading_level == TERM_LEVEL]
    assert terms == ["--auto", "-q", "--quiet"]
    paths = [s.path for s in sections_of(parsed)]
    assert paths == ["git-gc(1) > OPTIONS > --auto", "git-gc(1) > OPTIONS > --quiet"]
    # the text keeps the term in front of its definition, and offsets still map to the source
    assert "--auto\n\nWith this option, git gc checks" in parsed.text
    block = next(b for b in parsed.blocks if b.title == "--auto")
    s, e = parsed.source_span(block.start, block.end)
    assert GIT_STYLE[s:e] == "--auto"


def test_a_bold_only_paragraph_is_a_term_but_bold_inside_text_is_not():
    parsed = parse_html(SQLITE_STYLE)
    terms = [b.title for b in parsed.blocks if b.heading_level == TERM_LEVEL]
    assert terms == ["SQLITE_DEFAULT_PAGE_SIZE=<bytes>", "SQLITE_DEFAULT_SYNCHRONOUS=<0-3>"]
    paths = [s.path for s in sections_of(parsed)]
    assert paths == ["Compile-time Options", "Compile-time Options > SQLITE_DEFAULT_PAGE_SIZE=<bytes>",
                     "Compile-time Options > SQLITE_DEFAULT_SYNCHRONOUS=<0-3>"]
    assert "Options are rarely needed." in parsed.text


def test_the_switch_turns_terms_off(monkeypatch):
    monkeypatch.setattr(parsing, "HTML_TERMS", False)
    parsed = parse_html(GIT_STYLE)
    assert not any(b.heading_level == TERM_LEVEL for b in parsed.blocks)
    assert [s.path for s in sections_of(parsed)] == ["git-gc(1) > OPTIONS"]
