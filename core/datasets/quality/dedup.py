"""Exact and near-duplicate detection, within a run and against reference samples.

Both steps are streaming: a sample is compared with everything seen before it (and with the
reference samples), so the first sample of a group is its representative and stays unflagged;
every later member is flagged and names that representative in `duplicate_of`.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable

import numpy as np

from core.datasets.quality import reasons as R
from core.datasets.quality.base import QualityStep, Sample
from core.datasets.quality.minhash import MinHasher, signature_from_bytes
from core.datasets.quality.models import QualityThresholds

_NON_WORD_RUN = re.compile(r"[^\w\s]+")


@functools.lru_cache(maxsize=4096)
def _blank_punctuation(run: str) -> str:
    # Punctuation (category P*) becomes a space; symbols such as € or + stay.
    return "".join(" " if unicodedata.category(c)[0] == "P" else c for c in run)


def normalise_for_dedup(text: str) -> str:
    """NFKC, casefold, punctuation to spaces, whitespace runs collapsed, trimmed.

    Punctuation becomes a space (not nothing) so that "z.B." and "z. B." agree. Only runs of
    non-word characters are looked at (a regex finds them), and their few distinct forms are
    cached: str.translate with a full Unicode punctuation table is ~5x slower on German text.
    """
    t = unicodedata.normalize("NFKC", text).casefold()
    t = _NON_WORD_RUN.sub(lambda m: _blank_punctuation(m.group()), t)
    return " ".join(t.split())


def content_hash(text: str) -> str:
    """Hex digest (128-bit BLAKE2b) of the normalised text: equal for exact duplicates.
    Store it with the sample to check later datasets against this one cheaply."""
    return hashlib.blake2b(normalise_for_dedup(text).encode("utf-8"), digest_size=16).hexdigest()


class ExactDuplicates(QualityStep):
    """Flags exact_duplicate when the normalised text was seen before (or is in the reference).

    reference: (id, text) pairs from other datasets; reference_hashes: (id, content_hash) pairs
    stored earlier. Signals: content_hash, and exact_duplicate_of when flagged.
    """

    name = "exact_duplicates"

    def __init__(
        self,
        reference: Iterable[tuple[str, str]] | None = None,
        reference_hashes: Iterable[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__()
        self._first: dict[str, str] = {}
        self._reference_ids: set[str] = set()
        if reference is not None:
            self.add_reference((rid, content_hash(text)) for rid, text in reference)
        if reference_hashes is not None:
            self.add_reference(reference_hashes)

    def add_reference(self, hashes: Iterable[tuple[str, str]]) -> None:
        for rid, digest in hashes:
            if self._first.setdefault(digest, rid) == rid:
                self._reference_ids.add(rid)
            self.counters["reference"] += 1

    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        first = self._first
        for s in batch:
            digest = content_hash(s.text)
            s.signals["content_hash"] = digest
            prior = first.setdefault(digest, s.id)
            if prior != s.id:
                s.signals["exact_duplicate_of"] = prior
                if prior in self._reference_ids:
                    s.signals["duplicate_source"] = "reference"
                s.duplicate_of = prior
                self.flag(s, R.EXACT_DUPLICATE)

    def reset(self) -> None:
        """Forget everything seen (references too)."""
        self._first.clear()
        self._reference_ids.clear()
        self.reset_counters()


class NearDuplicates(QualityStep):
    """MinHash LSH near-duplicate detection (datasketch's MinHashLSH, identical signatures).

    Parameters come from the thresholds: near_duplicate_threshold (Jaccard), minhash_ngram
    (words per shingle), num_perm, minhash_seed, minhash_hash, near_duplicate_verify (confirm
    LSH candidates by the estimated Jaccard of the signatures, which drops the LSH's false
    positives below the threshold).

    reference: (id, text) pairs from other datasets; reference_signatures: (id, signature)
    pairs stored earlier (uint32 array or its bytes, same num_perm / seed / hash). Reference
    samples are never flagged themselves; a sample matching one names it in duplicate_of and
    gets duplicate_source = "reference".

    Signals when flagged: near_duplicate_of (the cluster's representative: its oldest member),
    near_duplicate_similarity (estimated Jaccard with the best match). Clusters are connected
    components of the "is a near duplicate of" relation, as with a plain datasketch loop of
    query + insert; `clusters()` returns them after a run. Samples already flagged as exact
    duplicates are skipped (their representative is in the index already).
    """

    name = "near_duplicates"

    def __init__(
        self,
        reference: Iterable[tuple[str, str]] | None = None,
        reference_signatures: Iterable[tuple[str, np.ndarray | bytes]] | None = None,
        keep_signatures: bool = False,
    ) -> None:
        super().__init__()
        self.keep_signatures = keep_signatures
        self._pending_texts = reference
        self._pending_sigs = reference_signatures
        self._params: tuple | None = None
        self.hasher: MinHasher | None = None
        self._lsh = None
        self._ids: list[str] = []
        self._parent: list[int] = []
        self._n_reference = 0
        self._sigs = np.empty((0, 0), dtype=np.uint32)
        self._verify = True
        self._threshold = 0.8

    # -- index ------------------------------------------------------------------------------
    def setup(self, thresholds: QualityThresholds) -> None:
        t = thresholds
        params = (
            t.near_duplicate_threshold,
            t.minhash_ngram,
            t.num_perm,
            t.minhash_seed,
            t.minhash_hash,
        )
        self._verify = t.near_duplicate_verify
        self._threshold = t.near_duplicate_threshold
        if params == self._params:
            return
        if self._params is not None and self._ids:
            raise ValueError(
                "MinHash parameters changed after samples were indexed; call reset() first"
            )
        from datasketch import MinHashLSH

        self._params = params
        self.hasher = MinHasher(
            num_perm=t.num_perm, ngram=t.minhash_ngram, seed=t.minhash_seed, hash=t.minhash_hash
        )
        self._lsh = MinHashLSH(threshold=t.near_duplicate_threshold, num_perm=t.num_perm)
        self._sigs = np.empty((1024, t.num_perm), dtype=np.uint32)
        if self._pending_texts is not None:
            texts, self._pending_texts = self._pending_texts, None
            self.add_reference(texts)
        if self._pending_sigs is not None:
            sigs, self._pending_sigs = self._pending_sigs, None
            self.add_reference_signatures(sigs)

    def add_reference(self, items: Iterable[tuple[str, str]]) -> None:
        """Seed the index with (id, text) samples of other datasets (call after setup)."""
        if self.hasher is None:
            raise RuntimeError("call setup(thresholds) first, or pass reference= to __init__")
        hasher = self.hasher
        self.add_reference_signatures((rid, hasher.signature(text)) for rid, text in items)

    def add_reference_signatures(self, items: Iterable[tuple[str, np.ndarray | bytes]]) -> None:
        """Seed the index with precomputed signatures (call after setup)."""
        if self.hasher is None:
            raise RuntimeError("call setup(thresholds) first, or pass reference_signatures=")
        if len(self._ids) != self._n_reference:
            raise RuntimeError("reference samples must be added before the first batch")
        for rid, sig in items:
            arr = signature_from_bytes(sig) if isinstance(sig, bytes | bytearray) else sig
            arr = np.asarray(arr, dtype=np.uint32)
            if arr.shape != (self.hasher.num_perm,):
                raise ValueError(f"reference signature of {rid!r} has shape {arr.shape}")
            if (arr == 0xFFFFFFFF).all():
                continue  # empty text: nothing to match
            self._add(rid, arr, self._query(arr)[0])
            self._n_reference += 1
            self.counters["reference"] += 1

    def _add(self, sid: str, sig: np.ndarray, rep: int | None) -> int:
        idx = len(self._ids)
        if idx == len(self._sigs):
            grown = np.empty((2 * len(self._sigs), self._sigs.shape[1]), dtype=np.uint32)
            grown[:idx] = self._sigs
            self._sigs = grown
        self._sigs[idx] = sig
        self._ids.append(sid)
        self._parent.append(idx if rep is None else rep)
        assert self.hasher is not None and self._lsh is not None
        self._lsh.insert(idx, self.hasher.lean_minhash(sig), check_duplication=False)
        return idx

    def _find(self, i: int) -> int:
        parent = self._parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    def _query(self, sig: np.ndarray) -> tuple[int | None, float]:
        """(representative index, best similarity) of the matching cluster, or (None, 0)."""
        assert self.hasher is not None and self._lsh is not None
        if not self._ids:
            return None, 0.0
        cands = self._lsh.query(self.hasher.lean_minhash(sig))
        if not cands:
            return None, 0.0
        cand = np.fromiter(cands, dtype=np.int64, count=len(cands))
        sims = (self._sigs[cand] == sig).mean(axis=1)
        if self._verify:
            keep = sims >= self._threshold
            cand, sims = cand[keep], sims[keep]
            if cand.size == 0:
                return None, 0.0
        # Merge every matched cluster into the oldest one (connected components, as a plain
        # query + insert loop with union-find gives).
        roots = sorted({self._find(int(c)) for c in cand})
        rep = roots[0]
        for r in roots[1:]:
            self._parent[r] = rep
        return rep, float(sims.max())

    # -- step -------------------------------------------------------------------------------
    def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
        if self.hasher is None:
            self.setup(thresholds)
        hasher = self.hasher
        assert hasher is not None
        for s in batch:
            if R.EXACT_DUPLICATE in s.reasons:
                self.counters["skipped_exact"] += 1
                continue
            words = s.words
            if not words:
                continue
            sig = hasher.signature_from_words(words)
            if self.keep_signatures:
                s.signature = sig.astype("<u4").tobytes()
            rep, sim = self._query(sig)
            self._add(s.id, sig, rep)
            if rep is None:
                continue
            rep_id = self._ids[rep]
            s.signals["near_duplicate_of"] = rep_id
            s.signals["near_duplicate_similarity"] = round(sim, 4)
            if rep < self._n_reference:
                s.signals["duplicate_source"] = "reference"
            if s.duplicate_of is None:
                s.duplicate_of = rep_id
            self.flag(s, R.NEAR_DUPLICATE)

    def clusters(self) -> dict[str, str]:
        """member id -> representative id, for every sample in a cluster of two or more
        (representatives map to themselves; reference samples included)."""
        roots = [self._find(i) for i in range(len(self._ids))]
        sizes: dict[int, int] = {}
        for r in roots:
            sizes[r] = sizes.get(r, 0) + 1
        return {self._ids[i]: self._ids[r] for i, r in enumerate(roots) if sizes[r] > 1}

    def reset(self) -> None:
        """Forget the index (references too); the next run starts empty."""
        self._params = None
        self.hasher = None
        self._lsh = None
        self._ids = []
        self._parent = []
        self._n_reference = 0
        self.reset_counters()
