"""QualityPipeline: batching, scoring, counters, progress, thresholds (de)serialisation."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from core.datasets.quality import (
    ALL_REASONS,
    HARD_FAILS,
    REASON_LABELS,
    REASON_LABELS_DE,
    LengthSignals,
    QualityInput,
    QualityPipeline,
    QualityStep,
    QualityThresholds,
    RepetitionSignals,
    Sample,
    default_steps,
    reason_label,
    score_reasons,
)
from tests.unit.test_quality_fixtures import CLEAN_DE, ENGLISH

# -- thresholds -------------------------------------------------------------------------------


def test_thresholds_round_trip_through_json() -> None:
    t = QualityThresholds(
        min_chars=5,
        expected_languages=["DE", "en"],
        blocklist=["geheim"],
        max_top_ngram_char_fraction={2: 0.3, 3: 0.25},
        penalty_overrides={"pii_email": 0.0},
        pii_mask=True,
        minhash_hash="xxh32",
    )
    data = json.loads(json.dumps(t.to_dict()))
    assert data["max_top_ngram_char_fraction"] == {"2": 0.3, "3": 0.25}
    back = QualityThresholds.from_dict(data)
    assert back == t
    assert back.max_top_ngram_char_fraction == {2: 0.3, 3: 0.25}
    assert back.expected_languages == ["de", "en"]


def test_threshold_defaults_are_gophers() -> None:
    t = QualityThresholds()
    assert t.max_top_ngram_char_fraction == {2: 0.20, 3: 0.18, 4: 0.16}
    assert t.max_duplicate_ngram_char_fraction == {
        5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10,
    }  # fmt: skip
    assert (t.max_duplicate_line_fraction, t.max_duplicate_paragraph_fraction) == (0.3, 0.3)
    assert t.expected_languages == ["de"]
    assert (t.near_duplicate_threshold, t.minhash_ngram, t.num_perm) == (0.8, 5, 128)


def test_thresholds_reject_typos_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        QualityThresholds.from_dict({"min_char": 10})
    with pytest.raises(ValidationError):
        QualityThresholds(near_duplicate_threshold=1.5)
    with pytest.raises(ValidationError):
        QualityThresholds(minhash_hash="md5")


# -- reasons and score ------------------------------------------------------------------------


def test_every_reason_has_labels_and_a_penalty() -> None:
    assert set(REASON_LABELS) == set(ALL_REASONS) == set(REASON_LABELS_DE)
    assert reason_label("near_duplicate", "de") == "Beinahe-Duplikat"
    assert reason_label("something_new") == "something_new"
    assert {"exact_duplicate", "near_duplicate", "blocklist", "wrong_language"} <= HARD_FAILS


def test_score_is_monotonic_in_reasons() -> None:
    assert score_reasons([]) == 1.0
    one = score_reasons(["pii_email"])
    two = score_reasons(["pii_email", "duplicate_lines"])
    assert 1.0 > one > two > 0.0
    assert score_reasons(["pii_email", "pii_email"]) == one  # distinct reasons count once
    for hard in HARD_FAILS:
        assert score_reasons([hard]) <= 0.1
    assert score_reasons(["pii_email"], {"pii_email": 0.0}) == 1.0


def test_clean_sample_scores_higher_than_broken_ones() -> None:
    clean = CLEAN_DE["erklaerung"]
    broken = {
        "mojibake": clean.replace("ü", "Ã¼").replace("ä", "Ã¤"),
        "english": ENGLISH,
        "repeated": "\n".join([clean[:80]] * 6),
        "blocked": clean + " Das ist geheim.",
    }
    pipeline = QualityPipeline(default_steps(dedup=False), QualityThresholds(blocklist=["geheim"]))
    results = {r.id: r for r in pipeline.run([("clean", clean), *broken.items()])}
    assert results["clean"].score == 1.0 and results["clean"].keep
    for key in broken:
        assert results[key].score < results["clean"].score, key
        assert results[key].reasons, key
    assert "mojibake" in results["mojibake"].reasons
    assert not results["english"].keep and not results["blocked"].keep


# -- pipeline -----------------------------------------------------------------------------------


def _inputs(n: int) -> Iterator[QualityInput]:
    texts = list(CLEAN_DE.values())
    for i in range(n):
        # Every sample distinct, so dedup flags only the deliberate copies below.
        yield QualityInput(f"s{i}", f"{texts[i % len(texts)]} (Vorgang {i * 7919})")


def test_results_in_order_with_progress_and_counters() -> None:
    progress: list[int] = []
    inputs = [
        *list(_inputs(5)),
        QualityInput("copy", CLEAN_DE["brief"] + " (Vorgang 7919)"),
        QualityInput("near", CLEAN_DE["wohngeld"] + " (Vorgang 1)"),
    ]
    pipeline = QualityPipeline(batch_size=3, on_progress=progress.append)
    results = list(pipeline.run(inputs))
    assert [r.id for r in results] == [i.id for i in inputs]
    assert progress == [3, 6, 7]
    assert [r.reasons for r in results[:5]] == [[]] * 5
    assert results[5].reasons == ["exact_duplicate"] and results[5].duplicate_of == "s1"
    assert results[6].reasons == ["near_duplicate"] and results[6].duplicate_of == "s0"
    stats = pipeline.stats()
    assert stats["pipeline"]["samples"] == 7
    assert stats["pipeline"]["batches"] == 3
    assert stats["pipeline"]["kept"] == 5 and stats["pipeline"]["dropped"] == 2
    assert stats["exact_duplicates"]["exact_duplicate"] == 1
    assert stats["near_duplicates"]["near_duplicate"] == 1
    assert stats["near_duplicates"]["skipped_exact"] == 1
    for step in pipeline.steps:
        assert stats[step.name]["samples"] == 7
        assert stats[step.name]["seconds"] >= 0


def test_pipeline_is_lazy_generator_in_generator_out() -> None:
    consumed: list[int] = []

    def source() -> Iterator[tuple[str, str]]:
        for i, inp in enumerate(_inputs(1000)):
            consumed.append(i)
            yield inp.id, inp.text

    pipeline = QualityPipeline([LengthSignals()], batch_size=10)
    out = pipeline.run(source())
    first = next(out)
    assert first.id == "s0"
    assert len(consumed) == 10  # only the first batch was read


def test_custom_steps_and_unique_names() -> None:
    class Shouting(QualityStep):
        name = "shouting"

        def process(self, batch: list[Sample], thresholds: QualityThresholds) -> None:
            for s in batch:
                upper = sum(c.isupper() for c in s.text) / max(len(s.text), 1)
                s.signals["upper_fraction"] = round(upper, 3)
                if upper > 0.5:
                    self.flag(s, "shouting", [(0, len(s.text))])

    pipeline = QualityPipeline([Shouting(), RepetitionSignals()])
    a, b = pipeline.run([("a", "BITTE SOFORT ANRUFEN"), ("b", "Bitte rufen Sie an.")])
    assert a.reasons == ["shouting"] and a.flagged_spans == [(0, 20, "shouting")]
    assert a.score == 0.5  # unknown codes cost 0.5
    assert b.reasons == []
    with pytest.raises(ValueError):
        QualityPipeline([Shouting(), Shouting()])


def test_run_one_and_result_dict_is_json_able() -> None:
    pipeline = QualityPipeline(thresholds=QualityThresholds(pii_mask=True))
    r = pipeline.run_one(QualityInput("x", CLEAN_DE["wohngeld"] + " Tel. 030-1234567"))
    assert r.reasons == ["pii_phone"]
    assert r.masked_text is not None and r.masked_text.endswith("Tel. [TELEFON]")
    assert 0.0 < r.score < 1.0 and r.keep
    json.dumps(r.to_dict())


def test_default_steps_seed_both_dedup_steps_from_one_reference_generator() -> None:
    ref = ((f"old-{k}", text) for k, text in CLEAN_DE.items())  # a generator, read twice
    pipeline = QualityPipeline(default_steps(reference=ref))
    exact, near = pipeline.run(
        [
            ("n1", CLEAN_DE["brief"]),
            ("n2", CLEAN_DE["erklaerung"].replace("Monat", "Jahr")),
        ]
    )
    assert exact.reasons == ["exact_duplicate"] and exact.duplicate_of == "old-brief"
    assert near.reasons == ["near_duplicate"] and near.duplicate_of == "old-erklaerung"
