"""Personal data: e-mail addresses, phone numbers (German and international formats), IBANs.

Patterns are tuned to flag real identifiers and to leave the numbers of administrative text
alone: dates (01.02.2024, 01/02/2024), amounts, postal codes, file numbers. IBANs are only
flagged when their mod-97 checksum holds, so random digit strings are not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from core.datasets.quality import reasons as R
from core.datasets.quality.base import QualityStep, Sample
from core.datasets.quality.models import QualityThresholds

EMAIL_RE = re.compile(
    r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])", re.UNICODE
)

# +49 30 1234567, +49 (0)30 1234567, 0049 30 1234567, 030-1234567, (030) 1234567,
# 030/1234567, 0171 2345678, 01712345678, +1 212 555 0100. Dots are no separator (dates,
# amounts); the digit count is checked afterwards.
PHONE_RE = re.compile(
    r"""
    (?<![\w+@/.,:-])
    (?P<num>
        (?:
            (?P<intl>(?:\+|00)[1-9]\d{0,2})
            (?:[ \t-]?\(0\))?
            [ \t/-]?
            \(?\d{1,5}\)?
          |
            \(?0[1-9]\d{0,4}\)?
        )
        # Subscriber digits: the first group may follow the area code directly, later groups
        # need a separator, and groups are possessive (\d++). Every way to split a digit run
        # is then decided once: optional separators between \d+ groups made the engine try
        # all splits of long digit strings (seconds for 60 digits).
        [ \t/-]?\d++(?:[ \t/-]\d++){0,4}
    )
    (?![\w@]|[.,]\d)
    """,
    re.VERBOSE,
)

IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")

# IBAN lengths of the SEPA countries most likely in German texts (others: the whole match).
IBAN_LENGTHS = {
    "DE": 22, "AT": 20, "CH": 21, "LI": 21, "NL": 18, "BE": 16, "LU": 20, "FR": 27, "IT": 27,
    "ES": 24, "PT": 25, "PL": 28, "CZ": 24, "DK": 18, "SE": 24, "NO": 15, "FI": 18, "IE": 22,
    "GB": 22, "GR": 27, "HU": 28, "SK": 24, "SI": 19, "HR": 21, "RO": 24, "BG": 22, "EE": 20,
    "LV": 21, "LT": 20, "MT": 31, "CY": 28, "IS": 26, "MC": 27, "SM": 27, "TR": 26,
}  # fmt: skip

MASKS = {"email": "[EMAIL]", "phone": "[TELEFON]", "iban": "[IBAN]"}
_REASON = {"email": R.PII_EMAIL, "phone": R.PII_PHONE, "iban": R.PII_IBAN}


def iban_is_valid(iban: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to numbers
    (A=10 .. Z=35), and the number mod 97 must be 1."""
    compact = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", compact):
        return False
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is not None and len(compact) != expected:
        return False
    digits = "".join(str(int(c, 36)) for c in compact[4:] + compact[:4])
    return int(digits) % 97 == 1


def find_ibans(text: str) -> Iterator[tuple[int, int]]:
    for m in IBAN_RE.finditer(text):
        raw = m.group()
        expected = IBAN_LENGTHS.get(raw[:2])
        if expected is not None:
            # The pattern may run on into a following code ("... 00 BIC ..."); cut at the
            # country's length.
            n, end = 0, 0
            for i, c in enumerate(raw):
                if c != " ":
                    n += 1
                    if n == expected:
                        end = i + 1
                        break
            if not end:
                continue
            raw = raw[:end]
        if iban_is_valid(raw):
            yield m.start(), m.start() + len(raw)


def find_phones(text: str) -> Iterator[tuple[int, int]]:
    for m in PHONE_RE.finditer(text):
        num = m.group("num")
        digits = sum(c.isdigit() for c in num)
        lo, hi = (8, 15) if m.group("intl") else (7, 13)
        if not lo <= digits <= hi or num.count("/") > 1:
            continue
        yield m.span("num")


def find_emails(text: str) -> Iterator[tuple[int, int]]:
    if "@" not in text:
        return
    for m in EMAIL_RE.finditer(text):
        yield m.span()


def find_pii(
    text: str, types: tuple[str, ...] = ("email", "phone", "iban")
) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, type) of personal data, sorted by position.

    IBANs are found first and win over phone numbers inside them; e-mail addresses win over
    digits inside them.
    """
    found: list[tuple[int, int, str]] = []
    taken: list[tuple[int, int]] = []

    def free(s: int, e: int) -> bool:
        return all(e <= ts or s >= te for ts, te in taken)

    finders = {"iban": find_ibans, "email": find_emails, "phone": find_phones}
    for kind in ("iban", "email", "phone"):
        if kind not in types:
            continue
        for s, e in finders[kind](text):
            if free(s, e):
                found.append((s, e, kind))
                taken.append((s, e))
    found.sort()
    return found


def mask_pii(text: str, found: list[tuple[int, int, str]]) -> str:
    parts, pos = [], 0
    for s, e, kind in found:
        parts.append(text[pos:s])
        parts.append(MASKS[kind])
        pos = e
    parts.append(text[pos:])
    return "".join(parts)


class PIISignals(QualityStep):
    """Counts e-mail addresses, phone numbers and valid IBANs; flags pii_email / pii_phone /
    pii_iban with spans; with thresholds.pii_mask sets masked_text ([EMAIL], [TELEFON], [IBAN]).
    """

    name = "pii"

    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        types = tuple(thresholds.pii_types)
        for s in batch:
            text = s.text
            # Cheap gates: every pattern needs a digit or an '@'.
            found = find_pii(text, types) if ("@" in text or _has_digit(text)) else []
            counts = {k: 0 for k in types}
            for _, _, kind in found:
                counts[kind] += 1
            for kind in types:
                s.signals[f"pii_{kind}"] = counts[kind]
                if counts[kind]:
                    self.flag(s, _REASON[kind], [(a, b) for a, b, k in found if k == kind])
            if thresholds.pii_mask and found:
                s.masked_text = mask_pii(text, found)
                self.counters["masked"] += 1


_DIGIT_RE = re.compile(r"\d")


def _has_digit(text: str) -> bool:
    return _DIGIT_RE.search(text) is not None
