"""Chat tables: feedback on answers (thumbs, corrections, comments)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db.base import Base, JSONType, UTCDateTime, utcnow


class ChatFeedback(Base):
    """One rating of one answer, with everything needed to reproduce or train on it."""

    __tablename__ = "chat_feedback"

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
