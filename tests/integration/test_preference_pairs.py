"""Preference pairs (issue 15, item 3): what chat feedback makes of them, how a pair is
checked, reviewed (edited) and exported in TRL's preference format. Both engines."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from core.datasets.export import ExportError, export_version
from core.datasets.review import edit_sample, list_samples
from core.datasets.service import SampleIn, add_samples, create_dataset
from core.datasets.versions import freeze, read_version
from core.errors import NotFound
from core.serving.feedback import FeedbackIn, preference_dataset_name, record_feedback
from tests.integration.test_chat_feedback import SESSION, _answer, chatter  # noqa: F401

ASK = [{"role": "user", "content": "Wie hoch ist die Hundesteuer?"}]


def test_ratings_and_corrections_make_pairs_for_review(db_engine, chatter):  # noqa: F811
    good = _answer(db_engine, chatter, "hund", ASK, "96 Euro im Jahr je Hund.")
    bad = _answer(db_engine, chatter, "hund", ASK, "Die Biotonne wird geleert.")
    record_feedback(db_engine, chatter, FeedbackIn(answer_id=good, rating="up"), session_id=SESSION)
    # Only one rating so far: no pair yet (and no empty dataset for it).
    with pytest.raises(NotFound, match="preferences-hund"):
        list_samples(db_engine, _admin(db_engine), preference_dataset_name("hund"))
    record_feedback(
        db_engine, chatter, FeedbackIn(answer_id=bad, rating="down"), session_id=SESSION
    )
    third = _answer(db_engine, chatter, "hund", ASK, "Kostenlos.")
    record_feedback(
        db_engine,
        chatter,
        FeedbackIn(answer_id=third, rating="down", correction="96 Euro jährlich."),
        session_id=SESSION,
    )
    page = list_samples(db_engine, _admin(db_engine), "preferences-hund", sort="id_asc")
    pairs = [(v.messages[-1]["content"], v.text, v.provenance["pair"]) for v in page.items]
    assert pairs == [
        ("96 Euro im Jahr je Hund.", "Die Biotonne wird geleert.", "ratings"),
        ("96 Euro jährlich.", "Kostenlos.", "correction"),
    ]
    assert all(v.kind == "pref" and v.status == "pending" for v in page.items)
    assert page.items[0].messages[:-1] == ASK

    # A reviewer may edit a pair (the rejected answer too); it stays a valid pair.
    first = page.items[0]
    edited = edit_sample(
        db_engine,
        _admin(db_engine),
        first.id,
        first.row_version,
        text="Die Biotonne.",
        messages=first.messages,
        decision="accepted",
    )
    assert edited.text == "Die Biotonne." and edited.kind == "pref"


def _admin(engine):
    from core.users import principal_for

    return principal_for(engine, "admin")


def test_a_pair_is_checked_frozen_and_exported_for_trl(db_engine, admin, tmp_path):
    def pair(**kw):
        return SampleIn(
            **{
                "kind": "pref",
                "messages": [*ASK, {"role": "assistant", "content": "96 Euro."}],
                "text": "Gar nichts.",
                "status": "accepted",
                **kw,
            }
        )

    with pytest.raises(ValidationError, match="needs the rejected answer"):
        pair(text=" ")
    with pytest.raises(ValidationError, match="are the same"):
        pair(text="96 Euro.")
    with pytest.raises(ValidationError, match="ends with the chosen assistant answer"):
        pair(messages=[*ASK, {"role": "assistant", "content": "96 Euro."}, *ASK])

    ds = create_dataset(db_engine, admin, "prefs")
    add_samples(
        db_engine,
        admin,
        ds.id,
        [
            pair(),
            SampleIn(
                kind="chat",
                messages=[*ASK, {"role": "assistant", "content": "x"}],
                status="accepted",
            ),
        ],
    )
    version = freeze(db_engine, admin, ds.id, eval_ratio=0.0)
    assert version.counts["pref"] == 1 and version.counts["chat"] == 1
    rows = read_version(version, "train").to_pylist()
    assert {r["kind"] for r in rows} == {"pref", "chat"}
    with pytest.raises(ExportError, match="is no preference pair"):
        export_version(db_engine, admin, version.id, "preference", "jsonl")

    only = create_dataset(db_engine, admin, "prefs-only")
    add_samples(db_engine, admin, only.id, [pair()])
    v2 = freeze(db_engine, admin, only.id, eval_ratio=0.0)
    out = export_version(db_engine, admin, v2.id, "preference", "jsonl")
    [row] = [json.loads(x) for x in out.file("train").read_text().splitlines()]
    assert row == {
        "prompt": ASK,
        "chosen": [{"role": "assistant", "content": "96 Euro."}],
        "rejected": [{"role": "assistant", "content": "Gar nichts."}],
    }
    messages = export_version(db_engine, admin, v2.id, "messages", "jsonl")
    [as_chat] = [json.loads(x) for x in messages.file("train").read_text().splitlines()]
    assert as_chat["messages"][-1]["content"] == "96 Euro."  # the chosen conversation
