"""Reason codes: stable, machine-readable names for every failed check, their penalties and labels.

Codes are stored in the DB and in frozen-version manifests, so they never change meaning; new
checks add new codes. The UI shows `REASON_LABELS` (English) or `REASON_LABELS_DE` (German).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# --- codes ---------------------------------------------------------------------------------
EMPTY = "empty"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
MOJIBAKE = "mojibake"
CONTROL_CHARS = "control_chars"
REPLACEMENT_CHARS = "replacement_chars"
WRONG_LANGUAGE = "wrong_language"
UNCERTAIN_LANGUAGE = "uncertain_language"
DUPLICATE_LINES = "duplicate_lines"
DUPLICATE_PARAGRAPHS = "duplicate_paragraphs"
TOP_NGRAM = "top_ngram"
DUPLICATE_NGRAMS = "duplicate_ngrams"
SYMBOL_RATIO = "symbol_ratio"
BULLET_LINES = "bullet_lines"
ELLIPSIS_LINES = "ellipsis_lines"
WORD_LENGTH = "word_length"
NON_ALPHA_WORDS = "non_alpha_words"
FEW_STOP_WORDS = "few_stop_words"
PII_EMAIL = "pii_email"
PII_PHONE = "pii_phone"
PII_IBAN = "pii_iban"
BLOCKLIST = "blocklist"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"

# Penalty per reason, in [0, 1]. The score is the product of (1 - penalty) over the distinct
# reasons of a sample (see scoring.py). Hard fails (0.9 and more) leave a score of at most 0.1,
# whatever else is right with the sample; soft issues compound.
REASON_PENALTIES: dict[str, float] = {
    EMPTY: 1.0,
    EXACT_DUPLICATE: 0.95,
    NEAR_DUPLICATE: 0.9,
    BLOCKLIST: 0.9,
    WRONG_LANGUAGE: 0.9,
    MOJIBAKE: 0.6,
    TOO_SHORT: 0.6,
    TOO_LONG: 0.5,
    DUPLICATE_LINES: 0.5,
    DUPLICATE_PARAGRAPHS: 0.5,
    TOP_NGRAM: 0.5,
    DUPLICATE_NGRAMS: 0.5,
    CONTROL_CHARS: 0.4,
    REPLACEMENT_CHARS: 0.4,
    UNCERTAIN_LANGUAGE: 0.3,
    NON_ALPHA_WORDS: 0.3,
    SYMBOL_RATIO: 0.3,
    WORD_LENGTH: 0.3,
    BULLET_LINES: 0.2,
    ELLIPSIS_LINES: 0.2,
    FEW_STOP_WORDS: 0.2,
    # PII does not make a text bad, but the sample must be reviewed or masked before training.
    PII_EMAIL: 0.2,
    PII_PHONE: 0.2,
    PII_IBAN: 0.3,
}

HARD_FAILS: frozenset[str] = frozenset(
    code for code, penalty in REASON_PENALTIES.items() if penalty >= 0.9
)

REASON_LABELS: dict[str, str] = {
    EMPTY: "Empty text",
    TOO_SHORT: "Too short",
    TOO_LONG: "Too long",
    MOJIBAKE: "Broken encoding (mojibake)",
    CONTROL_CHARS: "Control characters",
    REPLACEMENT_CHARS: "Replacement characters (\ufffd)",
    WRONG_LANGUAGE: "Wrong language",
    UNCERTAIN_LANGUAGE: "Language uncertain",
    DUPLICATE_LINES: "Repeated lines",
    DUPLICATE_PARAGRAPHS: "Repeated paragraphs",
    TOP_NGRAM: "One phrase dominates",
    DUPLICATE_NGRAMS: "Repeated passages",
    SYMBOL_RATIO: "Too many # or ellipses",
    BULLET_LINES: "Mostly bullet lines",
    ELLIPSIS_LINES: "Many lines end with an ellipsis",
    WORD_LENGTH: "Unusual word length",
    NON_ALPHA_WORDS: "Few real words",
    FEW_STOP_WORDS: "Few function words",
    PII_EMAIL: "Contains an e-mail address",
    PII_PHONE: "Contains a phone number",
    PII_IBAN: "Contains an IBAN",
    BLOCKLIST: "Contains a blocked term",
    EXACT_DUPLICATE: "Exact duplicate",
    NEAR_DUPLICATE: "Near duplicate",
}

REASON_LABELS_DE: dict[str, str] = {
    EMPTY: "Leerer Text",
    TOO_SHORT: "Zu kurz",
    TOO_LONG: "Zu lang",
    MOJIBAKE: "Kaputte Zeichenkodierung (Mojibake)",
    CONTROL_CHARS: "Steuerzeichen",
    REPLACEMENT_CHARS: "Ersatzzeichen (\ufffd)",
    WRONG_LANGUAGE: "Falsche Sprache",
    UNCERTAIN_LANGUAGE: "Sprache unsicher",
    DUPLICATE_LINES: "Wiederholte Zeilen",
    DUPLICATE_PARAGRAPHS: "Wiederholte Absätze",
    TOP_NGRAM: "Eine Wendung dominiert",
    DUPLICATE_NGRAMS: "Wiederholte Passagen",
    SYMBOL_RATIO: "Zu viele # oder Auslassungspunkte",
    BULLET_LINES: "Fast nur Aufzählungszeilen",
    ELLIPSIS_LINES: "Viele Zeilen enden mit Auslassungspunkten",
    WORD_LENGTH: "Ungewöhnliche Wortlänge",
    NON_ALPHA_WORDS: "Wenige echte Wörter",
    FEW_STOP_WORDS: "Wenige Funktionswörter",
    PII_EMAIL: "Enthält eine E-Mail-Adresse",
    PII_PHONE: "Enthält eine Telefonnummer",
    PII_IBAN: "Enthält eine IBAN",
    BLOCKLIST: "Enthält einen gesperrten Begriff",
    EXACT_DUPLICATE: "Exaktes Duplikat",
    NEAR_DUPLICATE: "Beinahe-Duplikat",
}

ALL_REASONS: tuple[str, ...] = tuple(REASON_PENALTIES)


def reason_label(code: str, lang: str = "en") -> str:
    """Human label for a reason code; unknown codes are shown as they are."""
    labels = REASON_LABELS_DE if lang == "de" else REASON_LABELS
    return labels.get(code, code)


def score_reasons(reasons: Iterable[str], overrides: Mapping[str, float] | None = None) -> float:
    """Score in [0, 1]: the product of (1 - penalty) over the distinct reasons.

    A product rather than 1 - sum keeps the score in range without clipping and keeps it
    strictly monotonic: every additional reason lowers the score (unless its penalty is 0),
    and one hard fail caps the score at 1 - its penalty. Unknown codes cost 0.5.
    """
    score = 1.0
    for code in set(reasons):
        penalty = None if overrides is None else overrides.get(code)
        if penalty is None:
            penalty = REASON_PENALTIES.get(code, 0.5)
        score *= 1.0 - min(max(penalty, 0.0), 1.0)
    return score
