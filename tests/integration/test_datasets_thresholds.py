"""The Quality tab's numbers (issue 10, item 17): how many samples each threshold would flag,
computed in core from the stored signals, must be what a real scoring run then decides."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from core.datasets.errors import DatasetError
from core.datasets.models import DatasetSample
from core.datasets.quality.models import QualityThresholds
from core.datasets.scoring import score_dataset
from core.datasets.service import (
    SampleIn,
    add_samples,
    create_dataset,
    get_dataset,
    reset_thresholds,
    set_thresholds,
    thresholds_for,
)
from core.datasets.thresholds import (
    field_value,
    parse_text,
    threshold_effects,
    threshold_fields,
    with_field_value,
)
from core.db import reading
from core.permissions import PermissionDenied
from tests.conftest import principal

SENTENCES = [
    "Die Abfallgebührensatzung der Stadt regelt, wie die Gebühren berechnet werden.",
    "Der Sperrmüll wird auf Anmeldung zweimal im Jahr kostenlos abgeholt.",
    "Für einen Hund ist die Steuer jeweils zum ersten Juli eines Jahres fällig.",
    "Wer einen Baum fällen will, braucht dafür in der Regel eine Genehmigung.",
    "Die Bibliothek ist montags geschlossen und an den anderen Tagen bis acht offen.",
    "Anträge können bei der Stadt auch online gestellt werden, wenn sie vollständig sind.",
]
ENGLISH = (
    "The city council decides about the waste fees every year, and the citizens are told "
    "about the new rates in a letter that is sent before the first of January."
)


def _samples() -> list[SampleIn]:
    texts = []
    for i in range(len(SENTENCES)):
        texts.append(" ".join(SENTENCES[: i + 1]))  # 1..6 sentences: a spread of lengths
    texts.append("Kurz und knapp.")
    texts.append(ENGLISH)
    texts.append(SENTENCES[0] + " Fragen an info@example.org oder 0221 123456 78.")
    texts.append("\n".join([SENTENCES[1]] * 3 + [SENTENCES[2]]))  # repeated lines
    texts.append(" ".join(SENTENCES * 2))  # long, every sentence twice: n-gram repetition
    texts.append("- " + "\n- ".join(s.split(",")[0] for s in SENTENCES * 2))  # bullets
    texts.append(" ".join(SENTENCES[:3]))  # exact duplicate of the third text
    return [SampleIn(kind="text", text=t, provenance={"source": "manual"}) for t in texts]


PROPOSED = {
    "min_chars": 120,
    "max_chars": 400,
    "expected_languages": ["de", "en"],
    "min_language_confidence": 0.99,
    "max_duplicate_line_fraction": 0.1,
    "gopher_min_words": 20,
    "min_stop_words": 4,
    "max_bullet_line_fraction": 0.5,
    "pii_types": ["email"],
    "min_score": 0.7,
    "penalty_overrides": {"too_short": 0.1},
    "max_top_ngram_char_fraction.2": 0.05,
    "max_duplicate_ngram_char_fraction.5": 0.05,
}


def _actual(engine, dataset_id, min_score):
    with reading(engine) as s:
        rows = s.execute(
            select(DatasetSample.score, DatasetSample.reasons).where(
                DatasetSample.dataset_id == dataset_id
            )
        ).all()
    per_reason: dict[str, int] = {}
    for _, reasons in rows:
        for code in set(reasons):
            per_reason[code] = per_reason.get(code, 0) + 1
    return per_reason, sum(1 for score, _ in rows if score < min_score)


@pytest.mark.slow
def test_effects_predict_what_scoring_then_decides(db_engine, admin):
    ds = create_dataset(db_engine, admin, "faq")
    add_samples(db_engine, admin, ds.id, _samples())

    before = threshold_effects(db_engine, admin, "faq", thresholds_for(db_engine, admin, "faq"))
    assert before.scored == 0 and before.total == 13
    assert "Score the dataset" in before.describe("min_chars")

    score_dataset(db_engine, admin, "faq")
    saved_reasons, saved_below = _actual(db_engine, ds.id, 0.5)

    proposed = thresholds_for(db_engine, admin, "faq")
    for key, value in PROPOSED.items():
        proposed = with_field_value(proposed, key, value)
    eff = threshold_effects(db_engine, admin, "faq", proposed)
    assert eff.scored == 13
    # The saved values reproduce what the last run decided, exactly.
    assert eff.per_reason_saved == saved_reasons
    assert eff.below_min_score_saved == saved_below
    # Each field flags something here, and says so with both numbers when they differ.
    assert eff.fields["min_chars"].flagged > eff.fields["min_chars"].flagged_saved
    assert eff.per_reason.get("pii_phone", 0) == 0 < saved_reasons["pii_phone"]
    assert eff.fields["expected_languages"].flagged == 0 < saved_reasons["wrong_language"]
    line = eff.describe("min_chars")
    assert line.startswith(f"Flags {eff.fields['min_chars'].flagged} of 13 scored samples")
    assert f"(saved value: {eff.fields['min_chars'].flagged_saved})" in line
    assert "scored again" in eff.describe("blocklist")

    # Save the proposed values and score again: the prediction was right.
    set_thresholds(db_engine, admin, "faq", proposed)
    score_dataset(db_engine, admin, "faq")
    new_reasons, new_below = _actual(db_engine, ds.id, 0.7)
    assert eff.per_reason == new_reasons
    assert eff.below_min_score == new_below
    assert new_reasons != saved_reasons  # the test did change decisions


def test_fields_cover_every_threshold_and_reset(db_engine, admin):
    defaults = QualityThresholds().to_dict()
    fields = threshold_fields(defaults)
    covered = {f.key.partition(".")[0] for f in fields}
    assert covered == set(defaults) - {"schema_version"}
    assert {f.key for f in fields} >= {
        "max_top_ngram_char_fraction.3",
        "max_duplicate_ngram_char_fraction.10",
    }
    by_key = {f.key: f for f in fields}
    assert field_value(defaults, "max_top_ngram_char_fraction.3") == 0.18
    assert by_key["min_score"].maximum == 1 and by_key["min_chars"].minimum == 0
    assert by_key["pii_types"].options == ("email", "phone", "iban")
    assert parse_text(by_key["expected_languages"], "de, en") == ["de", "en"]
    assert parse_text(by_key["language_candidates"], " ") is None
    assert parse_text(by_key["penalty_overrides"], "too_short=0.3") == {"too_short": 0.3}
    with pytest.raises(DatasetError, match="unknown reason 'kurz'"):
        parse_text(by_key["penalty_overrides"], "kurz=0.3")

    create_dataset(db_engine, admin, "d")
    with pytest.raises(DatasetError, match="min_score"):
        threshold_effects(db_engine, admin, "d", {**defaults, "min_score": 3})
    set_thresholds(db_engine, admin, "d", {**defaults, "min_chars": 5})
    assert get_dataset(db_engine, admin, "d").thresholds["min_chars"] == 5
    with pytest.raises(PermissionDenied):
        reset_thresholds(db_engine, principal("auditor"), "d")
    reset_thresholds(db_engine, admin, "d")
    assert get_dataset(db_engine, admin, "d").thresholds is None  # "not customised"
    assert thresholds_for(db_engine, admin, "d") == defaults


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_preview_and_reset(db_engine, admin, settings):
    from tests.integration.test_datasets_cli import clara

    create_dataset(db_engine, admin, "faq")
    add_samples(db_engine, admin, "faq", _samples())
    score_dataset(db_engine, admin, "faq")
    p = clara(
        settings,
        "dataset",
        "thresholds",
        "faq",
        "--set",
        "min_chars=120",
        "--set",
        "max_top_ngram_char_fraction.2=0.05",
        "--preview",
        "--json",
    )
    out = json.loads(p.stdout)
    expected = threshold_effects(db_engine, admin, "faq", out["thresholds"])
    assert out["effects"]["fields"]["min_chars"]["flagged"] == expected.fields["min_chars"].flagged
    assert out["thresholds"]["max_top_ngram_char_fraction"]["2"] == 0.05
    assert get_dataset(db_engine, admin, "faq").thresholds is None  # a preview saves nothing
    p = clara(settings, "dataset", "thresholds", "faq", "--set", "min_chars=120", "--preview")
    assert "min_chars" in p.stdout and "Flags" in p.stdout

    clara(settings, "dataset", "thresholds", "faq", "--set", "min_chars=120")
    assert get_dataset(db_engine, admin, "faq").thresholds["min_chars"] == 120
    clara(settings, "dataset", "thresholds", "faq", "--reset")
    assert get_dataset(db_engine, admin, "faq").thresholds is None
