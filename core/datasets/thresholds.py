"""Quality thresholds as a form: the fields, their values, and what each does to a dataset.

`threshold_fields(values)` describes every threshold as one form field (label, group, kind,
bounds, help), `field_value` / `with_field_value` read and write one field of a thresholds
dict (n-gram limits are fields of their own: "max_top_ngram_char_fraction.3"), and
`threshold_effects` counts, from the signals stored by the last scoring run, how many of
the dataset's samples each threshold would flag with the proposed values and with the saved
ones, and how many would fall below the minimum score. Nothing is re-scored: signals are
the stored (rounded) measurements, so a sample exactly at a limit may count differently
than a new scoring run would decide, and a few effects can only be known after one (noted
on the field).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from annotated_types import Ge, Gt, Le
from pydantic import ValidationError
from sqlalchemy import Engine, select

from core.datasets.errors import DatasetError
from core.datasets.models import DatasetSample
from core.datasets.quality import reasons as R
from core.datasets.quality.models import QualityThresholds
from core.datasets.service import resolve_dataset
from core.db import reading
from core.permissions import Principal, require

FieldKind = Literal["int", "float", "bool", "list", "optional_list", "choice", "mapping"]

GROUPS: tuple[str, ...] = (
    "Length",
    "Encoding",
    "Language",
    "Repetition",
    "Symbols and words",
    "Content",
    "Duplicates",
    "Decision",
)

# key -> (group, label); the order here is the order of the form.
_FIELDS: dict[str, tuple[str, str]] = {
    "min_chars": ("Length", "Minimum characters"),
    "max_chars": ("Length", "Maximum characters"),
    "min_tokens": ("Length", "Minimum tokens"),
    "max_tokens": ("Length", "Maximum tokens"),
    "max_mojibake_sequences": ("Encoding", "Maximum mojibake sequences"),
    "max_control_char_fraction": ("Encoding", "Maximum share of control characters"),
    "max_replacement_chars": ("Encoding", "Maximum replacement characters (\ufffd)"),
    "expected_languages": ("Language", "Expected languages"),
    "min_language_confidence": ("Language", "Minimum language confidence"),
    "language_min_chars": ("Language", "Letters needed for a language check"),
    "language_sample_chars": ("Language", "Characters classified per text"),
    "language_candidates": ("Language", "Candidate languages (empty: all)"),
    "max_duplicate_line_fraction": ("Repetition", "Maximum share of repeated lines"),
    "max_duplicate_line_char_fraction": ("Repetition", "Maximum characters in repeated lines"),
    "max_duplicate_paragraph_fraction": ("Repetition", "Maximum share of repeated paragraphs"),
    "max_duplicate_paragraph_char_fraction": (
        "Repetition",
        "Maximum characters in repeated paragraphs",
    ),
    "max_top_ngram_char_fraction": ("Repetition", "Most frequent {n}-gram: maximum characters"),
    "max_duplicate_ngram_char_fraction": ("Repetition", "Repeated {n}-grams: maximum characters"),
    "gopher_min_words": ("Symbols and words", "Words from which the Gopher rules apply"),
    "max_symbol_to_word_ratio": ("Symbols and words", "Maximum # or ellipses per word"),
    "max_bullet_line_fraction": ("Symbols and words", "Maximum share of bullet lines"),
    "max_ellipsis_line_fraction": ("Symbols and words", "Maximum share of lines ending in …"),
    "min_avg_word_length": ("Symbols and words", "Minimum mean word length"),
    "max_avg_word_length": ("Symbols and words", "Maximum mean word length"),
    "min_alpha_word_fraction": ("Symbols and words", "Minimum share of words with a letter"),
    "min_stop_words": ("Symbols and words", "Minimum distinct function words"),
    "stop_words": ("Symbols and words", "Function words"),
    "pii_types": ("Content", "Personal data to flag"),
    "pii_mask": ("Content", "Mask personal data in the scored text"),
    "blocklist": ("Content", "Blocked terms"),
    "near_duplicate_threshold": ("Duplicates", "Near-duplicate similarity (Jaccard)"),
    "minhash_ngram": ("Duplicates", "Shingle size in words"),
    "num_perm": ("Duplicates", "MinHash permutations"),
    "minhash_seed": ("Duplicates", "MinHash seed"),
    "minhash_hash": ("Duplicates", "Shingle hash"),
    "near_duplicate_verify": ("Duplicates", "Verify near-duplicate candidates"),
    "min_score": ("Decision", "Minimum score to keep"),
    "penalty_overrides": ("Decision", "Penalty overrides (reason=penalty)"),
}

# Effects that the stored signals cannot tell exactly; shown with the count.
_NOTES: dict[str, str] = {
    "near_duplicate_threshold": "only pairs found at the last scoring's threshold are known; "
    "a lower value may find more after scoring again",
    "pii_types": "types that were off at the last scoring are counted after scoring again",
}
# Fields whose effect needs the texts (or a new run): no count, a hint instead.
_RESCORE_ONLY = {
    "language_min_chars",
    "language_sample_chars",
    "language_candidates",
    "stop_words",
    "blocklist",
    "pii_mask",
    "minhash_ngram",
    "num_perm",
    "minhash_seed",
    "minhash_hash",
    "near_duplicate_verify",
}


@dataclass(frozen=True)
class ThresholdField:
    """One form field. `key` is a QualityThresholds field name, or "name.n" for one n-gram
    limit of the dict fields. `options` lists the choices of "choice" and "list" fields
    with a fixed vocabulary (pii_types)."""

    key: str
    label: str
    group: str
    kind: FieldKind
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    has_effect: bool = True


def _bounds(name: str) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in QualityThresholds.model_fields[name].metadata:
        if isinstance(m, Ge):
            lo = m.ge
        elif isinstance(m, Gt):
            lo = m.gt
        elif isinstance(m, Le):
            hi = m.le
    return lo, hi


def threshold_fields(values: Mapping[str, Any] | None = None) -> list[ThresholdField]:
    """Every threshold as a form field, in form order; n-gram limits one field per n of
    `values` (the defaults when not given)."""
    values = dict(values) if values else QualityThresholds().to_dict()
    out: list[ThresholdField] = []
    for name, (group, label) in _FIELDS.items():
        info = QualityThresholds.model_fields[name]
        help_ = (info.description or "") + (
            " Takes effect when the dataset is scored again." if name in _RESCORE_ONLY else ""
        )
        lo, hi = _bounds(name)
        ann = info.annotation
        if name in ("max_top_ngram_char_fraction", "max_duplicate_ngram_char_fraction"):
            for n in sorted(values.get(name, {}), key=int):
                out.append(
                    ThresholdField(
                        f"{name}.{n}", label.format(n=n), group, "float", help_, 0.0, 1.0, 0.01
                    )
                )
            continue
        common = {"help": help_.strip(), "has_effect": name not in _RESCORE_ONLY}
        if ann is bool:
            out.append(ThresholdField(name, label, group, "bool", **common))
        elif ann is int:
            out.append(ThresholdField(name, label, group, "int", minimum=lo, step=1, **common))
        elif ann is float:
            step = 0.1 if name.endswith("word_length") else 0.01
            out.append(
                ThresholdField(
                    name, label, group, "float", minimum=lo, maximum=hi, step=step, **common
                )
            )
        elif name == "pii_types":
            options = get_args(get_args(ann)[0])
            out.append(ThresholdField(name, label, group, "list", options=options, **common))
        elif name == "minhash_hash":
            out.append(
                ThresholdField(name, label, group, "choice", options=get_args(ann), **common)
            )
        elif name == "language_candidates":
            out.append(ThresholdField(name, label, group, "optional_list", **common))
        elif name == "penalty_overrides":
            out.append(ThresholdField(name, label, group, "mapping", **common))
        else:
            out.append(ThresholdField(name, label, group, "list", **common))
    return out


def field_value(values: Mapping[str, Any], key: str) -> Any:
    name, _, n = key.partition(".")
    return values[name][n] if n else values[name]


def with_field_value(values: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of `values` with one field set (n-gram dicts copied, not shared)."""
    out = dict(values)
    name, _, n = key.partition(".")
    if n:
        out[name] = {**out[name], n: value}
    else:
        out[name] = value
    return out


def format_text(f: ThresholdField, value: Any) -> str:
    """The text-box form of a list or mapping field."""
    if f.kind in ("list", "optional_list"):
        return ", ".join(value or [])
    if f.kind == "mapping":
        return ", ".join(f"{k}={v:g}" for k, v in (value or {}).items())
    return str(value)


def parse_text(f: ThresholdField, text: str) -> Any:
    """Read a list ("de, en") or mapping ("too_short=0.3, pii_email=0") text box; raises
    DatasetError naming the field."""
    parts = [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]
    if f.kind == "optional_list":
        return parts or None
    if f.kind == "list":
        return parts
    if f.kind == "mapping":
        out: dict[str, float] = {}
        for p in parts:
            code, sep, raw = p.partition("=")
            try:
                out[code.strip()] = float(raw)
            except ValueError:
                sep = ""
            if not sep:
                raise DatasetError(f"{f.label}: write reason=penalty, e.g. too_short=0.3")
            if code.strip() not in R.REASON_PENALTIES:
                raise DatasetError(
                    f"{f.label}: unknown reason {code.strip()!r}; known: "
                    + ", ".join(R.ALL_REASONS)
                )
        return out
    raise ValueError(f"{f.key} is not a text field")


def validated(values: Mapping[str, Any]) -> QualityThresholds:
    """QualityThresholds from form values; DatasetError names the first bad field."""
    try:
        return QualityThresholds.from_dict(dict(values))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first.get("loc", ())) or "(thresholds)"
        raise DatasetError(f"invalid quality threshold {key}: {first.get('msg')}") from None


# Effects ------------------------------------------------------------------------------------

Signals = Mapping[str, Any]
_Check = Callable[[Signals, QualityThresholds], bool]


def _num(sig: Signals, key: str) -> float:
    v = sig.get(key)
    return float(v) if isinstance(v, int | float) else 0.0


def _gopher(sig: Signals, t: QualityThresholds) -> bool:
    return _num(sig, "words") >= t.gopher_min_words


def _short(sig: Signals, t: QualityThresholds) -> bool:
    return _num(sig, "chars") < t.min_chars or _num(sig, "tokens") < t.min_tokens


def _checks(t: QualityThresholds) -> list[tuple[str, str, _Check]]:
    """(field key, reason code, check) for every threshold the stored signals can decide,
    mirroring the quality steps (core/datasets/quality/*) on their stored measurements."""
    expected = set(t.expected_languages)
    stop = bool(t.stop_words)
    checks: list[tuple[str, str, _Check]] = [
        ("min_chars", R.TOO_SHORT, lambda s, t: _num(s, "chars") < t.min_chars),
        ("min_tokens", R.TOO_SHORT, lambda s, t: _num(s, "tokens") < t.min_tokens),
        (
            "max_chars",
            R.TOO_LONG,
            lambda s, t: not _short(s, t) and _num(s, "chars") > t.max_chars,
        ),
        (
            "max_tokens",
            R.TOO_LONG,
            lambda s, t: not _short(s, t) and _num(s, "tokens") > t.max_tokens,
        ),
        (
            "max_mojibake_sequences",
            R.MOJIBAKE,
            lambda s, t: _num(s, "mojibake_sequences") > t.max_mojibake_sequences,
        ),
        (
            "max_control_char_fraction",
            R.CONTROL_CHARS,
            lambda s, t: (
                _num(s, "control_chars") > 0
                and _num(s, "control_chars") / max(_num(s, "chars"), 1)
                > t.max_control_char_fraction
            ),
        ),
        (
            "max_replacement_chars",
            R.REPLACEMENT_CHARS,
            lambda s, t: _num(s, "replacement_chars") > t.max_replacement_chars,
        ),
        (
            "expected_languages",
            R.WRONG_LANGUAGE,
            lambda s, t: s.get("language", "und") != "und" and s.get("language") not in expected,
        ),
        (
            "min_language_confidence",
            R.UNCERTAIN_LANGUAGE,
            lambda s, t: (
                s.get("language") in expected
                and _num(s, "language_confidence") < t.min_language_confidence
            ),
        ),
        (
            "max_duplicate_line_fraction",
            R.DUPLICATE_LINES,
            lambda s, t: _num(s, "dup_line_fraction") > t.max_duplicate_line_fraction,
        ),
        (
            "max_duplicate_line_char_fraction",
            R.DUPLICATE_LINES,
            lambda s, t: _num(s, "dup_line_char_fraction") > t.max_duplicate_line_char_fraction,
        ),
        (
            "max_duplicate_paragraph_fraction",
            R.DUPLICATE_PARAGRAPHS,
            lambda s, t: _num(s, "dup_paragraph_fraction") > t.max_duplicate_paragraph_fraction,
        ),
        (
            "max_duplicate_paragraph_char_fraction",
            R.DUPLICATE_PARAGRAPHS,
            lambda s, t: (
                _num(s, "dup_paragraph_char_fraction") > t.max_duplicate_paragraph_char_fraction
            ),
        ),
    ]
    for n in t.max_top_ngram_char_fraction:
        checks.append(
            (
                f"max_top_ngram_char_fraction.{n}",
                R.TOP_NGRAM,
                lambda s, t, n=n: (
                    _gopher(s, t)
                    and _num(s, f"top_{n}gram_char_fraction") > t.max_top_ngram_char_fraction[n]
                ),
            )
        )
    for n in t.max_duplicate_ngram_char_fraction:
        checks.append(
            (
                f"max_duplicate_ngram_char_fraction.{n}",
                R.DUPLICATE_NGRAMS,
                lambda s, t, n=n: (
                    _gopher(s, t)
                    and _num(s, f"dup_{n}gram_char_fraction")
                    > t.max_duplicate_ngram_char_fraction[n]
                ),
            )
        )
    checks += [
        (
            "max_symbol_to_word_ratio",
            R.SYMBOL_RATIO,
            lambda s, t: (
                _gopher(s, t)
                and max(_num(s, "hash_to_word_ratio"), _num(s, "ellipsis_to_word_ratio"))
                > t.max_symbol_to_word_ratio
            ),
        ),
        (
            "max_bullet_line_fraction",
            R.BULLET_LINES,
            lambda s, t: (
                _gopher(s, t) and _num(s, "bullet_line_fraction") > t.max_bullet_line_fraction
            ),
        ),
        (
            "max_ellipsis_line_fraction",
            R.ELLIPSIS_LINES,
            lambda s, t: (
                _gopher(s, t) and _num(s, "ellipsis_line_fraction") > t.max_ellipsis_line_fraction
            ),
        ),
        (
            "min_avg_word_length",
            R.WORD_LENGTH,
            lambda s, t: _gopher(s, t) and _num(s, "avg_word_length") < t.min_avg_word_length,
        ),
        (
            "max_avg_word_length",
            R.WORD_LENGTH,
            lambda s, t: _gopher(s, t) and _num(s, "avg_word_length") > t.max_avg_word_length,
        ),
        (
            "min_alpha_word_fraction",
            R.NON_ALPHA_WORDS,
            lambda s, t: (
                _gopher(s, t) and _num(s, "alpha_word_fraction") < t.min_alpha_word_fraction
            ),
        ),
        (
            "min_stop_words",
            R.FEW_STOP_WORDS,
            lambda s, t: stop and _gopher(s, t) and _num(s, "stop_words") < t.min_stop_words,
        ),
        (
            "near_duplicate_threshold",
            R.NEAR_DUPLICATE,
            lambda s, t: (
                "exact_duplicate_of" not in s
                and "near_duplicate_similarity" in s
                and _num(s, "near_duplicate_similarity") >= t.near_duplicate_threshold
            ),
        ),
    ]
    for kind, code in (("email", R.PII_EMAIL), ("phone", R.PII_PHONE), ("iban", R.PII_IBAN)):
        checks.append(
            (
                "pii_types",
                code,
                lambda s, t, kind=kind: kind in t.pii_types and _num(s, f"pii_{kind}") > 0,
            )
        )
    return checks


# Every reason code the checks above decide; other stored reasons (empty, exact duplicates,
# blocked terms) are kept as the last scoring run found them.
_DECIDED = frozenset(code for _, code, _ in _checks(QualityThresholds()))


@dataclass(frozen=True)
class ScoredSample:
    """What the effects are computed from: one sample's stored score, signals and reasons."""

    score: float
    signals: dict[str, Any]
    reasons: list[str]


@dataclass
class EffectCounts:
    """Per field key, how many samples its check flags; `any_flagged`: flagged by at least
    one check (or a kept stored reason); `below_min_score`: would not be kept."""

    per_field: dict[str, int]
    any_flagged: int
    below_min_score: int
    per_reason: dict[str, int] = field(default_factory=dict)


def count_effects(samples: Iterable[ScoredSample], t: QualityThresholds) -> EffectCounts:
    """Apply thresholds `t` to stored signals (pure; see the module docstring)."""
    checks = _checks(t)
    per_field = {key: 0 for key, _, _ in checks}
    per_field["gopher_min_words"] = 0
    per_field["min_score"] = 0
    any_flagged = below = 0
    per_reason: dict[str, int] = {}
    for smp in samples:
        sig = smp.signals
        if R.EMPTY in smp.reasons:
            codes = set(smp.reasons)
        else:
            codes = {c for c in smp.reasons if c not in _DECIDED}
            hit_keys = set()
            for key, code, check in checks:
                if check(sig, t):
                    hit_keys.add(key)
                    codes.add(code)
            for key in hit_keys:
                per_field[key] += 1
            if _gopher(sig, t):
                per_field["gopher_min_words"] += 1
        for code in codes:
            per_reason[code] = per_reason.get(code, 0) + 1
        if codes:
            any_flagged += 1
        if R.score_reasons(codes, t.penalty_overrides) < t.min_score:
            below += 1
    per_field["min_score"] = per_field["penalty_overrides"] = below
    return EffectCounts(per_field, any_flagged, below, per_reason)


@dataclass
class FieldEffect:
    key: str
    flagged: int  # with the proposed values
    flagged_saved: int  # with the saved values
    note: str = ""


@dataclass
class ThresholdEffects:
    """What the proposed thresholds would do to one dataset, next to the saved ones."""

    dataset: str
    total: int  # samples in the dataset
    scored: int  # samples with stored signals (the base of every count)
    fields: dict[str, FieldEffect] = field(default_factory=dict)
    any_flagged: int = 0
    any_flagged_saved: int = 0
    below_min_score: int = 0
    below_min_score_saved: int = 0
    per_reason: dict[str, int] = field(default_factory=dict)  # proposed values
    per_reason_saved: dict[str, int] = field(default_factory=dict)

    def describe(self, key: str) -> str:
        """One line for the form: what this threshold does here."""
        if not self.scored:
            return "Score the dataset to see how many samples this flags."
        e = self.fields.get(key)
        if e is None:
            return "Takes effect when the dataset is scored again."
        if key == "gopher_min_words":
            text = f"The Gopher rules apply to {e.flagged} of {self.scored} scored samples"
        elif key in ("min_score", "penalty_overrides"):
            text = f"{e.flagged} of {self.scored} scored samples would score below it"
        else:
            text = f"Flags {e.flagged} of {self.scored} scored samples"
        if e.flagged != e.flagged_saved:
            text += f" (saved value: {e.flagged_saved})"
        text += "."
        return text + (f" Estimate: {e.note}." if e.note else "")


def load_scored_samples(engine: Engine, dataset_id: int) -> tuple[int, list[ScoredSample]]:
    """(samples in the dataset, the scored ones' stored scores, signals and reasons)."""
    with reading(engine) as s:
        rows = s.execute(
            select(DatasetSample.score, DatasetSample.signals, DatasetSample.reasons).where(
                DatasetSample.dataset_id == dataset_id
            )
        ).all()
    scored = [
        ScoredSample(float(score), dict(signals or {}), list(reasons or []))
        for score, signals, reasons in rows
        if score is not None
    ]
    return len(rows), scored


def threshold_effects(
    engine: Engine, actor: Principal, ref: int | str, proposed: Mapping[str, Any]
) -> ThresholdEffects:
    """How many of the dataset's samples each threshold flags with `proposed` values and
    with the saved ones, from the signals of the last scoring run. Raises DatasetError when
    `proposed` is not valid (naming the field)."""
    require(actor, "datasets:read")
    new = validated(proposed)
    with reading(engine) as s:
        d = resolve_dataset(s, ref)
        name, dataset_id = d.name, d.id
        saved = QualityThresholds.from_dict(d.thresholds or {})
    total, samples = load_scored_samples(engine, dataset_id)
    now, before = count_effects(samples, new), count_effects(samples, saved)
    out = ThresholdEffects(
        dataset=name,
        total=total,
        scored=len(samples),
        any_flagged=now.any_flagged,
        any_flagged_saved=before.any_flagged,
        below_min_score=now.below_min_score,
        below_min_score_saved=before.below_min_score,
        per_reason=now.per_reason,
        per_reason_saved=before.per_reason,
    )
    for key, n in now.per_field.items():
        out.fields[key] = FieldEffect(key, n, before.per_field.get(key, 0), _NOTES.get(key, ""))
    return out
