"""Plain data of the quality pipeline: what goes in, what comes out, and the thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SignalValue = float | int | str
Span = tuple[int, int, str]

# Frequent German function words. Gopher uses English ones ("the", "be", "to", ...); for German
# text the same check needs German ones, and a list long enough that a genuine paragraph always
# hits two of them.
GERMAN_STOP_WORDS: tuple[str, ...] = (
    "der", "die", "das", "und", "ist", "zu", "den", "mit", "von", "nicht", "ein", "eine",
    "in", "im", "auf", "für", "sich", "es", "dem", "des", "sie", "wir", "ich", "auch", "bei",
    "oder", "wird", "werden", "sind", "an", "aus", "als", "nach", "wie", "kann", "dass",
)  # fmt: skip

# Languages langid chooses among. Restricting the candidates makes the decision more robust on
# short texts (fewer exotic false winners) and faster; German must compete with its neighbours
# and with English, the usual contamination.
DEFAULT_LANGUAGE_CANDIDATES: tuple[str, ...] = (
    "de", "en", "fr", "it", "es", "pt", "nl", "da", "sv", "no", "pl", "cs", "tr", "ru", "la",
)  # fmt: skip


@dataclass(slots=True)
class QualityInput:
    """One sample to score. For conversations the caller joins the message contents with
    "\\n\\n", so flagged span offsets refer to that joined text."""

    id: str
    text: str


@dataclass(slots=True)
class QualityResult:
    """Outcome for one sample.

    `signals` holds the raw measurements (stable names, JSON-able values), `reasons` the codes
    of failed checks (see reasons.py), `flagged_spans` (start, end, reason) character offsets
    into the input text for highlighting, `score` in [0, 1] and `keep` = score >= min_score.
    `duplicate_of` is the id of the representative this sample duplicates (exact or near),
    `masked_text` is set only when PII masking is on and something was masked, `signature` only
    when NearDuplicates(keep_signatures=True) (uint32 little-endian MinHash bytes, to store
    and seed later cross-dataset checks).
    """

    id: str
    signals: dict[str, SignalValue]
    score: float
    reasons: list[str]
    flagged_spans: list[Span]
    keep: bool = True
    duplicate_of: str | None = None
    masked_text: str | None = None
    signature: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "signals": dict(self.signals),
            "score": self.score,
            "reasons": list(self.reasons),
            "flagged_spans": [list(s) for s in self.flagged_spans],
            "keep": self.keep,
            "duplicate_of": self.duplicate_of,
            "masked_text": self.masked_text,
        }


class QualityThresholds(BaseModel):
    """Every threshold of the pipeline, with defaults for German SFT samples.

    Stored per dataset and in frozen-version manifests: use `to_dict()` / `from_dict()`.
    Unknown keys are rejected so that a typo in a config never silently disables a check.
    Gopher defaults come from Rae et al. 2021 (arXiv:2112.11446), table A1 and section A.1.1.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: int = Field(1, description="Bumped when a field changes meaning.")

    # Length. Tokens come from the tokenizer given to LengthSignals, else a regex word count.
    min_chars: int = Field(20, ge=0, description="Fewer characters: too_short.")
    max_chars: int = Field(100_000, ge=1, description="More characters: too_long.")
    min_tokens: int = Field(3, ge=0, description="Fewer tokens: too_short.")
    max_tokens: int = Field(8192, ge=1, description="More tokens: too_long (context length).")

    # Encoding.
    max_mojibake_sequences: int = Field(0, ge=0, description="More: mojibake.")
    max_control_char_fraction: float = Field(
        0.0, ge=0, le=1, description="Control characters (not \\t \\n \\r) per character."
    )
    max_replacement_chars: int = Field(0, ge=0, description="More U+FFFD: replacement_chars.")

    # Language (langid, offline).
    expected_languages: list[str] = Field(default_factory=lambda: ["de"])
    min_language_confidence: float = Field(
        0.8, ge=0, le=1, description="Expected language below this probability: uncertain."
    )
    language_candidates: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_LANGUAGE_CANDIDATES),
        description="Languages langid chooses among; None: all 97 of its model.",
    )
    language_min_chars: int = Field(
        40, ge=0, description="Texts with fewer letters are not language-checked ('und')."
    )
    language_sample_chars: int = Field(
        2000, ge=100, description="Longer texts are classified on head + middle windows."
    )

    # Repetition (Gopher table A1).
    max_duplicate_line_fraction: float = Field(0.30, ge=0, le=1)
    max_duplicate_paragraph_fraction: float = Field(0.30, ge=0, le=1)
    max_duplicate_line_char_fraction: float = Field(0.20, ge=0, le=1)
    max_duplicate_paragraph_char_fraction: float = Field(0.20, ge=0, le=1)
    max_top_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> limit on the characters covered by the most frequent word n-gram.",
    )
    max_duplicate_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> limit on the characters in repeated word n-grams.",
    )

    # Symbols and word statistics (Gopher quality rules).
    max_symbol_to_word_ratio: float = Field(0.10, ge=0, description="('#' + ellipses) / words.")
    max_bullet_line_fraction: float = Field(0.90, ge=0, le=1)
    max_ellipsis_line_fraction: float = Field(0.30, ge=0, le=1)
    min_avg_word_length: float = Field(3.0, ge=0)
    max_avg_word_length: float = Field(
        12.0, ge=0, description="Gopher uses 10; German compounds run longer."
    )
    min_alpha_word_fraction: float = Field(0.80, ge=0, le=1)
    stop_words: list[str] = Field(default_factory=lambda: list(GERMAN_STOP_WORDS))
    min_stop_words: int = Field(2, ge=0, description="Distinct stop words a text must contain.")
    gopher_min_words: int = Field(
        50,
        ge=0,
        description="Gopher's word-statistics, symbol and n-gram rules apply from this many "
        "words: on a two-line chat answer one phrase always 'dominates'. Gopher drops shorter "
        "documents outright; here length has its own check (min_chars, min_tokens).",
    )

    # Content.
    blocklist: list[str] = Field(
        default_factory=list, description="Case-insensitive terms matched on word boundaries."
    )
    pii_types: list[Literal["email", "phone", "iban"]] = Field(
        default_factory=lambda: ["email", "phone", "iban"]
    )
    pii_mask: bool = Field(False, description="Produce masked_text with [EMAIL]/[TELEFON]/[IBAN].")

    # Deduplication.
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1, description="Jaccard threshold.")
    minhash_ngram: int = Field(5, ge=1, description="Shingle size in words.")
    num_perm: int = Field(128, ge=8, description="MinHash permutations.")
    minhash_seed: int = Field(1, description="Seed of the permutations (datasketch's default).")
    minhash_hash: Literal["sha1", "xxh32"] = Field(
        "sha1",
        description="Shingle hash. sha1 equals datasketch's default MinHash; xxh32 is ~3x faster "
        "and equals datasketch MinHash(hashfunc=xxhash.xxh32_intdigest).",
    )
    near_duplicate_verify: bool = Field(
        True, description="Confirm LSH candidates by estimated Jaccard >= threshold."
    )

    # Decision.
    min_score: float = Field(0.5, ge=0, le=1, description="keep = score >= min_score.")
    penalty_overrides: dict[str, float] = Field(
        default_factory=dict, description="Reason code -> penalty replacing the default."
    )

    @field_validator("expected_languages", "language_candidates")
    @classmethod
    def _lower_codes(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [c.strip().lower() for c in v]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (n-gram keys become strings; from_dict turns them back)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityThresholds:
        return cls.model_validate(data)
