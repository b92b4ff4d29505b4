"""Feedback from the chat: stored with everything needed, and queued as review samples.

Runs on both engines (SQLite and the real PostgreSQL) through the `db_engine` fixture.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from core.auth import PermissionDenied, create_user, principal_for
from core.datasets.review import list_samples
from core.db import session_scope
from core.db.models import AuditEntry
from core.serving.models import ChatFeedback
from core.serving.service import (
    FeedbackError,
    FeedbackIn,
    feedback_dataset_name,
    list_feedback,
    record_feedback,
)

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Who founded Bergheim?"},
    {"role": "assistant", "content": "Monks, in 1120."},
    {"role": "user", "content": "And when did it get town rights?"},
]


@pytest.fixture
def chatter(db_engine, admin):
    create_user(db_engine, admin, "carla", "carla-pass-1", "user")
    return principal_for(db_engine, "carla")


def _count(engine) -> int:
    with session_scope(engine) as s:
        return s.scalar(select(func.count()).select_from(ChatFeedback))


def test_thumbs_down_with_correction_becomes_a_pending_sample(db_engine, chatter, admin) -> None:
    fb = FeedbackIn(
        rating="down", adapter="town-history", conversation=CONVERSATION,
        answer="In 1999.", correction="In 1312, granted by the count.", comment="wrong year",
        settings={"temperature": 0.2, "max_new_tokens": 64},
    )
    info = record_feedback(db_engine, chatter, fb, adapter_id="7")
    assert info.username == "carla" and info.rating == "down" and info.adapter_id == "7"
    assert info.prompt == "And when did it get town rights?"
    with session_scope(db_engine) as s:
        row = s.get(ChatFeedback, info.id)
        assert row.conversation == CONVERSATION
        assert row.settings == {"temperature": 0.2, "max_new_tokens": 64}
        assert row.correction == "In 1312, granted by the count." and row.comment == "wrong year"
    page = list_samples(db_engine, admin, "feedback-town-history")
    assert page.total == 1
    sample = page.items[0]
    assert sample.id == info.sample_id and sample.status == "pending"
    assert sample.system == "Answer briefly."
    assert sample.messages[-1] == {"role": "assistant", "content": "In 1312, granted by the count."}
    assert sample.messages[-2]["content"] == "And when did it get town rights?"
    assert sample.provenance == {"source": "feedback", "feedback_id": info.id,
                                 "adapter": "town-history", "rating": "down", "user": "carla"}
    assert sample.metadata["original_answer"] == "In 1999."
    assert sample.metadata["corrected"] is True


def test_thumbs_up_keeps_the_answer_and_goes_to_feedback_base(db_engine, chatter, admin) -> None:
    info = record_feedback(db_engine, chatter, FeedbackIn(
        rating="up", conversation=CONVERSATION[1:2], answer="Monks, in 1120."))
    page = list_samples(db_engine, admin, "feedback-base")
    assert [s.id for s in page.items] == [info.sample_id]
    assert page.items[0].messages[-1]["content"] == "Monks, in 1120."
    assert page.items[0].metadata["corrected"] is False
    # A second one lands in the same dataset.
    record_feedback(db_engine, chatter, FeedbackIn(
        rating="down", conversation=CONVERSATION[1:2], answer="Pirates."))
    assert list_samples(db_engine, admin, "feedback-base").total == 2


def test_feedback_needs_chat_permission_and_is_audited(db_engine, admin) -> None:
    create_user(db_engine, admin, "otto", "otto-pass-12", "auditor")
    auditor = principal_for(db_engine, "otto")
    with pytest.raises(PermissionDenied, match="chat:use"):
        record_feedback(db_engine, auditor, FeedbackIn(
            rating="up", conversation=CONVERSATION[1:2], answer="x"))
    assert _count(db_engine) == 0
    with session_scope(db_engine) as s:
        outcomes = s.scalars(select(AuditEntry.outcome).where(
            AuditEntry.action == "chat.feedback")).all()
    assert outcomes == ["denied"]


def test_bad_feedback_is_refused_and_nothing_is_written(db_engine, chatter) -> None:
    with pytest.raises(ValidationError, match="must end with the user's prompt"):
        FeedbackIn(rating="up", conversation=CONVERSATION[:3], answer="x")
    with pytest.raises(ValidationError, match="message 1: needs 'role'"):
        FeedbackIn(rating="up", conversation=[{"role": "bot", "content": "x"}], answer="x")
    with pytest.raises(ValidationError):
        FeedbackIn(rating="meh", conversation=CONVERSATION, answer="x")
    with pytest.raises(FeedbackError, match="no answer to rate"):
        record_feedback(db_engine, chatter, FeedbackIn(
            rating="down", conversation=CONVERSATION, answer="   "))
    assert _count(db_engine) == 0


def test_people_see_their_own_feedback_reviewers_see_all(db_engine, chatter, admin) -> None:
    record_feedback(db_engine, chatter, FeedbackIn(
        rating="up", conversation=CONVERSATION[1:2], answer="a"))
    record_feedback(db_engine, admin, FeedbackIn(
        rating="down", adapter="x", conversation=CONVERSATION[1:2], answer="b"))
    mine, total = list_feedback(db_engine, chatter)
    assert total == 1 and mine[0].username == "carla"
    everyone, total = list_feedback(db_engine, admin)
    assert total == 2 and [f.username for f in everyone] == ["admin", "carla"]
    only_x, total = list_feedback(db_engine, admin, adapter="x")
    assert total == 1 and only_x[0].answer == "b"


def test_dataset_names_are_safe_for_any_adapter_name() -> None:
    assert feedback_dataset_name("base") == "feedback-base"
    assert feedback_dataset_name("my adapter/v2") == "feedback-my-adapter-v2"
    assert feedback_dataset_name("") == "feedback-base"
