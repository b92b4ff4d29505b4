"""Per-sample signal steps: length, encoding, symbols and word statistics."""

from __future__ import annotations

import re
from typing import Any

from core.datasets.quality import reasons as R
from core.datasets.quality.base import QualityStep, Sample
from core.datasets.quality.models import QualityThresholds

# --------------------------------------------------------------------------------------------
# Length


class LengthSignals(QualityStep):
    """Characters and tokens; flags empty, too_short and too_long.

    `tokenizer` may be a Hugging Face tokenizer (anything callable on a list of strings that
    returns {"input_ids": [...]}, batched: fast tokenizers encode a batch in Rust), a
    `tokenizers.Tokenizer` (encode_batch), or a function list[str] -> list[int] of counts.
    Without one, tokens are regex words + punctuation runs: free, since other steps need
    them anyway, and close to a word-level LLM token count for German (subword tokenizers
    give ~1.3-1.6x more; set max_tokens accordingly).
    """

    name = "length"

    def __init__(self, tokenizer: Any = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def _count_tokens(self, texts: list[str]) -> list[int]:
        tok = self.tokenizer
        if hasattr(tok, "encode_batch"):  # tokenizers.Tokenizer
            return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
        if hasattr(tok, "encode") and callable(tok):  # transformers tokenizer
            ids = tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            return [len(x) for x in ids]
        return list(tok(texts))

    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        t = thresholds
        counts = self._count_tokens([s.text for s in batch]) if self.tokenizer else None
        for i, s in enumerate(batch):
            n_chars = len(s.text)
            n_tokens = counts[i] if counts is not None else len(s.tokens)
            s.signals["chars"] = n_chars
            s.signals["tokens"] = n_tokens
            s.signals["words"] = len(s.words)
            if not s.text.strip():
                self.flag(s, R.EMPTY)
            elif n_chars < t.min_chars or n_tokens < t.min_tokens:
                self.flag(s, R.TOO_SHORT)
            elif n_chars > t.max_chars or n_tokens > t.max_tokens:
                self.flag(s, R.TOO_LONG)


# --------------------------------------------------------------------------------------------
# Encoding

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]+")
_REPLACEMENT_RE = re.compile("\ufffd+")
# UTF-8 read as Latin-1/cp1252 turns every non-ASCII character into a lead character
# (U+00C2..U+00F4) followed by one or more continuation characters (U+0080..U+00BF, or the
# cp1252 glyphs those bytes decode to). German letters never come in such pairs, so this cheap
# scan finds every candidate; ftfy then confirms each one. Running ftfy on every whole text
# instead costs ~6 ms per 10 KB here (its badness regex is large).
_CP1252_CONTINUATION = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
_MOJIBAKE_CANDIDATE_RE = re.compile(f"[\u00c2-\u00f4][\u0080-\u00bf{_CP1252_CONTINUATION}]")
_NON_SPACE_RUN = re.compile(r"\S+")


class EncodingSignals(QualityStep):
    """Mojibake (confirmed by ftfy), control characters and U+FFFD replacement characters.

    ftfy.fix_text(t) != t would also fire on every German text with „typographic quotes“
    (fix_text uncurls quotes), so only ftfy's encoding repair and badness test are used, and
    only on the words around cheap candidates.
    """

    name = "encoding"

    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        import ftfy
        from ftfy.badness import is_bad

        t = thresholds
        for s in batch:
            text = s.text
            # Mojibake: confirm candidate words with ftfy.
            moji_spans: list[tuple[int, int]] = []
            if not text.isascii():
                seen_end = -1
                for m in _MOJIBAKE_CANDIDATE_RE.finditer(text):
                    if m.start() < seen_end:
                        continue
                    start = text.rfind(" ", 0, m.start()) + 1
                    wm = _NON_SPACE_RUN.match(text, start)
                    end = wm.end() if wm else m.end()
                    seen_end = end
                    window = text[start:end]
                    if is_bad(window) or ftfy.fix_encoding(window) != window:
                        moji_spans.append((start, end))
            s.signals["mojibake_sequences"] = len(moji_spans)
            if len(moji_spans) > t.max_mojibake_sequences:
                self.flag(s, R.MOJIBAKE, moji_spans)

            ctrl = [m.span() for m in _CONTROL_RE.finditer(text)]
            n_ctrl = sum(e - b for b, e in ctrl)
            frac = n_ctrl / len(text) if text else 0.0
            s.signals["control_chars"] = n_ctrl
            if ctrl and frac > t.max_control_char_fraction:
                self.flag(s, R.CONTROL_CHARS, ctrl)

            repl = [m.span() for m in _REPLACEMENT_RE.finditer(text)] if "\ufffd" in text else []
            n_repl = sum(e - b for b, e in repl)
            s.signals["replacement_chars"] = n_repl
            if n_repl > t.max_replacement_chars:
                self.flag(s, R.REPLACEMENT_CHARS, repl)


# --------------------------------------------------------------------------------------------
# Gopher quality rules, split in two steps


def _line_start_offsets(text: str, lines: list[str]) -> list[int]:
    offsets, pos = [], 0
    for line in lines:
        pos = text.find(line, pos)
        offsets.append(pos)
        pos += len(line)
    return offsets


_HASH_OR_ELLIPSIS_RE = re.compile(r"#+|\.\.\.|…")


class SymbolWordRatio(QualityStep):
    """Gopher's symbol rules: '#' and ellipses per word, bullet lines, lines ending in '...'.

    Ratios use all tokens (words and punctuation runs) as the denominator, as datatrove's
    GopherQualityFilter does with spaCy tokens. Applied to texts with at least
    gopher_min_words words; short chat answers legitimately end in "..." or are a bullet.
    """

    name = "symbols"

    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        t = thresholds
        for s in batch:
            text = s.text
            n_tokens = len(s.tokens) or 1
            hashes = text.count("#")
            ellipses = text.count("...") + text.count("…")
            hash_ratio = hashes / n_tokens
            ellipsis_ratio = ellipses / n_tokens
            s.signals["hash_to_word_ratio"] = round(hash_ratio, 4)
            s.signals["ellipsis_to_word_ratio"] = round(ellipsis_ratio, 4)
            lines = text.splitlines() or [""]
            n_lines = len(lines)
            bullets = 0
            end_ellipsis = 0
            for line in lines:
                ls = line.lstrip()
                if ls.startswith(("•", "-")):
                    bullets += 1
                if line.rstrip().endswith(("...", "…")):
                    end_ellipsis += 1
            s.signals["bullet_line_fraction"] = round(bullets / n_lines, 4)
            s.signals["ellipsis_line_fraction"] = round(end_ellipsis / n_lines, 4)
            if len(s.words) < t.gopher_min_words:
                continue
            if max(hash_ratio, ellipsis_ratio) > t.max_symbol_to_word_ratio:
                spans = [m.span() for m in _HASH_OR_ELLIPSIS_RE.finditer(text)]
                self.flag(s, R.SYMBOL_RATIO, spans)
            if bullets / n_lines > t.max_bullet_line_fraction:
                self.flag(s, R.BULLET_LINES)
            if end_ellipsis / n_lines > t.max_ellipsis_line_fraction:
                offs = _line_start_offsets(text, lines)
                spans = [
                    (o, o + len(line))
                    for o, line in zip(offs, lines, strict=True)
                    if line.rstrip().endswith(("...", "…"))
                ]
                self.flag(s, R.ELLIPSIS_LINES, spans)


# A whitespace-separated word made of non-letters only (figures, dashes, "§", "..."). A letter is
# a \w character that is not a digit or underscore.
_NO_LETTER_WORD_RE = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")


class WordStatistics(QualityStep):
    r"""Gopher's word rules: mean word length, share of words with a letter, stop words.

    The letter rule counts whitespace-separated words, as the Gopher paper states it
    ("80% of words contain at least one alphabetic character"). datatrove counts spaCy tokens
    instead, punctuation included; on German administrative text (dates, amounts, §, lists)
    that fails about one clean 1 KB sample in five. Mean word length uses word tokens (\w+).
    Stop words are compared lowercased (German nouns and sentence starts are capitalised).
    Applied to texts with at least gopher_min_words words.
    """

    name = "words"

    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        t = thresholds
        stop = frozenset(w.lower() for w in t.stop_words)
        for s in batch:
            words = s.words
            n_words = len(words)
            avg_len = sum(map(len, words)) / n_words if n_words else 0.0
            n_ws = len(s.text.split())
            no_letter = len(_NO_LETTER_WORD_RE.findall(s.text)) if n_ws else 0
            alpha_frac = (n_ws - no_letter) / n_ws if n_ws else 0.0
            n_stop = len(stop.intersection(w.lower() for w in set(words))) if stop else 0
            s.signals["avg_word_length"] = round(avg_len, 3)
            s.signals["alpha_word_fraction"] = round(alpha_frac, 4)
            s.signals["stop_words"] = n_stop
            if n_words < t.gopher_min_words:
                continue
            if not (t.min_avg_word_length <= avg_len <= t.max_avg_word_length):
                self.flag(s, R.WORD_LENGTH)
            if alpha_frac < t.min_alpha_word_fraction:
                self.flag(s, R.NON_ALPHA_WORDS)
            if stop and n_stop < t.min_stop_words:
                self.flag(s, R.FEW_STOP_WORDS)
