"""Operations tables: the heartbeats of long-running processes (core.ops.heartbeats)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db.base import Base, JSONType, UTCDateTime, utcnow

PROCESS_KINDS = ("worker", "chat", "api")


class ServiceHeartbeat(Base):
    """One live (or dead, when `heartbeat_at` is old) worker or server process. Deleted on
    a clean exit, so every row is either running or died without saying so."""

    __tablename__ = "service_heartbeats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, index=True)  # PROCESS_KINDS
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
