"""Tables of adapter lines and their activation history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db.base import Base, UTCDateTime, utcnow


class AdapterLine(Base):
    """A named sequence of adapters on one base model; `active_adapter_id` is served."""

    __tablename__ = "adapter_lines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    base_model: Mapped[str] = mapped_column(Text, nullable=False)
    base_model_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    # RESTRICT: an adapter that a line serves cannot be deleted from under it.
    active_adapter_id: Mapped[int] = mapped_column(
        ForeignKey("adapters.id", ondelete="RESTRICT"), nullable=False
    )
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class LineActivation(Base):
    """One change of a line's active adapter: who, what, when, why. Names are kept as they
    were, so the history reads the same after an adapter was deleted."""

    __tablename__ = "line_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    line_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_lines.id", ondelete="CASCADE"), nullable=False, index=True
    )
    action: Mapped[str] = mapped_column(String(16), nullable=False)  # create|activate|rollback
    adapter_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    adapter_name: Mapped[str] = mapped_column(String(64), nullable=False)
    previous_adapter_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    previous_adapter_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(64), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
