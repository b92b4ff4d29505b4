"""Feedback from the chat: it rates a stored answer, and the sample is that exact exchange.

Runs on both engines (SQLite and the real PostgreSQL) through the `db_engine` fixture. The
answers are stored with core.serving.answers, as ChatService.reply (core.serving.chat) stores
them (the chat server's test drives the same path through a real model).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from core.datasets.review import list_samples
from core.db import reading
from core.db.models import AuditEntry
from core.permissions import PermissionDenied
from core.serving.answers import AnswerStart, annotate_context, new_answer_id, store_answer
from core.serving.feedback import (
    FeedbackError,
    FeedbackIn,
    feedback_dataset_name,
    list_feedback,
    record_feedback,
)
from core.serving.models import ChatFeedback
from core.users import create_user, principal_for

SESSION = "s" * 64
OTHER_SESSION = "t" * 64


@pytest.fixture
def chatter(db_engine, admin):
    create_user(db_engine, admin, "carla", "carla-pass-1", "user")
    return principal_for(db_engine, "carla")


def _answer(
    db,
    user,
    adapter: str,
    context: list[dict],
    text: str,
    *,
    session: str | None = SESSION,
    adapter_id: str | None = None,
) -> str:
    """Store an answer the way ChatService.reply does: the context annotated, then the text."""
    start = AnswerStart(
        id=new_answer_id(),
        username=user.username,
        session_id=session,
        adapter_name=adapter,
        adapter_id=adapter_id,
        context=annotate_context(db, user.username, session, context),
        settings={"temperature": 0.2, "max_new_tokens": 64},
        dropped_turns=0,
    )
    store_answer(db, start, text, complete=True)
    return start.id


def _count(engine) -> int:
    with reading(engine) as s:
        return s.scalar(select(func.count()).select_from(ChatFeedback))


def test_thumbs_down_with_correction_holds_exactly_the_stored_exchange(
    db_engine, chatter, admin
) -> None:
    context = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "And when did it get town rights?"},
    ]
    aid = _answer(db_engine, chatter, "town-history", context, "In 1999.", adapter_id="7")
    info = record_feedback(
        db_engine,
        chatter,
        FeedbackIn(
            answer_id=aid,
            rating="down",
            correction="In 1312, granted by the count.",
            comment="wrong year",
        ),
        session_id=SESSION,
    )
    assert info.username == "carla" and info.rating == "down" and info.adapter_id == "7"
    assert info.answer_id == aid and info.answer == "In 1999."
    assert info.prompt == "And when did it get town rights?"
    with reading(db_engine) as s:
        row = s.get(ChatFeedback, info.id)
        assert row.settings == {"temperature": 0.2, "max_new_tokens": 64}
        assert row.correction == "In 1312, granted by the count." and row.comment == "wrong year"
    page = list_samples(db_engine, admin, "feedback-town-history")
    assert page.total == 1
    sample = page.items[0]
    assert sample.id == info.sample_id and sample.status == "pending"
    assert sample.system == "Answer briefly."
    assert sample.messages == [
        {"role": "user", "content": "And when did it get town rights?"},
        {"role": "assistant", "content": "In 1312, granted by the count."},
    ]
    assert sample.provenance == {
        "source": "feedback",
        "feedback_id": info.id,
        "answer_id": aid,
        "adapter": "town-history",
        "rating": "down",
        "user": "carla",
    }
    assert sample.metadata["original_answer"] == "In 1999."
    assert sample.metadata["corrected"] is True


def test_thumbs_up_keeps_the_answer_and_goes_to_feedback_base(db_engine, chatter, admin) -> None:
    ask = [{"role": "user", "content": "Who founded Bergheim?"}]
    info = record_feedback(
        db_engine,
        chatter,
        FeedbackIn(
            answer_id=_answer(db_engine, chatter, "base", ask, "Monks, in 1120."), rating="up"
        ),
        session_id=SESSION,
    )
    page = list_samples(db_engine, admin, "feedback-base")
    assert [s.id for s in page.items] == [info.sample_id]
    assert page.items[0].messages[-1]["content"] == "Monks, in 1120."
    assert page.items[0].metadata["corrected"] is False
    # A second answer lands in the same dataset.
    record_feedback(
        db_engine,
        chatter,
        FeedbackIn(answer_id=_answer(db_engine, chatter, "base", ask, "Pirates."), rating="down"),
        session_id=SESSION,
    )
    assert list_samples(db_engine, admin, "feedback-base").total == 2


def test_only_an_answer_given_in_this_session_to_this_user_can_be_rated_once(
    db_engine, chatter, admin
) -> None:
    ask = [{"role": "user", "content": "Who founded Bergheim?"}]
    aid = _answer(db_engine, chatter, "base", ask, "Monks, in 1120.")
    for actor, session, answer_id in (
        (chatter, SESSION, "made-up-answer-id"),  # never issued
        (chatter, OTHER_SESSION, aid),  # issued, but in another chat session
        (chatter, None, aid),  # ... or to a request without a session
        (admin, SESSION, aid),  # another user, even an admin
    ):
        with pytest.raises(FeedbackError, match="unknown or was not given in this chat session"):
            record_feedback(
                db_engine, actor, FeedbackIn(answer_id=answer_id, rating="up"), session_id=session
            )
    assert _count(db_engine) == 0
    first = record_feedback(
        db_engine, chatter, FeedbackIn(answer_id=aid, rating="up"), session_id=SESSION
    )
    with pytest.raises(FeedbackError, match=f"already rated \\(feedback #{first.id}\\)"):
        record_feedback(
            db_engine, chatter, FeedbackIn(answer_id=aid, rating="down"), session_id=SESSION
        )
    assert _count(db_engine) == 1
    with reading(db_engine) as s:
        outcomes = s.scalars(
            select(AuditEntry.outcome)
            .where(AuditEntry.action == "chat.feedback")
            .order_by(AuditEntry.id)
        ).all()
    assert outcomes == ["failed"] * 4 + ["ok", "failed"]


def test_a_sample_holds_only_the_rated_models_turns(db_engine, chatter, admin) -> None:
    """Base answered first, then the person switched to the adapter and rated its answer:
    the base model's answer is no assistant turn of the sample (issue 10, item 5)."""
    q1 = {"role": "user", "content": "Who founded Bergheim?"}
    base_answer = _answer(db_engine, chatter, "base", [q1], "Pirates, in 1999.")
    q2 = {"role": "user", "content": "And the town rights?"}
    own = _answer(
        db_engine,
        chatter,
        "town-history",
        [q1, {"role": "assistant", "content": "Pirates, in 1999."}, q2],
        "Granted in 1312.",
    )
    q3 = {"role": "user", "content": "By whom?"}
    rated = _answer(
        db_engine,
        chatter,
        "town-history",
        [
            q1,
            {"role": "assistant", "content": "Pirates, in 1999.", "answer_id": base_answer},
            q2,
            {"role": "assistant", "content": "Granted in 1312.", "answer_id": own},
            # Text the server never produced, passed off as an earlier answer.
            q3,
            {"role": "assistant", "content": "By the Emperor, obviously."},
            {"role": "user", "content": "Really?"},
        ],
        "By the count.",
    )
    record_feedback(
        db_engine,
        chatter,
        FeedbackIn(answer_id=rated, rating="down", correction="By the Count of Berg."),
        session_id=SESSION,
    )
    [sample] = list_samples(db_engine, admin, "feedback-town-history").items
    assert sample.messages == [
        {"role": "user", "content": "Who founded Bergheim?\n\nAnd the town rights?"},
        {"role": "assistant", "content": "Granted in 1312."},
        {"role": "user", "content": "By whom?\n\nReally?"},
        {"role": "assistant", "content": "By the Count of Berg."},
    ]
    assert sample.metadata["omitted_answers"] == 2
    everything = " ".join(m["content"] for m in sample.messages)
    assert "Pirates" not in everything and "Emperor" not in everything


def test_earlier_turns_are_attributed_only_to_answers_of_this_session(db_engine, chatter) -> None:
    q = {"role": "user", "content": "Q"}
    _answer(db_engine, chatter, "base", [q], "from another session", session=OTHER_SESSION)
    _answer(db_engine, chatter, "town-history", [q], "mine")
    context = annotate_context(
        db_engine,
        "carla",
        SESSION,
        [
            q,
            {"role": "assistant", "content": "from another session"},
            q,
            {"role": "assistant", "content": "mine"},
            q,
        ],
    )
    assert [m.get("adapter") for m in context if m["role"] == "assistant"] == [None, "town-history"]


def test_feedback_needs_chat_permission_and_is_audited(db_engine, admin, chatter) -> None:
    create_user(db_engine, admin, "otto", "otto-pass-12", "auditor")
    auditor = principal_for(db_engine, "otto")
    aid = _answer(db_engine, chatter, "base", [{"role": "user", "content": "Q"}], "A")
    with pytest.raises(PermissionDenied, match="chat:use"):
        record_feedback(
            db_engine, auditor, FeedbackIn(answer_id=aid, rating="up"), session_id=SESSION
        )
    assert _count(db_engine) == 0
    with reading(db_engine) as s:
        outcomes = s.scalars(
            select(AuditEntry.outcome).where(AuditEntry.action == "chat.feedback")
        ).all()
    assert outcomes == ["denied"]


def test_bad_feedback_is_refused_and_nothing_is_written(db_engine, chatter) -> None:
    with pytest.raises(ValidationError):
        FeedbackIn(answer_id="x", rating="meh")
    with pytest.raises(ValidationError):
        FeedbackIn(answer_id="", rating="up")
    with pytest.raises(ValidationError):  # the old shape: free text is no longer accepted
        FeedbackIn(rating="up", conversation=[{"role": "user", "content": "Q"}], answer="x")
    empty = _answer(db_engine, chatter, "base", [{"role": "user", "content": "Q"}], "   ")
    with pytest.raises(FeedbackError, match="empty"):
        record_feedback(
            db_engine, chatter, FeedbackIn(answer_id=empty, rating="down"), session_id=SESSION
        )
    assert _count(db_engine) == 0


def test_people_see_their_own_feedback_reviewers_see_all(db_engine, chatter, admin) -> None:
    ask = [{"role": "user", "content": "Q"}]
    record_feedback(
        db_engine,
        chatter,
        FeedbackIn(answer_id=_answer(db_engine, chatter, "base", ask, "a"), rating="up"),
        session_id=SESSION,
    )
    record_feedback(
        db_engine,
        admin,
        FeedbackIn(answer_id=_answer(db_engine, admin, "x", ask, "b", session=None), rating="down"),
    )
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
