"""Feedback from the chat: a rating of one stored answer becomes a pending sample of the
rated adapter's `feedback-<adapter>` dataset, holding exactly that exchange."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import Engine, func, select

from core.audit import audited
from core.db import reading, writing
from core.permissions import SYSTEM, Principal, require
from core.serving.answers import find_answer, sample_turns
from core.serving.engine import BASE, ServingError
from core.serving.models import ChatFeedback


class FeedbackError(ServingError):
    pass


class FeedbackIn(BaseModel):
    """One rating of one stored answer, as the chat UI, the API or the CLI sends it.

    There is no answer text or conversation here on purpose: the server rates only what it
    generated itself (core.serving.answers), so a client cannot file made-up exchanges.
    """

    answer_id: str = Field(min_length=1, max_length=32)
    rating: Literal["up", "down"]
    correction: str | None = None
    comment: str = ""

    @field_validator("correction")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v if v and v.strip() else None


@dataclass(frozen=True)
class FeedbackInfo:
    id: int
    created_at: datetime
    username: str
    adapter_name: str
    adapter_id: str | None
    rating: str
    prompt: str
    answer: str
    correction: str | None
    comment: str
    dataset_id: int | None
    sample_id: int | None
    answer_id: str | None = None


def feedback_dataset_name(adapter: str) -> str:
    """`feedback-<adapter>`; characters a dataset name cannot hold become '-'."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", adapter or BASE).strip("-") or BASE
    return f"feedback-{safe}"[:128]


def preference_dataset_name(adapter: str) -> str:
    """`preferences-<adapter>`: the preference pairs built from feedback on that adapter."""
    return "preferences-" + feedback_dataset_name(adapter).removeprefix("feedback-")


def _pairs(s, feedback: FeedbackIn, answer: str, prompt: str, adapter: str) -> list[dict]:
    """(chosen, rejected, feedback ids) pairs this rating makes: a correction beats the
    answer it corrects; an answer rated up beats one rated down for the same prompt (the
    newest of them)."""
    if feedback.rating == "down" and feedback.correction:
        return [{"chosen": feedback.correction, "rejected": answer, "others": []}]
    other = "down" if feedback.rating == "up" else "up"
    found = s.execute(
        select(ChatFeedback.id, ChatFeedback.answer)
        .where(
            ChatFeedback.adapter_name == adapter[:64],
            ChatFeedback.prompt == prompt,
            ChatFeedback.rating == other,
        )
        .order_by(ChatFeedback.id.desc())
        .limit(1)
    ).first()
    if found is None or found.answer.strip() == answer.strip():
        return []
    good, bad = (answer, found.answer) if feedback.rating == "up" else (found.answer, answer)
    return [{"chosen": good, "rejected": bad, "others": [found.id]}]


def _info(f: ChatFeedback) -> FeedbackInfo:
    return FeedbackInfo(
        f.id,
        f.created_at,
        f.username,
        f.adapter_name,
        f.adapter_id,
        f.rating,
        f.prompt,
        f.answer,
        f.correction,
        f.comment,
        f.dataset_id,
        f.sample_id,
        f.answer_id,
    )


def record_feedback(
    db: Engine, actor: Principal, feedback: FeedbackIn, *, session_id: str | None = None
) -> FeedbackInfo:
    """Rate a stored answer and add the exchange as a pending sample of its feedback dataset.

    The answer must have been given to `actor` in the chat session `session_id` (None: no
    session, i.e. authentication off or the CLI), and may be rated once. The sample holds
    exactly that exchange as stored: the prompt the model saw, with only the rated model's
    own earlier answers as assistant turns (core.serving.answers.sample_turns), then the
    correction if there is one, else the answer (kept in the metadata either way).
    Row and sample are written in one transaction: either both exist or neither does.
    """
    from sqlalchemy.exc import IntegrityError

    from core.datasets.service import SampleIn, get_or_create_dataset, insert_samples, sample_row

    with audited(
        db, actor, "chat.feedback", target=feedback.answer_id, detail={"rating": feedback.rating}
    ) as ctx:
        require(actor, "chat:use")
        answer = find_answer(db, actor, feedback.answer_id, session_id)
        if answer is None:
            raise FeedbackError(
                f"answer {feedback.answer_id!r} is unknown or was not given in this chat "
                "session; only answers the chat gave you in this session can be rated"
            )
        if not answer.answer.strip():
            raise FeedbackError("that answer is empty: there is nothing to rate")
        with reading(db) as s:
            done = s.scalar(select(ChatFeedback.id).where(ChatFeedback.answer_id == answer.id))
        if done is not None:
            raise FeedbackError(f"this answer was already rated (feedback #{done})")
        adapter = answer.adapter_name
        ctx.detail["adapter"] = adapter
        ds_name = feedback_dataset_name(adapter)
        # Creating the dataset is bookkeeping done for the chat user, who need not hold
        # datasets:create; the sample itself records who gave the feedback.
        ds = get_or_create_dataset(
            db,
            SYSTEM,
            ds_name,
            description=f"Feedback from the chat on {adapter!r} (ratings and corrections)",
            kind="feedback",
        )
        turns = sample_turns(answer.context, adapter)
        prompt = next((m["content"] for m in reversed(turns.messages) if m["role"] == "user"), "")
        final = feedback.correction if feedback.correction else answer.answer
        with reading(db) as s:
            pairs = _pairs(s, feedback, answer.answer, prompt, adapter)
        # Made before the write transaction: SQLite allows one writer at a time.
        prefs = preference_dataset_id(db, adapter) if pairs else None
        try:
            with writing(db) as s:
                row = ChatFeedback(
                    username=actor.username,
                    adapter_name=adapter[:64],
                    adapter_id=answer.adapter_id,
                    rating=feedback.rating,
                    prompt=prompt,
                    answer=answer.answer,
                    correction=feedback.correction,
                    comment=feedback.comment,
                    conversation=answer.context,
                    settings=answer.settings,
                    dataset_id=ds.id,
                    answer_id=answer.id,
                )
                s.add(row)
                s.flush()
                sample = SampleIn(
                    kind="chat",
                    messages=[*turns.messages, {"role": "assistant", "content": final}],
                    system=turns.system,
                    provenance={
                        "source": "feedback",
                        "feedback_id": row.id,
                        "answer_id": answer.id,
                        "adapter": adapter,
                        "rating": feedback.rating,
                        "user": actor.username,
                    },
                    metadata={
                        "original_answer": answer.answer,
                        "corrected": feedback.correction is not None,
                        "comment": feedback.comment,
                        "settings": answer.settings,
                        "omitted_answers": turns.omitted_answers,
                        "dropped_turns": answer.dropped_turns,
                    },
                    status="pending",
                )
                [row.sample_id] = insert_samples(
                    s, ds.id, [sample_row(ds.id, sample, actor.username)]
                )
                ctx.detail.update(
                    {"feedback_id": row.id, "sample_id": row.sample_id, "dataset": ds_name}
                )
                # Preference pairs for DPO, reviewed like any sample before they train.
                pair_samples = [
                    SampleIn(
                        kind="pref",
                        messages=[*turns.messages, {"role": "assistant", "content": p["chosen"]}],
                        system=turns.system,
                        text=p["rejected"],
                        provenance={
                            "source": "feedback",
                            "feedback_ids": [row.id, *p["others"]],
                            "adapter": adapter,
                            "pair": "correction" if p["others"] == [] else "ratings",
                            "user": actor.username,
                        },
                        status="pending",
                    )
                    for p in pairs
                ]
                if pair_samples:
                    rows = [sample_row(prefs, x, actor.username) for x in pair_samples]
                    insert_samples(s, prefs, rows)
                    ctx.detail["preference_pairs"] = len(pair_samples)
                s.flush()
                return _info(row)
        except IntegrityError:  # rated at the same moment by a second request
            raise FeedbackError("this answer was already rated") from None


def preference_dataset_id(db: Engine, adapter: str) -> int:
    """The id of `preferences-<adapter>`, created when missing (as SYSTEM: bookkeeping)."""
    from core.datasets.service import get_or_create_dataset

    return get_or_create_dataset(
        db,
        SYSTEM,
        preference_dataset_name(adapter),
        description=f"Preference pairs from chat feedback on {adapter!r} (for DPO)",
        kind="feedback",
    ).id


def list_feedback(
    db: Engine,
    actor: Principal,
    *,
    adapter: str | None = None,
    username: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[FeedbackInfo], int]:
    """A page of feedback, newest first, and the total count.

    People see their own feedback; reviewers (datasets:review) see everyone's.
    """
    require(actor, "chat:use")
    conds = []
    if not actor.can("datasets:review"):
        username = actor.username
    if username:
        conds.append(ChatFeedback.username == username)
    if adapter:
        conds.append(ChatFeedback.adapter_name == adapter)
    with reading(db) as s:
        total = s.scalar(select(func.count()).select_from(ChatFeedback).where(*conds)) or 0
        rows = s.scalars(
            select(ChatFeedback)
            .where(*conds)
            .order_by(ChatFeedback.id.desc())
            .offset(offset)
            .limit(limit)
        ).all()
        return [_info(r) for r in rows], total
