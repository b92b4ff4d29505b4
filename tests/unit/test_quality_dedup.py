"""Exact and near-duplicate detection, and MinHash signatures equal to datasketch's."""

from __future__ import annotations

import re

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from core.datasets.quality import (
    ExactDuplicates,
    MinHasher,
    NearDuplicates,
    QualityThresholds,
    Sample,
    content_hash,
    normalise_for_dedup,
    signature_from_bytes,
    signature_to_bytes,
)
from tests.unit.test_quality_fixtures import CLEAN_DE

T = QualityThresholds()
LONG = "\n\n".join(CLEAN_DE[k] for k in ("wohngeld", "erklaerung", "liste"))


def edited(text: str) -> str:
    """A copy with two words changed and one word dropped."""
    out = text.replace("Wohnkosten", "Mietkosten", 1).replace("Monat", "Jahr", 1)
    return out.replace(" in der Regel", " ", 1)


def process(step, texts: list[tuple[str, str]], t: QualityThresholds = T) -> list[Sample]:
    step.setup(t)
    batch = [Sample(i, x) for i, x in texts]
    step.process(batch, t)
    return batch


# -- exact ----------------------------------------------------------------------------------


def test_normalisation() -> None:
    assert normalise_for_dedup("  Ｈallo,\tWELT!  z.B.  ") == "hallo welt z b"
    assert normalise_for_dedup("Straße") == normalise_for_dedup("STRASSE")  # casefold


def test_exact_duplicate_after_normalisation() -> None:
    a = CLEAN_DE["wohngeld"]
    b = a.upper().replace(". ", " .  ").replace("\n\n", "\n")
    c = CLEAN_DE["brief"]
    out = process(ExactDuplicates(), [("a", a), ("b", b), ("c", c), ("a2", a)])
    assert [s.reasons for s in out] == [[], ["exact_duplicate"], [], ["exact_duplicate"]]
    assert out[1].duplicate_of == "a" and out[3].duplicate_of == "a"
    assert out[1].signals["content_hash"] == content_hash(a)


def test_exact_duplicates_of_reference_samples() -> None:
    ref = [("old-1", CLEAN_DE["brief"])]
    step = ExactDuplicates(reference_hashes=[("old-2", content_hash(CLEAN_DE["liste"]))])
    step.add_reference((i, content_hash(t)) for i, t in ref)
    out = process(step, [("n1", CLEAN_DE["liste"]), ("n2", CLEAN_DE["brief"] + " ")])
    assert [s.duplicate_of for s in out] == ["old-2", "old-1"]
    assert all(s.signals["duplicate_source"] == "reference" for s in out)


# -- MinHash signatures -----------------------------------------------------------------------


def datasketch_minhash(text: str, **kw) -> MinHash:
    """The plain datasketch recipe documented in minhash.py."""
    words = re.findall(r"\w+", text)
    m = MinHash(num_perm=kw.pop("num_perm", 128), **kw)
    for i in range(max(len(words) - 4, 1)):
        m.update(" ".join(words[i : i + 5]).lower().encode("utf-8"))
    return m


@pytest.mark.parametrize("key", sorted(CLEAN_DE))
def test_signatures_equal_datasketch(key: str) -> None:
    text = CLEAN_DE[key]
    ours = MinHasher().signature(text)
    assert ours.dtype == np.uint32
    np.testing.assert_array_equal(ours, datasketch_minhash(text).hashvalues)


def test_signatures_equal_datasketch_with_xxh32_and_other_parameters() -> None:
    xxhash = pytest.importorskip("xxhash")
    text = LONG * 3  # more shingles than one multiply-add block
    ours = MinHasher(num_perm=64, seed=7, hash="xxh32").signature(text)
    ref = datasketch_minhash(text, num_perm=64, seed=7, hashfunc=xxhash.xxh32_intdigest)
    np.testing.assert_array_equal(ours, ref.hashvalues)


def test_short_and_empty_texts() -> None:
    hasher = MinHasher()
    np.testing.assert_array_equal(
        hasher.signature("Nur drei Wörter"), datasketch_minhash("Nur drei Wörter").hashvalues
    )
    assert hasher.shingles(["Nur", "drei", "Wörter"]) == ["nur drei wörter".encode()]
    assert (hasher.signature("!!! ...") == 0xFFFFFFFF).all()
    assert hasher.signatures([]).shape == (0, 128)


def test_signature_bytes_round_trip() -> None:
    sig = MinHasher().signature(LONG)
    assert len(signature_to_bytes(sig)) == 512
    np.testing.assert_array_equal(signature_from_bytes(signature_to_bytes(sig)), sig)


def test_lean_minhash_works_in_datasketch_lsh() -> None:
    hasher = MinHasher()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    lsh.insert("a", hasher.lean_minhash(hasher.signature(LONG)))
    assert lsh.query(datasketch_minhash(edited(LONG))) == ["a"]


# -- near duplicates --------------------------------------------------------------------------


def test_near_duplicate_finds_an_edited_copy_and_not_an_unrelated_text() -> None:
    texts = [
        ("orig", LONG),
        ("other", CLEAN_DE["brief"] * 2),
        ("copy", edited(LONG)),
        ("copy2", edited(LONG).replace("Gemeinde", "Kommune")),
    ]
    step = NearDuplicates()
    out = process(step, texts)
    assert [s.reasons for s in out] == [[], [], ["near_duplicate"], ["near_duplicate"]]
    assert out[2].duplicate_of == "orig" and out[3].duplicate_of == "orig"
    assert out[2].signals["near_duplicate_similarity"] >= 0.8
    assert step.clusters() == {"orig": "orig", "copy": "orig", "copy2": "orig"}
    assert step.counters["near_duplicate"] == 2


def test_threshold_is_respected() -> None:
    a = LONG
    b = a.replace("Wohngeld", "Kindergeld").replace("Antrag", "Bescheid")
    sim = float((MinHasher().signature(a) == MinHasher().signature(b)).mean())
    assert 0.3 < sim < 0.95
    low = QualityThresholds(near_duplicate_threshold=max(sim - 0.2, 0.05))
    high = QualityThresholds(near_duplicate_threshold=min(sim + 0.05, 1.0))
    assert process(NearDuplicates(), [("a", a), ("b", b)], low)[1].reasons == ["near_duplicate"]
    assert process(NearDuplicates(), [("a", a), ("b", b)], high)[1].reasons == []


def test_reference_texts_and_signatures_from_other_datasets() -> None:
    hasher = MinHasher()
    step = NearDuplicates(
        reference=[("ds1:7", LONG)],
        reference_signatures=[("ds2:3", signature_to_bytes(hasher.signature(CLEAN_DE["brief"])))],
    )
    out = process(
        step,
        [("n1", edited(LONG)), ("n2", CLEAN_DE["brief"].replace("März", "April")), ("n3", "x")],
    )
    assert [s.duplicate_of for s in out] == ["ds1:7", "ds2:3", None]
    assert out[0].signals["duplicate_source"] == "reference"
    assert step.counters["reference"] == 2


def test_exact_duplicates_are_not_hashed_again() -> None:
    step = NearDuplicates()
    a, b = Sample("a", LONG), Sample("b", LONG)
    b.flag("exact_duplicate")
    step.setup(T)
    step.process([a, b], T)
    assert step.counters["skipped_exact"] == 1
    assert b.reasons == ["exact_duplicate"]


def test_keep_signatures_and_parameter_change_guard() -> None:
    step = NearDuplicates(keep_signatures=True)
    (s,) = process(step, [("a", LONG)])
    assert s.signature is not None
    np.testing.assert_array_equal(signature_from_bytes(s.signature), MinHasher().signature(LONG))
    with pytest.raises(ValueError):
        step.setup(QualityThresholds(num_perm=64))
    step.reset()
    step.setup(QualityThresholds(num_perm=64))  # fine after reset
