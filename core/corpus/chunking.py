"""Token-aware chunking with the embedding model's own tokenizer.

Chunks are sized in the tokens the embedder counts, so no chunk is silently truncated at
the model's max_seq_length; boundaries move back to the end of a sentence or at least a word
so a chunk never ends mid-word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DEFAULT_CHUNK_TOKENS = 240
DEFAULT_CHUNK_OVERLAP = 32
_SENTENCE_END = re.compile(r"[.!?:;]\s|\n")


@dataclass(frozen=True)
class TextChunk:
    index: int
    text: str
    start_char: int
    end_char: int
    token_count: int


@lru_cache(maxsize=4)
def load_tokenizer(model_dir: str):
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


class Chunker:
    """Splits text into overlapping windows of at most `size` tokens."""

    def __init__(
        self,
        tokenizer=None,
        size: int = DEFAULT_CHUNK_TOKENS,
        overlap: int = DEFAULT_CHUNK_OVERLAP,
    ) -> None:
        if size < 16:
            raise ValueError("chunk size must be at least 16 tokens")
        if not 0 <= overlap < size // 2:
            raise ValueError("chunk overlap must be between 0 and half the chunk size")
        self.tokenizer, self.size, self.overlap = tokenizer, size, overlap

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        if self.tokenizer is None:
            # No tokenizer file (a hub model id not cached yet): words approximate tokens.
            return [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]
        return [
            o for o in self.tokenizer.encode(text, add_special_tokens=False).offsets if o[1] > o[0]
        ]

    def split_many(self, texts: list[str]) -> list[list[TextChunk]]:
        """Chunks of several texts; the tokenizer encodes them in one parallel batch."""
        if self.tokenizer is None:
            return [self.split(t) for t in texts]
        encoded = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [
            self._split(t, [o for o in e.offsets if o[1] > o[0]])
            for t, e in zip(texts, encoded, strict=True)
        ]

    def split(self, text: str) -> list[TextChunk]:
        return self._split(text, self._offsets(text))

    def _split(self, text: str, offsets: list[tuple[int, int]]) -> list[TextChunk]:
        if not offsets:
            return [TextChunk(0, text, 0, len(text), 0)] if text.strip() else []
        chunks: list[TextChunk] = []
        start_tok, n = 0, len(offsets)
        while start_tok < n:
            end_tok = min(n, start_tok + self.size)
            if end_tok < n:
                end_tok = self._boundary(text, offsets, start_tok, end_tok)
            s, e = offsets[start_tok][0], offsets[end_tok - 1][1]
            chunks.append(TextChunk(len(chunks), text[s:e], s, e, end_tok - start_tok))
            if end_tok >= n:
                break
            nxt = max(start_tok + 1, end_tok - self.overlap)
            # Start the next window at a word start, not inside a word.
            while (
                nxt < end_tok
                and offsets[nxt][0] == offsets[nxt - 1][1]
                and text[offsets[nxt][0]].isalnum()
            ):
                nxt += 1
            start_tok = nxt
        return chunks

    def _boundary(self, text: str, offsets: list[tuple[int, int]], lo: int, hi: int) -> int:
        """Move the window end back to a sentence end (last quarter) or a word end."""
        floor = lo + (3 * (hi - lo)) // 4
        for i in range(hi, floor, -1):
            end = offsets[i - 1][1]
            if _SENTENCE_END.match(text, end - 1) or _SENTENCE_END.match(text, end):
                return i
        for i in range(hi, lo + 1, -1):
            if offsets[i][0] > offsets[i - 1][1]:  # whitespace between: a word boundary
                return i
        return hi
