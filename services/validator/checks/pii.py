"""PII: e-mail addresses, phone numbers, payment card numbers (Luhn) and IBANs (mod 97), with spans.

Detection runs on a normalised view of the text (NFKC, case folded, invisible characters removed)
and again on a view where spaced-out single characters are joined ("j o h n @ ..."), so PII
split by spaces or dots, written with full-width characters or with "[at]"/"(dot)" is found; all
spans map back to offsets in the original text. Card numbers and IBANs are confirmed with their
checksums, which keeps ordinary numbers (prices, years, ids) from being reported.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from services.validator.checks.base import Params, Subject, check
from services.validator.datatypes import CheckOutcome, Evidence
from services.validator.textutil import View, despaced_view, normalized_view
from shared.errors import DeadlineExceeded

Kind = Literal["email", "phone", "payment_card", "iban"]
ALL_KINDS: tuple[Kind, ...] = ("email", "phone", "payment_card", "iban")
NOUNS = {"email": "e-mail address", "phone": "phone number", "payment_card": "payment card number", "iban": "IBAN"}


@dataclass(frozen=True)
class Finding:
    kind: Kind
    start: int  # offsets in the original text
    end: int
    value: str  # canonical form: digits only, lower-case e-mail


# -- e-mail -----------------------------------------------------------------------------------

_LOCAL_ATOM = r"[a-z0-9_%+\-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?"
_DOT_WORD = r"(?:\s*[\[({<]\s*(?:dot|\.)\s*[\])}>]\s*|\s+dot\s+)"
# With a real "@": dots may be surrounded by spaces on both sides ("example . com").
_DOT_A = rf"(?:\.|\s+\.\s+|{_DOT_WORD})"
_EMAIL_AT = re.compile(
    rf"(?<![a-z0-9_%+\-.]){_LOCAL_ATOM}(?:{_DOT_A}{_LOCAL_ATOM})*\s*@\s*{_LABEL}(?:{_DOT_A}{_LABEL})*{_DOT_A}[a-z]{{2,24}}(?![a-z0-9\-])"
)
# With an obfuscated "at": a bracketed one ("[at]"), or a bare " at " only together with a
# spelled-out dot, since "look at example.com" is ordinary prose.
_AT_BRACKETED = r"\s*[\[({<]\s*at\s*[\])}>]\s*"
_EMAIL_OBFUSCATED = re.compile(
    rf"(?<![a-z0-9_%+\-.]){_LOCAL_ATOM}(?:(?:\.|{_DOT_WORD}){_LOCAL_ATOM})*"
    rf"(?:{_AT_BRACKETED}{_LABEL}(?:(?:\.|{_DOT_WORD}){_LABEL})*(?:\.|{_DOT_WORD})"
    rf"|\s+at\s+{_LABEL}(?:{_DOT_WORD}{_LABEL})*{_DOT_WORD})[a-z]{{2,24}}(?![a-z0-9\-])"
)


def _canonical_email(raw: str) -> str:
    s = re.sub(_AT_BRACKETED + "|\\s+at\\s+", "@", raw)
    s = re.sub(_DOT_WORD, ".", s)
    return re.sub(r"\s+", "", s)


def _emails(view: View) -> list[Finding]:
    out = []
    for rx in (_EMAIL_AT, _EMAIL_OBFUSCATED):
        for m in rx.finditer(view.text):
            start, end = view.span(m.start(), m.end())
            out.append(Finding("email", start, end, _canonical_email(m.group(0))))
    return out


# -- numbers: cards and phones ----------------------------------------------------------------

# Runs of digits with single separators (space, dot, dash, slash, parentheses) between groups.
_DIGIT_RUN = re.compile(r"(?:\+|\b00)?\(?\d(?:(?:[ \t.\-/]|\)\s?|\s?\(){0,2}\d)+\)?")
_PHONE_CONTEXT = re.compile(r"(?:phone|tel|telephone|call|mobile|cell|fax|whatsapp|sms|text me|ring)\W{0,3}$")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_prefix_ok(digits: str) -> bool:
    # Issuer prefixes in use (Visa 4, Mastercard 51-55/22-27, Amex 34/37, Discover/UnionPay 6,
    # Diners 30/36/38, JCB 35): a Luhn-valid number that starts otherwise is not a card.
    return digits[0] in "3456" or digits[:2] in {"22", "23", "24", "25", "26", "27"}


def _groups(run: str) -> list[tuple[int, int]]:
    """(start, end) of the digit groups in a run."""
    return [(m.start(), m.end()) for m in re.finditer(r"\d+", run)]


def _cards(view: View) -> list[Finding]:
    out = []
    for m in _DIGIT_RUN.finditer(view.text):
        if m.start() > 0 and view.text[m.start() - 1].isalnum():
            continue  # glued to letters: part of an identifier such as an IBAN, not a card
        run = m.group(0)
        groups = _groups(run)
        # The whole run, or its leading groups when more follows ("4111 1111 1111 1111 12 27"):
        # trying every inner window would turn 1 in 10 long numbers into a Luhn-valid "card".
        for j in range(len(groups) - 1, -1, -1):
            digits = re.sub(r"\D", "", run[groups[0][0] : groups[j][1]])
            if len(digits) < 13:
                break
            if len(digits) <= 19 and _card_prefix_ok(digits) and luhn_valid(digits):
                start, end = view.span(m.start() + groups[0][0], m.start() + groups[j][1])
                out.append(Finding("payment_card", start, end, digits))
                break
    return out


def _looks_like_phone(run: str, preceded_by_context: bool) -> bool:
    digits = re.sub(r"\D", "", run)
    n = len(digits)
    if not 7 <= n <= 15:
        return False
    sizes = [e - s for s, e in _groups(run)]
    if run.startswith("+") or run.startswith("00"):
        return 8 <= n <= 15
    if preceded_by_context:
        return True
    if all(size == 1 for size in sizes) and n >= 9:
        return True  # spaced-out digits: "4 1 5 5 5 5 2 6 7 1"
    if re.match(r"\(\d{3}\)\s?\d{3}[\s.\-]?\d{4}$", run):
        return True
    if sizes in ([3, 3, 4], [1, 3, 3, 4]) and (sizes[0] == 3 or digits[0] == "1"):
        return digits[-10] in "23456789"
    # National format with a trunk prefix: "030 1234567", "06 12 34 56 78".
    return digits[0] == "0" and 9 <= n <= 12 and len(sizes) >= 2


def _phones(view: View, taken: list[Finding]) -> list[Finding]:
    out = []
    for m in _DIGIT_RUN.finditer(view.text):
        run = m.group(0).rstrip(")") if m.group(0).count("(") < m.group(0).count(")") else m.group(0)
        context = _PHONE_CONTEXT.search(view.text[max(0, m.start() - 24) : m.start()]) is not None
        if not _looks_like_phone(run, context):
            continue
        start, end = view.span(m.start(), m.start() + len(run))
        if any(f.start < end and start < f.end for f in taken):
            continue  # a card number is not also a phone number
        out.append(Finding("phone", start, end, re.sub(r"[^\d+]", "", run)))
    return out


# -- IBAN -------------------------------------------------------------------------------------

# Lengths of the IBAN formats of the most common countries; others must be 15-34 characters.
_IBAN_LENGTHS = {
    "at": 20, "be": 16, "bg": 22, "ch": 21, "cy": 28, "cz": 24, "de": 22, "dk": 18, "ee": 20, "es": 24, "fi": 18,
    "fr": 27, "gb": 22, "gr": 27, "hr": 21, "hu": 28, "ie": 22, "is": 26, "it": 27, "li": 21, "lt": 20, "lu": 20,
    "lv": 21, "mt": 31, "nl": 18, "no": 15, "pl": 28, "pt": 25, "ro": 24, "se": 24, "si": 19, "sk": 24, "tr": 26,
}
_IBAN_START = re.compile(r"(?<![a-z0-9])[a-z]{2}[ \t.\-]?\d[ \t.\-]?\d")
_IBAN_REST = re.compile(r"(?:[ \t.\-]?[a-z0-9])")


def iban_valid(iban: str) -> bool:
    iban = iban.lower()
    expected = _IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected or not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def _ibans(view: View) -> list[Finding]:
    out = []
    text = view.text
    for m in _IBAN_START.finditer(text):
        # Collect characters after the check digits; try the longest candidate that validates.
        ends: list[tuple[int, str]] = []
        pos = m.end()
        chars = re.sub(r"[^a-z0-9]", "", m.group(0))
        while len(chars) < 34:
            nxt = _IBAN_REST.match(text, pos)
            if not nxt:
                break
            pos = nxt.end()
            chars += nxt.group(0)[-1]
            if pos >= len(text) or not text[pos].isalnum():
                ends.append((pos, chars))
        for end, candidate in reversed(ends):
            if iban_valid(candidate):
                start, stop = view.span(m.start(), end)
                out.append(Finding("iban", start, stop, candidate.upper()))
                break
    return out


# -- the check --------------------------------------------------------------------------------


def find_pii(text: str, kinds: tuple[str, ...] = ALL_KINDS) -> list[Finding]:
    """Every PII finding in `text`, deduplicated (overlaps keep the first kind found: IBAN, card, e-mail, phone)."""
    base = normalized_view(text)
    views = [base, despaced_view(base)]
    found: list[Finding] = []

    def add(items: list[Finding]) -> None:
        for f in items:
            if not any(g.start < f.end and f.start < g.end for g in found):
                found.append(f)

    for view in views:
        if "iban" in kinds:
            add(_ibans(view))
        if "payment_card" in kinds:
            add(_cards(view))
        if "email" in kinds:
            add(_emails(view))
        if "phone" in kinds:
            # A number inside an IBAN or card is not a phone number, even when not asked for those.
            taken = found + _cards(view) + _ibans(view)
            add(_phones(view, taken))
    return sorted(found, key=lambda f: f.start)


def mask(f: Finding) -> str:
    """A finding shown without giving the data away: enough to recognise it, not to use it."""
    if f.kind == "email":
        local, _, domain = f.value.partition("@")
        return f"{local[:1]}***@{domain}"
    if f.kind == "iban":
        return f"{f.value[:4]} **** {f.value[-4:]}"
    return f"***{f.value[-4:]}" if f.kind == "payment_card" else f"***{f.value[-3:]}"


class PiiParams(Params):
    kinds: list[Kind] = Field(default_factory=lambda: list(ALL_KINDS), description="Kinds of PII to look for")
    mask: bool = Field(True, description="Mask the found values in evidence, messages and feedback (spans stay exact)")
    targets: list[Literal["artifact", "request", "sources"]] = Field(
        default_factory=lambda: ["artifact"], description="Texts to scan"
    )


#: text scanned per slice; between slices the check looks at its time budget and the caller's deadline
SCAN_WINDOW = 32_768
#: slices overlap by more than the longest finding (an e-mail address may be 254 characters)
SCAN_OVERLAP = 320
#: CPU time one pii check may take on one request (7 MB of digits took 40 s before slicing)
PII_BUDGET_S = 10.0


def find_pii_budgeted(text: str, kinds: tuple[str, ...], alive, deadline: float) -> list[Finding]:
    """find_pii over slices of `text`, checking `alive()` (raises at the caller's deadline) and the
    check's own budget between slices, so a huge text ends with a clear status, not minutes later."""
    if len(text) <= SCAN_WINDOW + SCAN_OVERLAP:
        return find_pii(text, kinds)
    out: list[Finding] = []
    for offset in range(0, len(text), SCAN_WINDOW):
        alive()
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"check 'pii' ran past its time budget of {PII_BUDGET_S:g} s after scanning "
                                   f"{offset} of {len(text)} characters; send less text")
        for f in find_pii(text[offset : offset + SCAN_WINDOW + SCAN_OVERLAP], kinds):
            if f.start < SCAN_WINDOW or offset + SCAN_WINDOW >= len(text):
                shifted = dataclasses.replace(f, start=f.start + offset, end=f.end + offset)
                if not any(g.start < shifted.end and shifted.start < g.end for g in out):
                    out.append(shifted)
    return out


@check("pii", kinds=("text",), params=PiiParams,
       description="No e-mail addresses, phone numbers, payment card numbers (Luhn) or IBANs (mod 97), with spans")
def pii(p: PiiParams, s: Subject) -> CheckOutcome:
    evidence: list[Evidence] = []
    described: list[str] = []
    deadline = time.monotonic() + PII_BUDGET_S
    for where, text in _targets(p, s):
        for f in find_pii_budgeted(text, tuple(p.kinds), s.alive, deadline):
            shown = mask(f) if p.mask else text[f.start : f.end]
            evidence.append(Evidence(f.kind, shown, where, f.start, f.end))
            described.append(f"the {NOUNS[f.kind]} '{shown}' ({where} characters {f.start}-{f.end})")
    if not evidence:
        return CheckOutcome(True, 1.0, f"no {', '.join(NOUNS[k] for k in p.kinds)} found")
    counts: dict[str, int] = {}
    for e in evidence:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    summary = ", ".join(f"{n} {NOUNS[k]}(s)" for k, n in counts.items())
    return CheckOutcome(False, 0.0, f"personal data found: {summary}", evidence,
                        "Remove or redact the personal data: " + "; ".join(described[:10]) + ".")


def _targets(p: PiiParams, s: Subject):
    if "artifact" in p.targets:
        yield "artifact", s.text
    if "request" in p.targets and s.context.request:
        yield "request", s.context.request
    if "sources" in p.targets:
        for i, src in enumerate(s.context.sources, start=1):
            yield f"sources[{i}]", src.text
