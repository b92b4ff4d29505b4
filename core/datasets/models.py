"""Dataset tables: datasets, their samples, frozen versions and quality-scoring runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db.base import Base, JSONType, UTCDateTime, utcnow

SAMPLE_STATUSES = ("pending", "accepted", "rejected")
DATASET_KINDS = ("standard", "feedback")


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    kind: Mapped[str] = mapped_column(String(16), default="standard", nullable=False)
    # QualityThresholds.to_dict(); None means the library defaults.
    thresholds: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class DatasetSample(Base):
    __tablename__ = "dataset_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True
    )
    kind: Mapped[str] = mapped_column(String(8), nullable=False)  # text | chat
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(JSONType, nullable=True)
    system: Mapped[str | None] = mapped_column(Text, nullable=True)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict, nullable=False)
    # provenance["source"], denormalised so the review queue can filter on it in SQL.
    source: Mapped[str] = mapped_column(String(32), default="manual", nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", nullable=False, index=True)
    content_sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    char_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    token_count: Mapped[int | None] = mapped_column(Integer, nullable=True)

    # Quality (None until scored; cleared when the content is edited).
    score: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    signals: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    reasons: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    # ",code1,code2," so a reason filter is a portable LIKE on both engines.
    reason_codes: Mapped[str] = mapped_column(Text, default="", nullable=False)
    flagged_spans: Mapped[list[list[Any]] | None] = mapped_column(JSONType, nullable=True)
    duplicate_of: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Only the scorer reads signatures; deferred so queue pages do not carry them.
    minhash: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    scored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # Review. `row_version` is the optimistic-concurrency counter: every decision or edit
    # is an UPDATE ... WHERE id = ? AND row_version = ?.
    row_version: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    original: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    edited_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    review_note: Mapped[str] = mapped_column(Text, default="", nullable=False)
    changed_by: Mapped[str] = mapped_column(String(64), nullable=False)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class DatasetVersion(Base):
    """Immutable once written: a database trigger refuses UPDATE on both engines."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "number", name="uq_dataset_versions_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    manifest_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    counts: Mapped[dict[str, int]] = mapped_column(JSONType, nullable=False)
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class ScoringRun(Base):
    __tablename__ = "dataset_scoring_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True
    )
    status: Mapped[str] = mapped_column(String(16), default="queued", nullable=False)
    total: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    done: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    thresholds: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
