"""PII check: e-mail, phone, payment card (Luhn), IBAN (mod 97), with exact spans, incl. split/obfuscated forms."""

from __future__ import annotations

import pytest

from services.validator.checks.pii import find_pii, iban_valid, luhn_valid
from services.validator.core import ValidatorCore
from services.validator.datatypes import Artifact, CheckSpec, Context, Source
from services.validator.settings import ValidatorSettings
from shared.errors import InvalidArgument


@pytest.fixture(scope="module")
def validator() -> ValidatorCore:
    return ValidatorCore(ValidatorSettings(warm_up_models=False))


def spans(text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in find_pii(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Write to ada.lovelace@example.org today.", [("email", "ada.lovelace@example.org")]),
        ("Card: 4111 1111 1111 1111, exp 12/27", [("payment_card", "4111 1111 1111 1111")]),
        ("Amex 3782-822463-10005 on file", [("payment_card", "3782-822463-10005")]),
        ("Call +44 20 7946 0958 now", [("phone", "+44 20 7946 0958")]),
        ("Call (415) 555-2671 now", [("phone", "(415) 555-2671")]),
        ("Pay to DE89 3704 0044 0532 0130 00 please", [("iban", "DE89 3704 0044 0532 0130 00")]),
        ("IBAN GB82WEST12345698765432.", [("iban", "GB82WEST12345698765432")]),
    ],
)
def test_plain_pii_is_found_with_exact_spans(text, expected):
    assert spans(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # split by spaces
        ("mail a d a @ e x a m p l e . o r g now", [("email", "a d a @ e x a m p l e . o r g")]),
        ("card 4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 ok", [("payment_card", "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1")]),
        ("phone: 4 1 5 5 5 5 2 6 7 1", [("phone", "4 1 5 5 5 5 2 6 7 1")]),
        ("ada.lovelace @ example . org", [("email", "ada.lovelace @ example . org")]),
        # split by dots
        ("card 4111.1111.1111.1111.", [("payment_card", "4111.1111.1111.1111")]),
        ("tel 415.555.2671", [("phone", "415.555.2671")]),
        ("iban DE89.3704.0044.0532.0130.00", [("iban", "DE89.3704.0044.0532.0130.00")]),
        # spelled-out and look-alike separators
        ("ada [at] example [dot] org", [("email", "ada [at] example [dot] org")]),
        ("ada at example dot org", [("email", "ada at example dot org")]),
        ("ａｄａ＠ｅｘａｍｐｌｅ．ｏｒｇ", [("email", "ａｄａ＠ｅｘａｍｐｌｅ．ｏｒｇ")]),
    ],
)
def test_split_and_obfuscated_pii_is_found(text, expected):
    assert spans(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Revenue grew 12.4% to 3.5 million in 2021 and 2022.",
        "The tower is 330 m tall and was built from 1887 to 1889.",
        "Order 4111 1111 1111 1112 failed the checksum.",  # Luhn-invalid
        "Account DE89 3704 0044 0532 0130 01 is a typo.",  # mod-97-invalid
        "I stayed at home. Then I read.",
        "Look at example.com for details.",
        "Version 1.2.3.4, ISBN 978-3-16-148410-0, population 3 400 000.",
    ],
)
def test_ordinary_numbers_and_prose_are_not_pii(text):
    assert spans(text) == []


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    assert not iban_valid("DE8937040044053201300")  # one character short for Germany


def test_check_reports_spans_masked_values_and_feedback(validator):
    text = "Reach Ada at ada@example.org or +1 415 555 2671; card 4111 1111 1111 1111."
    verdict = validator.validate(Artifact.of_text(text), checks=[CheckSpec("pii")])
    r = verdict.results[0]
    assert not r.passed and r.score == 0.0
    kinds = [e.kind for e in r.evidence]
    assert kinds == ["email", "phone", "payment_card"]
    for e in r.evidence:
        assert e.where == "artifact" and e.end > e.start
    assert text[r.evidence[2].start : r.evidence[2].end] == "4111 1111 1111 1111"
    assert r.evidence[2].text == "***1111"  # masked: the number itself is not repeated
    assert "4111 1111" not in r.feedback and "4111 1111" not in r.message
    assert "Remove or redact" in r.feedback and "a***@example.org" in r.feedback


def test_unmasked_and_selected_kinds(validator):
    text = "ada@example.org, +1 415 555 2671"
    spec = CheckSpec("pii", {"kinds": ["email"], "mask": False})
    r = validator.validate(Artifact.of_text(text), checks=[spec]).results[0]
    assert [(e.kind, e.text) for e in r.evidence] == [("email", "ada@example.org")]


def test_sources_and_request_can_be_scanned(validator):
    ctx = Context("my mail is bob@example.com", [Source("s1", "Nothing here."), Source("s2", "Call 030 1234567.")])
    spec = CheckSpec("pii", {"targets": ["request", "sources"]})
    r = validator.validate(Artifact.of_text("clean answer"), ctx, checks=[spec]).results[0]
    assert sorted((e.where, e.kind) for e in r.evidence) == [("request", "email"), ("sources[2]", "phone")]


def test_clean_text_passes(validator):
    text = "The Eiffel Tower is 330 m tall [1]."
    r = validator.validate(Artifact.of_text(text), checks=[CheckSpec("pii")]).results[0]
    assert r.passed and r.score == 1.0 and not r.evidence


def test_unknown_kind_is_invalid_argument(validator):
    with pytest.raises(InvalidArgument, match="kinds"):
        validator.validate(Artifact.of_text("x"), checks=[CheckSpec("pii", {"kinds": ["ssn"]})])
