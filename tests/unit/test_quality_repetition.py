"""RepetitionSignals: Gopher's definitions (as datatrove implements them), flags and spans."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from core.datasets.quality import QualityThresholds, RepetitionSignals, Sample, repetition
from tests.unit.test_quality_fixtures import CLEAN_DE

T = QualityThresholds()


def run(text: str, thresholds: QualityThresholds = T) -> Sample:
    s = Sample("s", text)
    RepetitionSignals().process([s], thresholds)
    return s


# datatrove 0.10.1's definitions (gopher_repetition_filter.py), restated on plain token lists
# so the vectorised implementation can be compared with them.
def dt_find_all_duplicate(words: list[str], n: int) -> int:
    unique: set[str] = set()
    repeated, idx = 0, 0
    while idx < len(words) - n + 1:
        gram = "".join(words[idx : idx + n])
        if gram in unique:
            repeated += len(gram)
            idx += n
        else:
            unique.add(gram)
            idx += 1
    return repeated


def dt_top_duplicate(words: list[str], n: int) -> int:
    grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def _texts() -> list[str]:
    rng = random.Random(5)
    out = list(CLEAN_DE.values())
    # Small vocabularies make every kind of repeat, overlap and tie.
    for vocab in ("a b c d", "der die das und ist", "x"):
        words = vocab.split()
        for length in (3, 12, 60, 300, 1500):
            out.append(" ".join(rng.choice(words) for _ in range(length)))
    out.append(CLEAN_DE["wohngeld"] + " " + CLEAN_DE["wohngeld"][:200])
    out.append("\n\n".join(CLEAN_DE.values()) * 4)  # long, with long repeats
    return out


@pytest.mark.parametrize("backend", ["python", "numpy"])
@pytest.mark.parametrize("text", _texts())
def test_ngram_signals_equal_datatrove_definitions(
    text: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short texts normally take the Python path and long ones numpy: force each.
    monkeypatch.setattr(repetition, "SMALL_DOC_TOKENS", 10**9 if backend == "python" else 0)
    s = run(text)
    tokens = s.tokens
    for n in (2, 3, 4):
        expected = round(dt_top_duplicate(tokens, n) / len(text), 4)
        assert s.signals[f"top_{n}gram_char_fraction"] == expected, n
    for n in range(5, 11):
        expected = round(dt_find_all_duplicate(tokens, n) / len(text), 4)
        assert s.signals[f"dup_{n}gram_char_fraction"] == expected, n


@pytest.mark.parametrize("key", sorted(CLEAN_DE))
def test_clean_german_has_no_repetition(key: str) -> None:
    s = run(CLEAN_DE[key])
    assert s.reasons == []
    assert s.signals["dup_line_fraction"] == 0.0
    assert s.signals["dup_5gram_char_fraction"] == 0.0


def test_duplicate_lines_flagged_with_spans_of_the_repeats() -> None:
    line = "Bitte bringen Sie den Personalausweis mit."
    text = "\n".join([line, "Die Sprechzeiten sind montags.", line, line, "Danke."])
    s = run(text)
    assert "duplicate_lines" in s.reasons
    assert s.signals["dup_line_fraction"] == pytest.approx(2 / 5, abs=1e-4)
    spans = [(a, b) for a, b, r in s.spans if r == "duplicate_lines"]
    assert len(spans) == 2
    assert all(text[a:b] == line for a, b in spans)
    assert spans[0][0] > text.index(line)  # the first occurrence is not marked


def test_duplicate_paragraphs() -> None:
    para = CLEAN_DE["erklaerung"]
    text = "\n\n".join([CLEAN_DE["wohngeld"], para, para])
    s = run(text)
    assert "duplicate_paragraphs" in s.reasons
    assert s.signals["dup_paragraph_char_fraction"] == pytest.approx(len(para) / len(text), 1e-3)


def test_top_ngram_and_duplicate_ngrams() -> None:
    spam = " ".join(["Jetzt Antrag stellen"] * 40)
    s = run(spam)
    assert "top_ngram" in s.reasons
    assert "duplicate_ngrams" in s.reasons
    assert s.signals["top_2gram_char_fraction"] > 0.2
    top = [spam[a:b] for a, b, r in s.spans if r == "top_ngram"]
    assert top and all("Antrag stellen" in t or "Jetzt Antrag" in t for t in top)


def test_ngram_rules_need_enough_words() -> None:
    # "Vielen Dank!" is all one 2-gram; for a short chat answer that is fine.
    s = run("Vielen Dank!")
    assert s.signals["top_2gram_char_fraction"] > 0.2
    assert s.reasons == []


def test_empty_and_single_token_texts() -> None:
    assert run("").signals == {}
    s = run("Hallo")
    assert s.signals["top_2gram_char_fraction"] == 0.0
    assert s.reasons == []


def test_counters_per_reason() -> None:
    step = RepetitionSignals()
    batch = [Sample("a", "x\nx\nx\nx"), Sample("b", CLEAN_DE["wohngeld"])]
    step.process(batch, T)
    assert step.counters["duplicate_lines"] == 1
    assert "duplicate_paragraphs" not in step.counters
