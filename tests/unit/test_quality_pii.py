"""PII: e-mail, German and international phone numbers, IBAN checksums, masking."""

from __future__ import annotations

import pytest

from core.datasets.quality import PIISignals, QualityThresholds, Sample, iban_is_valid
from core.datasets.quality.pii import find_pii, mask_pii
from tests.unit.test_quality_fixtures import CLEAN_DE


def run(text: str, **kw) -> Sample:
    s = Sample("s", text)
    PIISignals().process([s], QualityThresholds(**kw))
    return s


def found(text: str) -> list[tuple[str, str]]:
    return [(text[a:b], kind) for a, b, kind in find_pii(text)]


@pytest.mark.parametrize(
    "iban",
    ["DE89 3704 0044 0532 0130 00", "DE89370400440532013000", "GB82 WEST 1234 5698 7654 32",
     "AT61 1904 3002 3457 3201", "CH93 0076 2011 6238 5295 7"],
)  # fmt: skip
def test_valid_ibans(iban: str) -> None:
    assert iban_is_valid(iban)
    assert found(f"Konto: {iban}.") == [(iban, "iban")]


@pytest.mark.parametrize(
    "not_iban",
    ["DE89 3704 0044 0532 0130 01", "DE88370400440532013000", "DE89 3704 0044 0532 0130",
     "XX12345678901234567890"],
)  # fmt: skip
def test_invalid_checksum_or_length_is_not_an_iban(not_iban: str) -> None:
    assert not iban_is_valid(not_iban)
    assert all(kind != "iban" for _, kind in found(f"Nummer {not_iban} ist falsch."))


def test_iban_followed_by_bic_is_cut_at_the_country_length() -> None:
    text = "IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX"
    assert found(text) == [("DE89 3704 0044 0532 0130 00", "iban")]


@pytest.mark.parametrize(
    "phone",
    ["+49 30 1234567", "030-1234567", "0171 2345678", "01712345678", "(030) 1234567",
     "030/1234567", "+49 (0)30 1234567", "0049 30 1234567", "+49-171-2345678", "+1 212 555 0100",
     "089 123 456 78"],
)  # fmt: skip
def test_phone_formats(phone: str) -> None:
    assert found(f"Rufen Sie {phone} an.") == [(phone, "phone")]


@pytest.mark.parametrize(
    "text",
    ["Am 01.02.2024 um 10.30 Uhr", "Es wurden 1.234.567,89 EUR überwiesen.", "PLZ 01067 Dresden",
     "Az. 12-0345-678", "am 01/02/2024", "Im Jahr 2023 gab es 12345 Anträge.",
     "Version 2.0.1", "§ 35 Abs. 2 VwVfG", "Seite 0123 von 0456", "ISO 8601: 2024-03-15"],
)  # fmt: skip
def test_administrative_numbers_are_not_phones(text: str) -> None:
    assert found(text) == []


def test_emails() -> None:
    text = "Schreiben Sie an max.mustermann@beispiel.de oder Info@Amt-Berlin.DE."
    assert found(text) == [
        ("max.mustermann@beispiel.de", "email"),
        ("Info@Amt-Berlin.DE", "email"),
    ]
    assert found("Treffpunkt @ Rathaus, user@localhost") == []


def test_step_flags_each_kind_with_spans_and_counts() -> None:
    text = (
        "Kontakt: anna.weber@stadt.de, Tel. 030-1234567 oder 0171 2345678. "
        "IBAN DE89 3704 0044 0532 0130 00."
    )
    s = run(text)
    assert s.reasons == ["pii_email", "pii_phone", "pii_iban"]
    assert s.signals["pii_email"] == 1
    assert s.signals["pii_phone"] == 2
    assert s.signals["pii_iban"] == 1
    assert {text[a:b] for a, b, r in s.spans if r == "pii_phone"} == {"030-1234567", "0171 2345678"}
    assert s.masked_text is None  # masking is off by default


def test_masking_replaces_every_hit() -> None:
    text = "Mail an a.b@c.de, Tel. +49 30 1234567, IBAN DE89370400440532013000 danke"
    s = run(text, pii_mask=True)
    assert s.masked_text == "Mail an [EMAIL], Tel. [TELEFON], IBAN [IBAN] danke"
    # Spans still point into the original text.
    assert [text[a:b] for a, b, _ in sorted(s.spans)] == [
        "a.b@c.de",
        "+49 30 1234567",
        "DE89370400440532013000",
    ]
    assert mask_pii("ohne", []) == "ohne"


def test_pii_types_can_be_limited() -> None:
    s = run("Mail a.b@c.de, Tel. 030-1234567", pii_types=["email"])
    assert s.reasons == ["pii_email"]
    assert "pii_phone" not in s.signals


@pytest.mark.parametrize("key", sorted(CLEAN_DE))
def test_clean_german_has_no_pii(key: str) -> None:
    s = run(CLEAN_DE[key], pii_mask=True)
    assert s.reasons == []
    assert s.masked_text is None


def test_long_digit_runs_do_not_backtrack_for_ever() -> None:
    # With optional separators between digit groups, every split of a digit run was tried:
    # 60 digits followed by a letter took 18 s, 300 would take hours (the test would time out).
    assert find_pii("0" + "1" * 300 + "a") == []
    assert find_pii("+4" + "9" * 300 + "x, 0049 " + "1" * 300 + "a") == []
