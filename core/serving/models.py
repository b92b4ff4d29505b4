"""Chat tables: answers the server issued, and feedback on them (thumbs, corrections)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db.base import Base, JSONType, UTCDateTime, utcnow


class ChatAnswer(Base):
    """One answer the chat server generated, with exactly what the model was given.

    Feedback can only name one of these (by its random id), and only the user and chat
    session it was issued to: a rating can never carry an answer or a conversation that the
    server did not produce. `context` is the prompt as the model saw it (after the context
    limit dropped turns); each assistant turn in it records which model wrote it
    (`"adapter"`), or null when the server cannot vouch for it.
    """

    __tablename__ = "chat_answers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, nullable=False, index=True
    )
    username: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    # The chat session's id (sha256 of its token); null with authentication off or from the CLI.
    session_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    adapter_name: Mapped[str] = mapped_column(String(64), nullable=False)
    adapter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    context: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False)
    answer: Mapped[str] = mapped_column(Text, nullable=False, default="")
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    dropped_turns: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    complete: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class ChatFeedback(Base):
    """One rating of one answer, with everything needed to reproduce or train on it."""

    __tablename__ = "chat_feedback"
    __table_args__ = (Index("uq_chat_feedback_answer_id", "answer_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, nullable=False, index=True
    )
    username: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    # "base" or the adapter's registry name; the id survives a later rename or deletion.
    adapter_name: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    adapter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rating: Mapped[str] = mapped_column(String(8), nullable=False)  # up | down
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    answer: Mapped[str] = mapped_column(Text, nullable=False)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")
    conversation: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    dataset_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sample_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The stored answer rated (unique: one rating per answer); null for rows from before 0008.
    answer_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
