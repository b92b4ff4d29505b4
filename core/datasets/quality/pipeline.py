"""The quality pipeline: steps over batches of samples, then a score per sample.

    pipeline = QualityPipeline(default_steps(), QualityThresholds(), on_progress=print)
    for result in pipeline.run(QualityInput(id, text) for id, text in rows):
        store(result)
    pipeline.stats()

Generator in, generator out: only one batch is held at a time, so memory stays flat however
many samples pass (the dedup indexes grow by ~1 KB per sample; see bench/RESULTS.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from core.datasets.quality.base import QualityStep, Sample
from core.datasets.quality.blocklist import Blocklist
from core.datasets.quality.dedup import ExactDuplicates, NearDuplicates
from core.datasets.quality.language import LanguageSignal
from core.datasets.quality.models import QualityInput, QualityResult, QualityThresholds
from core.datasets.quality.pii import PIISignals
from core.datasets.quality.reasons import score_reasons
from core.datasets.quality.repetition import RepetitionSignals
from core.datasets.quality.signals import (
    EncodingSignals,
    LengthSignals,
    SymbolWordRatio,
    WordStatistics,
)


def gopher_steps() -> list[QualityStep]:
    """The Gopher-style heuristics only (what datatrove's GopherRepetitionFilter +
    GopherQualityFilter compute)."""
    return [RepetitionSignals(), SymbolWordRatio(), WordStatistics()]


def default_steps(
    tokenizer: Any = None,
    reference: Iterable[tuple[str, str]] | None = None,
    reference_hashes: Iterable[tuple[str, str]] | None = None,
    reference_signatures: Iterable[tuple[str, Any]] | None = None,
    dedup: bool = True,
    keep_signatures: bool = False,
) -> list[QualityStep]:
    """Every step, in an order where the cheap hard checks come first and exact dedup precedes
    near dedup (so exact copies are not hashed again).

    reference / reference_hashes / reference_signatures seed the dedup steps with samples of
    other datasets (see ExactDuplicates and NearDuplicates). `reference` is read by both
    dedup steps, so it is materialised as a list here.
    """
    if reference is not None:
        reference = list(reference)
    steps: list[QualityStep] = [
        LengthSignals(tokenizer),
        EncodingSignals(),
        LanguageSignal(),
        RepetitionSignals(),
        SymbolWordRatio(),
        WordStatistics(),
        PIISignals(),
        Blocklist(),
    ]
    if dedup:
        steps.append(ExactDuplicates(reference=reference, reference_hashes=reference_hashes))
        steps.append(
            NearDuplicates(
                reference=reference,
                reference_signatures=reference_signatures,
                keep_signatures=keep_signatures,
            )
        )
    return steps


class QualityPipeline:
    """Runs steps over samples in batches and scores each sample.

    steps: the steps, in order (default: default_steps()). thresholds: QualityThresholds.
    batch_size: samples per batch (steps such as a HF tokenizer work per batch).
    on_progress: called with the number of samples done after every batch.

    The score is reasons.score_reasons(reasons, thresholds.penalty_overrides): 1.0 for a
    sample without findings, the product of (1 - penalty) over its reasons otherwise; hard
    fails (exact / near duplicate, blocklist, wrong language, empty) leave at most 0.1.
    keep = score >= thresholds.min_score.
    """

    def __init__(
        self,
        steps: list[QualityStep] | None = None,
        thresholds: QualityThresholds | None = None,
        batch_size: int = 256,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.steps = default_steps() if steps is None else list(steps)
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique, got {names}")
        self.thresholds = thresholds or QualityThresholds()
        self.batch_size = batch_size
        self.on_progress = on_progress
        self._samples = 0
        self._batches = 0
        self._kept = 0
        self._seconds = 0.0
        self._cpu_seconds = 0.0

    def run(self, samples: Iterable[QualityInput | tuple[str, str]]) -> Iterator[QualityResult]:
        """Yield one QualityResult per input, in input order."""
        for step in self.steps:
            step.setup(self.thresholds)
        batch: list[Sample] = []
        for item in samples:
            if isinstance(item, QualityInput):
                batch.append(Sample(item.id, item.text))
            else:
                sid, text = item
                batch.append(Sample(sid, text))
            if len(batch) >= self.batch_size:
                yield from self._run_batch(batch)
                batch = []
        if batch:
            yield from self._run_batch(batch)

    __call__ = run

    def run_one(self, sample: QualityInput) -> QualityResult:
        """Score a single sample (dedup state is shared with run())."""
        return next(iter(self.run([sample])))

    def _run_batch(self, batch: list[Sample]) -> list[QualityResult]:
        t = self.thresholds
        start, cpu_start = time.perf_counter(), time.process_time()
        for step in self.steps:
            t0, c0 = time.perf_counter(), time.process_time()
            step.process(batch, t)
            step.seconds += time.perf_counter() - t0
            step.cpu_seconds += time.process_time() - c0
            step.counters["samples"] += len(batch)
        results = []
        overrides = t.penalty_overrides or None
        for s in batch:
            score = score_reasons(s.reasons, overrides)
            keep = score >= t.min_score
            self._kept += keep
            results.append(
                QualityResult(
                    id=s.id,
                    signals=s.signals,
                    score=round(score, 6),
                    reasons=s.reasons,
                    flagged_spans=sorted(s.spans),
                    keep=keep,
                    duplicate_of=s.duplicate_of,
                    masked_text=s.masked_text,
                    signature=s.signature,
                )
            )
        self._samples += len(batch)
        self._batches += 1
        self._seconds += time.perf_counter() - start
        self._cpu_seconds += time.process_time() - cpu_start
        if self.on_progress is not None:
            self.on_progress(self._samples)
        return results

    def stats(self) -> dict[str, dict[str, int | float]]:
        """Counters of the whole pipeline ("pipeline") and of every step (by step name): samples
        seen, one counter per reason flagged, seconds spent (wall-clock and CPU), and
        step-specific counters."""
        out: dict[str, dict[str, int | float]] = {
            "pipeline": {
                "samples": self._samples,
                "batches": self._batches,
                "kept": self._kept,
                "dropped": self._samples - self._kept,
                "seconds": round(self._seconds, 4),
                "cpu_seconds": round(self._cpu_seconds, 4),
            }
        }
        for step in self.steps:
            out[step.name] = step.stats()
        return out
