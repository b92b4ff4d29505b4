"""The per-sample working state and the base class of pipeline steps."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from core.datasets.quality.models import QualityThresholds, SignalValue, Span

# Words and runs of punctuation, whitespace dropped: close to what spaCy's blank German
# tokenizer gives datatrove's Gopher filters (punctuation as separate tokens), at a fraction of
# the cost. Word tokens are exactly the matches of r"\w+", which near-dup shingling relies on.
TOKEN_RE = re.compile(r"\w+|[^\w\s]+")
_WORD_RE = re.compile(r"\w+")
_PARAGRAPH_RE = re.compile(r"\n{2,}")
_LINE_RE = re.compile(r"\n+")


def _is_word(token: str) -> bool:
    # re's \w for str patterns is "alphanumeric or underscore"; a token from TOKEN_RE is a word
    # token iff its first character is one.
    c = token[0]
    return c.isalnum() or c == "_"


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping or touching spans merged (fewer, cleaner highlights in the UI)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


class Sample:
    """Mutable state of one sample while it passes through the steps.

    Tokenisation, lines and paragraphs are computed once, on first use, and shared by all
    steps: datatrove spends 78% of its Gopher time tokenising, twice per document.
    """

    __slots__ = (
        "id",
        "text",
        "signals",
        "reasons",
        "spans",
        "masked_text",
        "duplicate_of",
        "signature",
        "_tokens",
        "_words",
        "_lines",
        "_paragraphs",
    )

    def __init__(self, id: str, text: str) -> None:
        self.id = id
        self.text = text
        self.signals: dict[str, SignalValue] = {}
        self.reasons: list[str] = []
        self.spans: list[Span] = []
        self.masked_text: str | None = None
        self.duplicate_of: str | None = None
        self.signature: bytes | None = None
        self._tokens: list[str] | None = None
        self._words: list[str] | None = None
        self._lines: list[str] | None = None
        self._paragraphs: list[str] | None = None

    def flag(self, reason: str, spans: Iterable[tuple[int, int]] = ()) -> None:
        """Record a failed check once, with optional (start, end) character spans."""
        if reason not in self.reasons:
            self.reasons.append(reason)
        self.spans.extend((s, e, reason) for s, e in spans)

    @property
    def tokens(self) -> list[str]:
        """Words and punctuation runs, in order (Gopher's notion of 'words')."""
        if self._tokens is None:
            self._tokens = TOKEN_RE.findall(self.text)
        return self._tokens

    @property
    def words(self) -> list[str]:
        """Only the word tokens: exactly re.findall(r"\\w+", text)."""
        if self._words is None:
            if self._tokens is None:
                # Only words needed (so far): one regex pass is cheaper than tokens + filter.
                self._words = _WORD_RE.findall(self.text)
            else:
                self._words = [t for t in self._tokens if _is_word(t)]
        return self._words

    @property
    def lines(self) -> list[str]:
        """Lines as datatrove's GopherRepetitionFilter splits them (runs of newlines)."""
        if self._lines is None:
            self._lines = _LINE_RE.split(self.text)
        return self._lines

    @property
    def paragraphs(self) -> list[str]:
        """Paragraphs: the stripped text split on blank lines (as Gopher / datatrove)."""
        if self._paragraphs is None:
            self._paragraphs = _PARAGRAPH_RE.split(self.text.strip())
        return self._paragraphs


class QualityStep:
    """One job in the pipeline: measure signals for a batch of samples and flag reasons.

    Subclasses implement `process`. The pipeline calls `setup` once before the first batch of
    a run, times every `process` call (wall and CPU) and counts the samples each step saw; a
    step counts its own findings with `self.flag(sample, reason, ...)` (one per reason).
    """

    name: str = "step"

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.seconds = 0.0  # wall-clock
        self.cpu_seconds = 0.0  # this process's CPU time: what the step costs on a busy machine

    def setup(self, thresholds: QualityThresholds) -> None:
        """Prepare for a run with these thresholds (build indexes, compile patterns)."""

    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        raise NotImplementedError

    def flag(self, sample: Sample, reason: str, spans: Iterable[tuple[int, int]] = ()) -> None:
        self.counters[reason] += 1
        sample.flag(reason, spans)

    def stats(self) -> dict[str, int | float]:
        out: dict[str, int | float] = dict(self.counters)
        out["seconds"] = round(self.seconds, 4)
        out["cpu_seconds"] = round(self.cpu_seconds, 4)
        return out

    def reset_counters(self) -> None:
        self.counters.clear()
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
