"""MinHash signatures equal to datasketch's, computed with numpy for a whole document at once.

datasketch's MinHash (default scheme "affine32", datasketch >= 2.0) hashes each shingle with
SHA-1 (first 4 bytes, little endian), mixes it with the MurmurHash3 32-bit finalizer and applies
the permutations h -> a_k * h + b_k (mod 2^32); the signature is the minimum per permutation.
`m.update(shingle)` does that one shingle at a time; here the shingle hashes of a document are
collected into one array and the 128 permutations are one broadcast multiply-add and a min over
a preallocated buffer. The permutation parameters are taken from datasketch itself, so the
signatures are bit-identical (tests/unit/test_quality_dedup.py checks that).

Shingles: the words of the text (exactly re.findall(r"\\w+", text)), lowercased, joined by
single spaces in windows of `ngram` words; a text with fewer words is one shingle, a text
without words has no shingles (empty signature, never a near duplicate). The plain-datasketch
equivalent:

    words = re.findall(r"\\w+", text)
    m = MinHash(num_perm=128)                      # seed 1, scheme affine32
    for i in range(max(len(words) - 4, 1)):
        m.update(" ".join(words[i : i + 5]).lower().encode("utf-8"))
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import numpy as np

try:
    # CPython's built-in SHA-1 (no OpenSSL context set-up per call) is about twice as fast as
    # hashlib.sha1 on short inputs; same digest.
    from _sha1 import sha1 as _sha1
except ImportError:  # pragma: no cover - FIPS builds without the built-in module
    from hashlib import sha1 as _sha1

MAX_HASH = np.uint32(0xFFFFFFFF)
_WORD_RE = re.compile(r"\w+")
_CHUNK = 2048  # shingles per multiply-add block: 2048 x 128 x 4 B = 1 MiB, stays in cache
_FMIX = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))


def _fmix32(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2 = _FMIX
    h = h ^ (h >> s1)
    h *= m1
    h ^= h >> s2
    h *= m2
    h ^= h >> s1
    return h


class MinHasher:
    """Computes datasketch-compatible MinHash signatures (uint32 arrays of length num_perm).

    hash="sha1" equals datasketch's default `MinHash(num_perm, seed)`; hash="xxh32" equals
    `MinHash(num_perm, seed, hashfunc=xxhash.xxh32_intdigest)` and is several times faster
    (needs the xxhash package). Signatures of different hashes or seeds are not comparable.
    """

    def __init__(
        self,
        num_perm: int = 128,
        ngram: int = 5,
        seed: int = 1,
        hash: Literal["sha1", "xxh32"] = "sha1",
    ) -> None:
        from datasketch import MinHash

        ref = MinHash(num_perm=num_perm, seed=seed, scheme="affine32")
        a, b = ref.permutations
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed
        self.hash = hash
        self._a = np.ascontiguousarray(a, dtype=np.uint32)[None, :]
        self._b = np.ascontiguousarray(b, dtype=np.uint32)[None, :]
        self._buf = np.empty((_CHUNK, num_perm), dtype=np.uint32)
        if hash == "xxh32":
            import xxhash

            self._xxh32 = xxhash.xxh32_intdigest
        elif hash != "sha1":
            raise ValueError(f"unknown shingle hash {hash!r}")

    # -- shingles ----------------------------------------------------------------------------
    def shingles(self, words: list[str]) -> list[bytes]:
        """The shingles as bytes (for tests and for feeding datasketch directly)."""
        n = self.ngram
        if not words:
            return []
        return [
            " ".join(words[i : i + n]).lower().encode("utf-8")
            for i in range(max(len(words) - n + 1, 1))
        ]

    def shingle_hashes(self, words: list[str]) -> np.ndarray:
        """32-bit hash of every shingle, without building the shingle strings: the words are
        joined and encoded once, and each shingle is a memoryview slice between spaces."""
        if not words:
            return np.empty(0, dtype=np.uint32)
        joined = " ".join(words).lower().encode("utf-8")
        n = self.ngram
        if len(words) <= n:
            starts, ends = [0], [len(joined)]
        else:
            # UTF-8 continuation bytes are never 0x20, so spaces in the bytes are exactly the
            # word boundaries.
            spaces = np.flatnonzero(np.frombuffer(joined, dtype=np.uint8) == 32)
            starts = [0, *(spaces[: len(words) - n] + 1).tolist()]
            ends = [*spaces[n - 1 :].tolist(), len(joined)]
        mv = memoryview(joined)
        if self.hash == "sha1":
            sha1 = _sha1
            digests = b"".join(
                [sha1(mv[s:e]).digest()[:4] for s, e in zip(starts, ends, strict=True)]
            )
            return np.frombuffer(digests, dtype="<u4").astype(np.uint32)
        xxh = self._xxh32
        return np.fromiter(
            (xxh(mv[s:e]) for s, e in zip(starts, ends, strict=True)),
            dtype=np.uint32,
            count=len(starts),
        )

    # -- signatures --------------------------------------------------------------------------
    def signature_from_hashes(self, hv: np.ndarray) -> np.ndarray:
        sig = np.full(self.num_perm, MAX_HASH, dtype=np.uint32)
        if hv.size == 0:
            return sig
        h = _fmix32(hv.astype(np.uint32, copy=True))[:, None]
        for start in range(0, len(h), _CHUNK):
            block = h[start : start + _CHUNK]
            out = self._buf[: len(block)]
            np.multiply(block, self._a, out=out)
            np.add(out, self._b, out=out)
            np.minimum(sig, out.min(axis=0), out=sig)
        return sig

    def signature_from_words(self, words: list[str]) -> np.ndarray:
        return self.signature_from_hashes(self.shingle_hashes(words))

    def signature(self, text: str) -> np.ndarray:
        return self.signature_from_words(_WORD_RE.findall(text))

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """(n, num_perm) uint32 signatures, e.g. to store and seed later cross-dataset checks."""
        rows = [self.signature(t) for t in texts]
        if not rows:
            return np.empty((0, self.num_perm), dtype=np.uint32)
        return np.vstack(rows)

    def lean_minhash(self, signature: np.ndarray):  # -> datasketch.LeanMinHash
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme="affine32")


def signature_to_bytes(signature: np.ndarray) -> bytes:
    return np.asarray(signature, dtype="<u4").tobytes()


def signature_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)
