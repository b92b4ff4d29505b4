"""Configurable blocked terms (case-insensitive, whole words)."""

from __future__ import annotations

import re

from core.datasets.quality import reasons as R
from core.datasets.quality.base import QualityStep, Sample
from core.datasets.quality.models import QualityThresholds


def compile_blocklist(terms: list[str]) -> re.Pattern[str] | None:
    """One alternation for all terms, longest first so a longer term wins over its prefix.

    Word boundaries are lookarounds on \\w rather than \\b, so terms that start or end with
    punctuation ("c++", "@admin") still match as whole tokens. Inner whitespace matches any
    whitespace run (a term split over a line break is still found).
    """
    cleaned = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)
    if not cleaned:
        return None
    alts = [r"\s+".join(re.escape(p) for p in t.split()) for t in cleaned]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


class Blocklist(QualityStep):
    """Flags blocklist with the spans of every blocked term; signal blocklist_hits."""

    name = "blocklist"

    def __init__(self) -> None:
        super().__init__()
        self._key: tuple[str, ...] | None = None
        self._pattern: re.Pattern[str] | None = None

    def setup(self, thresholds: QualityThresholds) -> None:
        key = tuple(thresholds.blocklist)
        if key != self._key:
            self._key = key
            self._pattern = compile_blocklist(thresholds.blocklist)

    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        if self._key != tuple(thresholds.blocklist):
            self.setup(thresholds)
        pattern = self._pattern
        for s in batch:
            if pattern is None:
                s.signals["blocklist_hits"] = 0
                continue
            spans = [m.span() for m in pattern.finditer(s.text)]
            s.signals["blocklist_hits"] = len(spans)
            if spans:
                self.flag(s, R.BLOCKLIST, spans)
