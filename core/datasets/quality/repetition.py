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
    first = int(np.argmax(np.isin(keys, tied)))  # first position holding one of the tied keys
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
        n_tok = len(tokens)
        check_ngrams = len(s.words) >= t.gopher_min_words
        top_limits = t.max_top_ngram_char_fraction
        dup_limits = t.max_duplicate_ngram_char_fraction
        if n_tok < 2:
            for n in top_limits:
                sig[f"top_{n}gram_char_fraction"] = 0.0
            for n in dup_limits:
                sig[f"dup_{n}gram_char_fraction"] = 0.0
            return

        h1 = np.fromiter(map(hash, tokens), dtype=np.int64, count=n_tok).view(np.uint64)
        lens = np.fromiter(map(len, tokens), dtype=np.int64, count=n_tok)
        cum = np.zeros(n_tok + 1, dtype=np.int64)
        np.cumsum(lens, out=cum[1:])
        max_n = max([*top_limits, *dup_limits, 1])
        # hashes[n] = rolling hash of the n-gram starting at each position.
        hashes: dict[int, np.ndarray] = {1: h1}
        h = h1
        for n in range(2, min(max_n, n_tok) + 1):
            h = h[:-1] * _MULT + h1[n - 1 :]
            hashes[n] = h

        top_fail: list[int] = []
        for n in sorted(top_limits):
            keys = hashes.get(n)
            if keys is None:
                sig[f"top_{n}gram_char_fraction"] = 0.0
                continue
            # datatrove joins top n-grams with spaces: n - 1 separators.
            span_chars = cum[n:] - cum[:-n] + (n - 1)
            frac = _top_ngram_chars(keys, span_chars)[0] / n_chars
            sig[f"top_{n}gram_char_fraction"] = round(frac, 4)
            if frac > top_limits[n]:
                top_fail.append(n)

        dup_fail: list[tuple[int, list[int]]] = []
        # Positions of repeated n-grams are a subset of those of repeated shorter n-grams (a
        # repeated n-gram has a repeated prefix), so each n only sorts the previous candidates.
        cand: np.ndarray | None = None
        for n in sorted(dup_limits):
            keys = hashes.get(n)
            if keys is None or (cand is not None and cand.size == 0):
                sig[f"dup_{n}gram_char_fraction"] = 0.0
                continue
            pos = np.arange(len(keys)) if cand is None else cand[cand < len(keys)]
            cand = pos[_repeated(keys[pos])]
            nchars = cum[cand + n] - cum[cand]
            chars, where = _dup_ngram_chars(cand, keys[cand], nchars, n)
            frac = chars / n_chars
            sig[f"dup_{n}gram_char_fraction"] = round(frac, 4)
            if frac > dup_limits[n]:
                dup_fail.append((n, where))

        if check_ngrams and (top_fail or dup_fail):
            offsets = [m.span() for m in TOKEN_RE.finditer(text)]
            if top_fail:
                n = top_fail[0]
                keys = hashes[n]
                _, first = _top_ngram_chars(keys, cum[n:] - cum[:-n])
                starts = np.flatnonzero(keys == keys[first]).tolist()
                spans = [(offsets[i][0], offsets[i + n - 1][1]) for i in starts]
                self.flag(s, R.TOP_NGRAM, merge_spans(spans))
            if dup_fail:
                n, where = dup_fail[0]
                spans = [(offsets[i][0], offsets[i + n - 1][1]) for i in where]
                self.flag(s, R.DUPLICATE_NGRAMS, merge_spans(spans))
