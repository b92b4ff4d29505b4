"""Tables of adapter lines, their activation history and their learning cycles."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db.base import Base, JSONType, UTCDateTime, utcnow


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
    # The learning policy (core.learning.policy.LearningPolicy as JSON); None: by hand only.
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
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


class LearningCycle(Base):
    """One retraining of a line: freeze the accepted samples, train from the active adapter
    (a job), judge the result (a gate job), promote it or keep the active adapter.

    `open_line` holds the line's id while the cycle is under way and NULL once it ended: the
    unique constraint lets only one cycle per line be open, whichever worker starts it."""

    __tablename__ = "learning_cycles"
    __table_args__ = (
        UniqueConstraint("open_line", name="uq_learning_cycles_open_line"),
        UniqueConstraint("line_id", "number", name="uq_learning_cycles_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    line_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_lines.id", ondelete="CASCADE"), nullable=False, index=True
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    open_line: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # training | gating | promoted | kept | failed | cancelled
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    trigger: Mapped[str] = mapped_column(String(16), nullable=False)  # manual | schedule
    started_by: Mapped[str] = mapped_column(String(64), nullable=False)
    dataset_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    samples_through: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    new_samples: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    from_adapter: Mapped[str] = mapped_column(String(64), nullable=False)
    candidate: Mapped[str] = mapped_column(String(64), nullable=False)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gate_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gate: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
