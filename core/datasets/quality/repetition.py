"""Gopher-style repetition signals (Rae et al. 2021, table A1), computed without string n-grams.

datatrove builds every n-gram as a joined string and counts them in Python dicts, for n = 2..10.
Here each token is hashed once (Python's cached str hash), n-gram hashes are rolled with numpy
(h_n[i] = h_{n-1}[i] * M + h_1[i+n-1], wrapping uint64), and counting is np.unique. The numbers
are the same as datatrove's definitions, up to 64-bit hash collisions (probability ~L^2 / 2^64
per document) and to datatrove's duplicate n-grams being joined without separators (so there
"ab c" and "a bc" collide, here they do not).
"""

from __future__ import annotations

from collections import Counter
from operator import itemgetter

import numpy as np

from core.datasets.quality import reasons as R
from core.datasets.quality.base import TOKEN_RE, QualityStep, Sample, merge_spans
from core.datasets.quality.models import QualityThresholds

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio): rolls the hash


def _duplicates(parts: list[str]) -> tuple[int, int, list[int]]:
    """(duplicate elements, their characters, indexes of the repeated occurrences)."""
    counts = Counter(parts)
    if len(counts) == len(parts):
        return 0, 0, []
    seen: set[str] = set()
    dup_n = dup_chars = 0
    where: list[int] = []
    for i, p in enumerate(parts):
        if p in seen:
            dup_n += 1
            dup_chars += len(p)
            where.append(i)
        else:
            seen.add(p)
    return dup_n, dup_chars, where


def _part_spans(text: str, parts: list[str], indexes: list[int]) -> list[tuple[int, int]]:
    """Character spans of parts[i] for i in indexes (parts appear in order in text)."""
    wanted = set(indexes)
    spans, pos = [], 0
    for i, p in enumerate(parts):
        pos = text.find(p, pos)
        if pos < 0:  # cannot happen for parts split from text; be defensive for spans only
            break
        if i in wanted and p:
            spans.append((pos, pos + len(p)))
        pos += len(p)
    return spans


def _top_ngram_chars(keys: np.ndarray, span_chars: np.ndarray) -> tuple[int, int]:
    """(len(most common n-gram) * its count, its first position); ties go to the n-gram seen
    first, as with Counter.most_common(1)."""
    sk = np.sort(keys)
    starts = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1])))
    counts = np.diff(np.append(starts, len(sk)))
    top = int(counts.max())
    if top == 1:
        return int(span_chars[0]), 0
    tied = sk[starts[counts == top]]
    # First position holding one of the tied keys (usually there is only one).
    hit = keys == tied[0] if tied.size == 1 else np.isin(keys, tied)
    first = int(np.argmax(hit))
    return int(span_chars[first]) * top, first


def _repeated(keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the entries whose value occurs more than once."""
    order = np.argsort(keys)
    sk = keys[order]
    eq = sk[1:] == sk[:-1]
    rep_sorted = np.zeros(len(sk), dtype=bool)
    rep_sorted[1:] = eq
    rep_sorted[:-1] |= eq
    mask = np.empty(len(sk), dtype=bool)
    mask[order] = rep_sorted
    return mask


def _dup_ngram_chars(
    candidates: np.ndarray, keys: np.ndarray, chars: np.ndarray, n: int
) -> tuple[int, list[int]]:
    """datatrove's find_all_duplicate: walk the n-grams; a repeated one counts its characters
    and the walk jumps n tokens ahead (so overlapping repeats are not counted twice).

    `candidates` are the (sorted) positions of n-grams that occur at least twice, with their
    keys and character counts. An n-gram that occurs once can never be "seen before", and
    stepping over it changes nothing, so the walk only visits the candidates: the same result
    as datatrove's walk over every position, in a handful of Python iterations for ordinary
    text. Returns (repeated characters, start positions of the repeated n-grams).
    """
    seen: set[int] = set()
    total = 0
    where: list[int] = []
    idx = 0
    for pos, key, nchars in zip(candidates.tolist(), keys.tolist(), chars.tolist(), strict=True):
        if pos < idx:  # inside the jump after a repeat
            continue
        if key in seen:
            total += nchars
            where.append(pos)
            idx = pos + n
        else:
            seen.add(key)
            idx = pos + 1
    return total, where


class RepetitionSignals(QualityStep):
    """Duplicate lines / paragraphs (count and character fractions), top 2/3/4-gram character
    fractions and duplicated 5..10-gram character fractions, over the same tokens as the other
    Gopher steps (words and punctuation runs). Flags duplicate_paragraphs, duplicate_lines,
    top_ngram, duplicate_ngrams, with spans of the repeated material.

    Line and paragraph checks apply to every text; n-gram checks from gopher_min_words words.
    """

    name = "repetition"

    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        for s in batch:
            self._one(s, thresholds)

    def _one(self, s: Sample, t: QualityThresholds) -> None:
        text = s.text
        n_chars = len(text)
        sig = s.signals
        if not n_chars:
            return

        paras = s.paragraphs
        p_dup, p_chars, p_where = _duplicates(paras)
        sig["dup_paragraph_fraction"] = round(p_dup / len(paras), 4)
        sig["dup_paragraph_char_fraction"] = round(p_chars / n_chars, 4)
        if (
            p_dup / len(paras) > t.max_duplicate_paragraph_fraction
            or p_chars / n_chars > t.max_duplicate_paragraph_char_fraction
        ):
            self.flag(s, R.DUPLICATE_PARAGRAPHS, _part_spans(text, paras, p_where))

        lines = s.lines
        l_dup, l_chars, l_where = _duplicates(lines)
        sig["dup_line_fraction"] = round(l_dup / len(lines), 4)
        sig["dup_line_char_fraction"] = round(l_chars / n_chars, 4)
        if (
            l_dup / len(lines) > t.max_duplicate_line_fraction
            or l_chars / n_chars > t.max_duplicate_line_char_fraction
        ):
            self.flag(s, R.DUPLICATE_LINES, _part_spans(text, lines, l_where))

        tokens = s.tokens
        check_ngrams = len(s.words) >= t.gopher_min_words
        top_limits = t.max_top_ngram_char_fraction
        dup_limits = t.max_duplicate_ngram_char_fraction
        backend = _NgramsPython if len(tokens) < SMALL_DOC_TOKENS else _NgramsNumpy
        grams = backend(tokens)

        top_fail: list[int] = []
        for n in sorted(top_limits):
            frac = grams.top_chars(n) / n_chars
            sig[f"top_{n}gram_char_fraction"] = round(frac, 4)
            if frac > top_limits[n]:
                top_fail.append(n)

        dup_fail: list[tuple[int, list[int]]] = []
        for n in sorted(dup_limits):
            chars, where = grams.dup_chars(n)
            frac = chars / n_chars
            sig[f"dup_{n}gram_char_fraction"] = round(frac, 4)
            if frac > dup_limits[n]:
                dup_fail.append((n, where))

        if check_ngrams and (top_fail or dup_fail):
            offsets = [m.span() for m in TOKEN_RE.finditer(text)]
            if top_fail:
                n = top_fail[0]
                spans = [(offsets[i][0], offsets[i + n - 1][1]) for i in grams.top_positions(n)]
                self.flag(s, R.TOP_NGRAM, merge_spans(spans))
            if dup_fail:
                n, where = dup_fail[0]
                spans = [(offsets[i][0], offsets[i + n - 1][1]) for i in where]
                self.flag(s, R.DUPLICATE_NGRAMS, merge_spans(spans))


# Below this many tokens plain Python (tuples in a Counter) beats numpy, whose per-call
# overhead dominates on chat-sized samples; above it numpy wins by far. Both give the same
# numbers (tests run every text through both).
SMALL_DOC_TOKENS = 400


class _NgramsPython:
    """n-gram statistics with tuples and Counters (short texts)."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self._grams: dict[int, list[tuple[str, ...]]] = {}
        self._counts: dict[int, Counter] = {}
        self._cand: dict[int, list[int]] = {}  # n -> positions of n-grams occurring twice+

    def _get(self, n: int) -> tuple[list[tuple[str, ...]], Counter]:
        if n not in self._grams:
            grams = list(zip(*(self.tokens[i:] for i in range(n)), strict=False))
            self._grams[n] = grams
            self._counts[n] = Counter(grams)
        return self._grams[n], self._counts[n]

    def _top(self, n: int) -> tuple[tuple[str, ...], int] | None:
        grams, counts = self._get(n)
        if not grams:
            return None
        # max() keeps the first of equal counts, and a Counter iterates in first-seen order:
        # the same choice as Counter.most_common(1) in datatrove.
        return max(counts.items(), key=itemgetter(1))

    def top_chars(self, n: int) -> int:
        top = self._top(n)
        if top is None:
            return 0
        gram, count = top
        return (sum(map(len, gram)) + n - 1) * count

    def top_positions(self, n: int) -> list[int]:
        top = self._top(n)
        grams, _ = self._get(n)
        return [] if top is None else [i for i, g in enumerate(grams) if g == top[0]]

    def dup_chars(self, n: int) -> tuple[int, list[int]]:
        tokens = self.tokens
        last = len(tokens) - n  # last start position of an n-gram
        shorter = [m for m in self._cand if m < n]
        if shorter:
            # A repeated n-gram has a repeated prefix: only look where shorter ones repeated.
            pos = [p for p in self._cand[max(shorter)] if p <= last]
            grams = [tuple(tokens[p : p + n]) for p in pos]
        else:
            grams = self._get(n)[0]
            pos = list(range(len(grams)))
        counts = Counter(grams)
        cand = [(p, g) for p, g in zip(pos, grams, strict=True) if counts[g] > 1]
        self._cand[n] = [p for p, _ in cand]
        seen: set[tuple[str, ...]] = set()
        total, idx, where = 0, 0, []
        for p, g in cand:
            if p < idx:  # inside the jump after a repeat
                continue
            if g in seen:
                total += sum(map(len, g))
                where.append(p)
                idx = p + n
            else:
                seen.add(g)
                idx = p + 1
        return total, where


class _NgramsNumpy:
    """n-gram statistics on rolling 64-bit hashes (long texts)."""

    def __init__(self, tokens: list[str]) -> None:
        n_tok = len(tokens)
        self.n_tok = n_tok
        self.h1 = np.fromiter(map(hash, tokens), dtype=np.int64, count=n_tok).view(np.uint64)
        lens = np.fromiter(map(len, tokens), dtype=np.int64, count=n_tok)
        self.cum = np.zeros(n_tok + 1, dtype=np.int64)
        np.cumsum(lens, out=self.cum[1:])
        # hashes[n] = rolling hash of the n-gram starting at each position.
        self._hashes: dict[int, np.ndarray] = {1: self.h1}
        self._cand: dict[int, np.ndarray] = {}

    def keys(self, n: int) -> np.ndarray | None:
        if n > self.n_tok:
            return None
        top = max(self._hashes)
        h = self._hashes[top]
        for m in range(top + 1, n + 1):
            h = h[:-1] * _MULT + self.h1[m - 1 :]
            self._hashes[m] = h
        return self._hashes[n]

    def top_chars(self, n: int) -> int:
        keys = self.keys(n)
        if keys is None:
            return 0
        # datatrove joins top n-grams with spaces: n - 1 separators.
        return _top_ngram_chars(keys, self.cum[n:] - self.cum[:-n] + (n - 1))[0]

    def top_positions(self, n: int) -> list[int]:
        keys = self.keys(n)
        if keys is None:
            return []
        _, first = _top_ngram_chars(keys, self.cum[n:] - self.cum[:-n])
        return np.flatnonzero(keys == keys[first]).tolist()

    def dup_chars(self, n: int) -> tuple[int, list[int]]:
        keys = self.keys(n)
        if keys is None:
            return 0, []
        # Positions of repeated n-grams are a subset of those of repeated shorter n-grams (a
        # repeated n-gram has a repeated prefix), so only the previous candidates are sorted.
        shorter = [m for m in self._cand if m < n]
        if shorter:
            prev = self._cand[max(shorter)]
            pos = prev[prev < len(keys)]
        else:
            pos = np.arange(len(keys))
        cand = pos[_repeated(keys[pos])] if pos.size else pos
        self._cand[n] = cand
        if cand.size == 0:
            return 0, []
        nchars = self.cum[cand + n] - self.cum[cand]
        return _dup_ngram_chars(cand, keys[cand], nchars, n)
