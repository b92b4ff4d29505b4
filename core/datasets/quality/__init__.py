"""Automatic quality scoring and deduplication of dataset samples (pure library code).

    from core.datasets.quality import QualityInput, QualityPipeline, QualityThresholds
    thresholds = QualityThresholds.from_dict(stored) if stored else QualityThresholds()
    pipeline = QualityPipeline(thresholds=thresholds, on_progress=report)  # default steps
    for r in pipeline.run(QualityInput(s.id, text) for s in rows):  # generator in and out
        save(r.id, r.score, r.keep, r.reasons, r.signals, r.flagged_spans, r.duplicate_of)
    pipeline.stats()  # counters and seconds per step

Score: product of (1 - penalty) over a sample's reason codes (reasons.py); 1.0 when nothing
was found, at most 0.1 after a hard fail (duplicate, blocked term, wrong language, empty).

Public API:
    QualityInput, QualityResult, QualityThresholds        plain data (models.py)
    QualityPipeline, default_steps, gopher_steps           the runner (pipeline.py)
    QualityStep, Sample                                    base of the steps (base.py)
    LengthSignals, EncodingSignals, LanguageSignal,
    RepetitionSignals, SymbolWordRatio, WordStatistics,
    PIISignals, Blocklist, ExactDuplicates, NearDuplicates the steps
    MinHasher                                              datasketch-equal MinHash signatures
    language_identifier                                    cached offline langid classifier
    REASON_LABELS, REASON_LABELS_DE, REASON_PENALTIES,
    ALL_REASONS, score_reasons, reason_label               reason codes (reasons.py)
"""

from core.datasets.quality.base import QualityStep, Sample
from core.datasets.quality.blocklist import Blocklist
from core.datasets.quality.dedup import (
    ExactDuplicates,
    NearDuplicates,
    content_hash,
    normalise_for_dedup,
)
from core.datasets.quality.language import LanguageSignal, language_identifier
from core.datasets.quality.minhash import MinHasher, signature_from_bytes, signature_to_bytes
from core.datasets.quality.models import QualityInput, QualityResult, QualityThresholds
from core.datasets.quality.pii import PIISignals, find_pii, iban_is_valid, mask_pii
from core.datasets.quality.pipeline import QualityPipeline, default_steps, gopher_steps
from core.datasets.quality.reasons import (
    ALL_REASONS,
    HARD_FAILS,
    REASON_LABELS,
    REASON_LABELS_DE,
    REASON_PENALTIES,
    reason_label,
    score_reasons,
)
from core.datasets.quality.repetition import RepetitionSignals
from core.datasets.quality.signals import (
    EncodingSignals,
    LengthSignals,
    SymbolWordRatio,
    WordStatistics,
)

__all__ = [
    "ALL_REASONS",
    "HARD_FAILS",
    "REASON_LABELS",
    "REASON_LABELS_DE",
    "REASON_PENALTIES",
    "Blocklist",
    "EncodingSignals",
    "ExactDuplicates",
    "LanguageSignal",
    "LengthSignals",
    "MinHasher",
    "NearDuplicates",
    "PIISignals",
    "QualityInput",
    "QualityPipeline",
    "QualityResult",
    "QualityStep",
    "QualityThresholds",
    "RepetitionSignals",
    "Sample",
    "SymbolWordRatio",
    "WordStatistics",
    "content_hash",
    "default_steps",
    "find_pii",
    "gopher_steps",
    "iban_is_valid",
    "language_identifier",
    "mask_pii",
    "normalise_for_dedup",
    "reason_label",
    "score_reasons",
    "signature_from_bytes",
    "signature_to_bytes",
]
