"""Review queue on both engines: filters, sort, paging, decisions, edits, conflicts, bulk."""

from __future__ import annotations

import pytest

from core.datasets.errors import DatasetError, ReviewConflict
from core.datasets.review import (
    SampleFilter,
    bulk_decide,
    decide,
    edit_sample,
    get_sample,
    list_samples,
    review_stats,
)
from core.datasets.scoring import score_dataset
from core.datasets.service import SampleIn, add_samples, create_dataset
from core.permissions import PermissionDenied
from tests.conftest import principal

TOPICS = [
    "Abfuhr von Restmüll",
    "Pflege der Bäume im Stadtpark",
    "Nutzung der Sporthallen",
    "Anmeldung eines Hundes",
    "Genehmigung von Bauvorhaben",
    "Reinigung der Gehwege",
]
GOOD = (
    "Die Satzung der Stadt beschreibt ausführlich die {t}. Sie nennt die Pflichten der "
    "Bürger, die Zuständigkeit des Amtes und die Fristen, die dabei gelten."
)


@pytest.fixture
def ds(db_engine, admin):
    info = create_dataset(db_engine, admin, "rev")
    samples = [
        SampleIn(kind="text", text=GOOD.format(t=t), provenance={"source": "corpus"})
        for t in TOPICS
    ]
    samples += [
        SampleIn(kind="text", text="Zu kurz.", provenance={"source": "import"}),
        SampleIn(
            kind="chat",
            provenance={"source": "feedback", "rating": "down"},
            messages=[
                {"role": "user", "content": "Wer ist zuständig für Müll?"},
                {
                    "role": "assistant",
                    "content": "Das Umweltamt der Stadt "
                    "ist für alle Fragen rund um den Müll zuständig.",
                },
            ],
        ),
    ]
    ids = add_samples(db_engine, admin, info.id, samples)
    score_dataset(db_engine, admin, info.id)
    return info, ids


def test_filter_sort_page(db_engine, admin, ds):
    info, ids = ds
    page = list_samples(db_engine, admin, info.id, sort="score_asc", limit=3)
    assert page.total == 8 and len(page.items) == 3
    assert page.items[0].id == ids[6] and "too_short" in page.items[0].reasons
    scores = [v.score for v in list_samples(db_engine, admin, info.id, limit=50).items]
    assert scores == sorted(scores)
    second = list_samples(db_engine, admin, info.id, sort="id_asc", offset=3, limit=3)
    assert [v.id for v in second.items] == ids[3:6]
    assert list_samples(db_engine, admin, info.id, SampleFilter(reason="too_short")).total == 1
    fb = list_samples(db_engine, admin, info.id, SampleFilter(source="feedback"))
    assert fb.total == 1 and fb.items[0].kind == "chat"
    assert list_samples(db_engine, admin, info.id, SampleFilter(search="umweltAMT")).total == 1
    assert list_samples(db_engine, admin, info.id, SampleFilter(search="für alle")).total == 1
    assert list_samples(db_engine, admin, info.id, SampleFilter(max_score=0.5)).total == 1
    assert "preview" in page.frame().columns
    by_source = list_samples(db_engine, admin, info.id, sort="source", limit=50).items
    assert [v.source for v in by_source] == sorted(v.source for v in by_source)


def test_conflict_names_the_other_reviewer(db_engine, admin, ds):
    info, ids = ds
    alice, bob = principal("analyst", "alice"), principal("trainer", "bob")
    seen_by_alice = get_sample(db_engine, alice, ids[0])
    seen_by_bob = get_sample(db_engine, bob, ids[0])
    after = decide(db_engine, alice, ids[0], "accepted", seen_by_alice.row_version)
    assert after.status == "accepted" and after.reviewed_by == "alice"
    with pytest.raises(ReviewConflict) as err:
        decide(db_engine, bob, ids[0], "rejected", seen_by_bob.row_version)
    assert err.value.changed_by == "alice" and "alice" in str(err.value)
    assert get_sample(db_engine, admin, ids[0]).status == "accepted"
    with pytest.raises(ReviewConflict):
        edit_sample(
            db_engine, bob, ids[0], seen_by_bob.row_version, text="Neu " + GOOD.format(t="x")
        )
    with pytest.raises(PermissionDenied):
        decide(db_engine, principal("user"), ids[0], "rejected", after.row_version)


def test_edit_keeps_original(db_engine, admin, ds):
    info, ids = ds
    chat = get_sample(db_engine, admin, ids[7])
    assert chat.score is not None
    msgs = [dict(m) for m in chat.messages]
    msgs[1]["content"] = "Das Umweltamt, Zimmer 12."
    e1 = edit_sample(
        db_engine, admin, chat.id, chat.row_version, messages=msgs, system="Antworte knapp."
    )
    assert (
        e1.messages[1]["content"] == "Das Umweltamt, Zimmer 12." and e1.system == "Antworte knapp."
    )
    assert e1.original["messages"] == chat.messages and e1.original["system"] is None
    assert e1.edited_by == "admin" and e1.edited_at is not None and e1.score is None
    e2 = edit_sample(
        db_engine, admin, chat.id, e1.row_version, messages=chat.messages, decision="accepted"
    )
    assert e2.original["messages"] == chat.messages and e2.status == "accepted"
    with pytest.raises(DatasetError, match="assistant"):
        edit_sample(
            db_engine,
            admin,
            chat.id,
            e2.row_version,
            messages=[{"role": "user", "content": "nur Frage"}],
        )


def test_bulk_and_stats(db_engine, admin, ds):
    info, ids = ds
    n = bulk_decide(db_engine, admin, info.id, "rejected", SampleFilter(max_score=0.5))
    assert n == 1
    n = bulk_decide(db_engine, admin, info.id, "accepted", SampleFilter(status=["pending"]))
    assert n == 7
    st = review_stats(db_engine, admin, info.id)
    assert st.counts == {"pending": 0, "accepted": 7, "rejected": 1, "total": 8}
    assert st.by_source["import"] == {"rejected": 1}
    assert st.reasons["too_short"] == 1
    assert sum(c for _, _, c in st.score_histogram) == 8 == st.scored
    assert sum(c for _, _, c in st.token_histogram) == 8
    assert st.reviewers == {"admin": {"accepted": 7, "rejected": 1}}
