"""Text checks: JSON Schema, regular expressions, length in characters and tokens, banned terms, repetition."""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import time
from typing import Any

import regex
from pydantic import Field, field_validator, model_validator

from services.validator.checks.base import Params, Subject, check, quote
from services.validator.datatypes import CheckOutcome, Evidence
from services.validator.textutil import CITATION_MARKER, normalized_view
from shared.errors import InvalidArgument

# -- json_schema ------------------------------------------------------------------------------


class JsonSchemaParams(Params):
    schema_: dict[str, Any] | bool | None = Field(
        None, alias="schema", description="JSON Schema the text must satisfy (null: any valid JSON)"
    )
    allow_code_fence: bool = Field(False, description="Accept JSON wrapped in a ```json ... ``` fence")
    max_errors: int = Field(10, ge=1, le=100, description="Schema errors reported at most")

    model_config = Params.model_config | {"populate_by_name": True, "serialize_by_alias": True}

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema):
        if schema is None:
            return schema
        from jsonschema import exceptions, validators

        try:
            validators.validator_for(schema).check_schema(schema)
        except exceptions.SchemaError as exc:
            where = "/" + "/".join(str(p) for p in exc.absolute_path) if exc.absolute_path else "the root"
            raise ValueError(f"invalid JSON Schema at {where}: {exc.message}") from None
        except RecursionError:
            raise ValueError("the JSON Schema is nested too deeply") from None
        return schema


# Schema patterns (`pattern`, `patternProperties`, and the latter's use by `additionalProperties`)
# run on the regex module with a time budget and without holding the GIL: jsonschema itself calls
# `re.search`, which a pattern like ^(a+)+$ keeps busy for minutes on 30 characters, freezing every
# other request of the process. The budget applies only inside this check (a context variable);
# elsewhere the stand-in behaves exactly like `re`.
SCHEMA_PATTERN_BUDGET_S = 1.0
_PATTERN_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("pattern_deadline", default=None)


class PatternTimeout(Exception):  # noqa: N818 - a budget, not a bug
    def __init__(self, pattern: str):
        super().__init__(pattern)
        self.pattern = pattern


class _BudgetedRe:
    """Stands in for the `re` module inside jsonschema (see above)."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def search(self, pattern, string, flags=0):
        deadline = _PATTERN_DEADLINE.get()
        if deadline is None:
            return self._real.search(pattern, string, flags)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PatternTimeout(pattern)
        try:
            return regex.search(pattern, string, flags, timeout=remaining, concurrent=True)
        except TimeoutError:
            raise PatternTimeout(pattern) from None
        except regex.error:  # a pattern `re` accepts but regex does not: let `re` decide, untimed
            return self._real.search(pattern, string, flags)


def _install_budgeted_re() -> None:
    import jsonschema._keywords
    import jsonschema._utils

    for module in (jsonschema._keywords, jsonschema._utils):
        if getattr(module, "re", None) is re:
            module.re = _BudgetedRe(re)


@contextlib.contextmanager
def pattern_budget(seconds: float):
    token = _PATTERN_DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _PATTERN_DEADLINE.reset(token)


_FENCE = regex.compile(r"^\s*```[A-Za-z0-9_+-]*[ \t]*\n(.*?)\n?[ \t]*```\s*$", regex.DOTALL)


def _strip_fence(text: str) -> str:
    m = _FENCE.match(text)
    return m.group(1) if m else text


def _pointer(path) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path) if path else "/"


@check(
    "json_schema",
    kinds=("text",),
    params=JsonSchemaParams,
    description="The text is valid JSON and, when a schema is given, satisfies that JSON Schema (jsonschema)",
)
def json_schema(p: JsonSchemaParams, s: Subject) -> CheckOutcome:
    text = _strip_fence(s.text) if p.allow_code_fence else s.text
    try:
        instance = json.loads(text)
    except RecursionError:
        return CheckOutcome(False, 0.0, "not valid JSON within limits: nested too deeply", [],
                            "Return flat, valid JSON; the output nests arrays or objects too deeply.")
    except json.JSONDecodeError as exc:
        fenced = s.text.strip().startswith("```")
        hint = " without a Markdown code fence" if fenced and not p.allow_code_fence else ""
        return CheckOutcome(
            False, 0.0, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            [Evidence("json_parse_error", exc.msg, "artifact", exc.pos, min(exc.pos + 1, len(text)))],
            f"Return only valid JSON{hint}; the output does not parse ({exc.msg} at line {exc.lineno} "
            f"column {exc.colno}).",
        )
    if p.schema_ is None:
        return CheckOutcome(True, 1.0, "valid JSON (no schema given)")
    from jsonschema import FormatChecker, validators
    from referencing.exceptions import Unresolvable

    _install_budgeted_re()
    validator_cls = validators.validator_for(p.schema_)
    validator = validator_cls(p.schema_, format_checker=FormatChecker())
    try:
        with pattern_budget(SCHEMA_PATTERN_BUDGET_S):
            errors = sorted(validator.iter_errors(instance), key=lambda e: (list(e.absolute_path), e.message))
    except Unresolvable as exc:
        raise InvalidArgument(
            f"the schema's reference {exc.ref!r} cannot be resolved (remote references are not fetched)",
            field="params.schema",
        ) from None
    except PatternTimeout as exc:
        raise InvalidArgument(
            f"the schema's pattern {exc.pattern[:100]!r} took longer than {SCHEMA_PATTERN_BUDGET_S:g} s on this "
            "text (catastrophic backtracking?)",
            field="params.schema",
        ) from None
    except RecursionError:
        raise InvalidArgument("the schema refers to itself without end (e.g. {\"$ref\": \"#\"}) or nests too "
                              "deeply", field="params.schema") from None
    if not errors:
        return CheckOutcome(True, 1.0, "valid JSON that satisfies the schema")
    shown = errors[: p.max_errors]
    evidence = [Evidence("schema_error", e.message, _pointer(e.absolute_path)) for e in shown]
    listed = "; ".join(f"at {_pointer(e.absolute_path)}: {e.message}" for e in shown)
    more = f" (and {len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
    return CheckOutcome(
        False,
        1.0 / (1 + len(errors)),
        f"{len(errors)} schema error(s): {listed}{more}",
        evidence,
        f"Return JSON that satisfies the schema; fix: {listed}{more}.",
    )


# -- regex ------------------------------------------------------------------------------------

_FLAGS = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL, "x": regex.VERBOSE}
REGEX_TIMEOUT_S = 1.0


class RegexParams(Params):
    pattern: str = Field("", max_length=2000, description="Regular expression (Python syntax)")
    must_match: bool = Field(True, description="true: the text must contain a match; false: it must contain none")
    flags: str = Field("", description="Any of i (ignore case), m (multiline), s (dot matches newline), x (verbose)")
    description: str = Field("", max_length=300, description="What the pattern means, used in feedback")

    @model_validator(mode="after")
    def _compiles(self):
        if not self.pattern:
            raise ValueError("pattern: must be a non-empty regular expression")
        bad = set(self.flags) - set(_FLAGS)
        if bad:
            raise ValueError(f"flags: unknown flag(s) {''.join(sorted(bad))!r}; allowed: i, m, s, x")
        try:
            self.compiled()
        except regex.error as exc:
            raise ValueError(f"pattern: invalid regular expression: {exc}") from None
        return self

    def compiled(self):
        flags = 0
        for f in self.flags:
            flags |= _FLAGS[f]
        return regex.compile(self.pattern, flags)


@check(
    "regex",
    kinds=("text",),
    params=RegexParams,
    description="A regular expression must match (must_match=true) or must not match (false) the text",
)
def regex_check(p: RegexParams, s: Subject) -> CheckOutcome:
    rx = p.compiled()
    what = p.description or f"the pattern /{p.pattern}/"
    try:
        if p.must_match:
            m = rx.search(s.text, timeout=REGEX_TIMEOUT_S, concurrent=True)
            if m:
                return CheckOutcome(True, 1.0, f"matches {what} at {m.start()}-{m.end()}",
                                    [Evidence("match", m.group(0), "artifact", m.start(), m.end())])
            return CheckOutcome(False, 0.0, f"does not match {what}", [],
                                f"The output must match {what}; rewrite it so that it does.")
        matches = list(rx.finditer(s.text, timeout=REGEX_TIMEOUT_S, concurrent=True))
    except TimeoutError:
        raise InvalidArgument(
            f"the pattern took longer than {REGEX_TIMEOUT_S:.0f} s on this text (catastrophic backtracking?)",
            field="params.pattern",
        ) from None
    if not matches:
        return CheckOutcome(True, 1.0, f"no match for forbidden {what}")
    evidence = [Evidence("forbidden_match", m.group(0), "artifact", m.start(), m.end()) for m in matches[:20]]
    found = ", ".join(quote(m.group(0), 60) for m in matches[:5])
    return CheckOutcome(False, 0.0, f"{len(matches)} match(es) of forbidden {what}: {found}", evidence,
                        f"Remove {found} from the output: it must not match {what}.")


# -- length -----------------------------------------------------------------------------------


class LengthParams(Params):
    min_chars: int | None = Field(None, ge=0, description="Fewest characters allowed")
    max_chars: int | None = Field(None, ge=0, description="Most characters allowed")
    min_tokens: int | None = Field(None, ge=0, description="Fewest tokens (embedding model's tokenizer) allowed")
    max_tokens: int | None = Field(None, ge=0, description="Most tokens (embedding model's tokenizer) allowed")

    @model_validator(mode="after")
    def _ordered(self):
        for unit in ("chars", "tokens"):
            lo, hi = getattr(self, f"min_{unit}"), getattr(self, f"max_{unit}")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"min_{unit} ({lo}) must be <= max_{unit} ({hi})")
        return self


@check(
    "length",
    kinds=("text",),
    params=LengthParams,
    description="Length in characters and in tokens (the embedding model's WordPiece tokenizer) within bounds",
)
def length(p: LengthParams, s: Subject) -> CheckOutcome:
    measured = {"chars": len(s.text)}
    if p.min_tokens is not None or p.max_tokens is not None:
        measured["tokens"] = s.resources.count_tokens(s.text)
    problems: list[str] = []
    feedback: list[str] = []
    score = 1.0
    for unit, value in measured.items():
        lo, hi = getattr(p, f"min_{unit}"), getattr(p, f"max_{unit}")
        noun = "characters" if unit == "chars" else "tokens"
        if hi is not None and value > hi:
            problems.append(f"{value} {noun} > max {hi}")
            feedback.append(f"Shorten the output to at most {hi} {noun} (it has {value}).")
            score = min(score, hi / value if value else 0.0)
        if lo is not None and value < lo:
            problems.append(f"{value} {noun} < min {lo}")
            feedback.append(f"Make the output at least {lo} {noun} long (it has {value}).")
            score = min(score, value / lo if lo else 0.0)
    summary = ", ".join(f"{v} {'characters' if k == 'chars' else 'tokens'}" for k, v in measured.items())
    if problems:
        return CheckOutcome(False, score, f"length out of bounds: {'; '.join(problems)}",
                            [Evidence("length", summary, "artifact", 0, len(s.text), float(measured["chars"]))],
                            " ".join(feedback))
    return CheckOutcome(True, 1.0, f"length within bounds ({summary})")


# -- banned_terms -----------------------------------------------------------------------------


class BannedTermsParams(Params):
    terms: list[str] = Field(default_factory=list, max_length=1000, description="Terms that must not appear")
    case_sensitive: bool = Field(False, description="Match case exactly (default: case-insensitive, NFKC-normalised)")
    whole_words: bool = Field(True, description="Match whole words only")
    match_obfuscated: bool = Field(
        True, description="Also match terms written with separators between letters ('b.a.d', 'b a d')"
    )

    @field_validator("terms")
    @classmethod
    def _non_empty(cls, terms):
        terms = [t.strip() for t in terms if t.strip()]
        if not terms:
            raise ValueError("must list at least one non-blank term")
        return terms


def _term_pattern(term: str, p: BannedTermsParams) -> str:
    words = term.split()
    if p.match_obfuscated:
        # Up to two separators between letters: "b.a.d", "b a d", "b-a-d", "b_a_d".
        parts = [r"[\W_]{0,2}".join(regex.escape(c) for c in w) for w in words]
    else:
        parts = [regex.escape(w) for w in words]
    body = r"[\W_]+".join(parts)
    return rf"(?<!\w){body}(?!\w)" if p.whole_words else body


@check("banned_terms", kinds=("text",), params=BannedTermsParams,
       description="None of the listed terms appears (case, Unicode look-alikes and separators do not hide them)")
def banned_terms(p: BannedTermsParams, s: Subject) -> CheckOutcome:
    if p.case_sensitive:
        haystack, view = s.text, None
        terms = p.terms
    else:
        view = normalized_view(s.text)
        haystack = view.text
        terms = [normalized_view(t).text for t in p.terms]
    evidence: list[Evidence] = []
    found_terms: list[str] = []
    for original, term in zip(p.terms, terms, strict=True):
        rx = regex.compile(_term_pattern(term, p))
        for m in rx.finditer(haystack, timeout=REGEX_TIMEOUT_S):
            start, end = view.span(m.start(), m.end()) if view else (m.start(), m.end())
            evidence.append(Evidence("banned_term", s.text[start:end], "artifact", start, end))
            if original not in found_terms:
                found_terms.append(original)
    if not evidence:
        return CheckOutcome(True, 1.0, f"none of {len(p.terms)} banned term(s) found")
    evidence.sort(key=lambda e: e.start)
    listed = ", ".join(quote(t, 60) for t in found_terms)
    return CheckOutcome(
        False, 0.0, f"{len(evidence)} occurrence(s) of banned term(s) {listed}", evidence,
        f"Rewrite the output without the term(s) {listed} (found {len(evidence)} time(s)).",
    )


# -- repetition -------------------------------------------------------------------------------


class RepetitionParams(Params):
    ngram: int = Field(4, ge=2, le=12, description="Length in words of the phrases compared")
    max_repeated_share: float = Field(
        0.3, ge=0.0, le=1.0, description="Largest share of the text's word n-grams that may repeat an earlier one"
    )
    min_words: int = Field(12, ge=1, le=10_000, description="Texts with fewer words pass: too short to judge")


_WORD_SPAN = regex.compile(r"\w+")


@check(
    "repetition",
    kinds=("text",),
    params=RepetitionParams,
    description="The text does not loop: few of its word n-grams repeat an earlier one (degenerate sampling)",
)
def repetition(p: RepetitionParams, s: Subject) -> CheckOutcome:
    # Citation markers repeat legitimately ("... [1]. ... [1].") and are left out of the words.
    text = CITATION_MARKER.sub(lambda m: " " * len(m.group(0)), s.text)
    spans = [(m.start(), m.end(), m.group(0).casefold()) for m in _WORD_SPAN.finditer(text)]
    if len(spans) < max(p.min_words, p.ngram + 1):
        return CheckOutcome(True, 1.0, f"{len(spans)} words: too short to judge repetition")
    first: dict[tuple[str, ...], int] = {}
    counts: dict[tuple[str, ...], int] = {}
    repeated = 0
    for i in range(len(spans) - p.ngram + 1):
        gram = tuple(w for _, _, w in spans[i : i + p.ngram])
        counts[gram] = counts.get(gram, 0) + 1
        if gram in first:
            repeated += 1
        else:
            first[gram] = i
    total = len(spans) - p.ngram + 1
    share = repeated / total
    if share <= p.max_repeated_share:
        return CheckOutcome(True, 1.0 - share, f"{100 * share:.0f} % of {p.ngram}-word phrases repeat "
                            f"(max {100 * p.max_repeated_share:.0f} %)")
    gram, n = max(counts.items(), key=lambda kv: (kv[1], -first[kv[0]]))
    i = first[gram]
    start, end = spans[i][0], spans[i + p.ngram - 1][1]
    phrase = quote(s.text[start:end], 80)
    return CheckOutcome(
        False, 1.0 - share,
        f"the text repeats itself: {100 * share:.0f} % of its {p.ngram}-word phrases occur earlier "
        f"(max {100 * p.max_repeated_share:.0f} %); {phrase} occurs {n} times",
        [Evidence("repeated_phrase", s.text[start:end], "artifact", start, end, float(n))],
        f"Say each thing once: {phrase} occurs {n} times and {100 * share:.0f} % of the text repeats "
        "earlier phrases. Answer without repeating yourself.",
    )
