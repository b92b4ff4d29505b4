"""The append-only audit log: who did what to which target, when, and how it ended."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, select

from core.db import reading, writing
from core.db.models import AuditEntry
from core.permissions import PermissionDenied, Principal, require

if TYPE_CHECKING:
    import pandas as pd


def record(
    engine: Engine,
    actor: str,
    action: str,
    target: str = "",
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit row in its own transaction (so it survives the caller's rollback).

    It takes the write lock up front, waiting with backoff for a long writer (a lost audit
    row would hide what happened)."""
    with writing(engine) as s:
        s.add(
            AuditEntry(
                actor=actor[:64],
                action=action[:64],
                target=str(target)[:255],
                outcome=outcome,
                detail=detail or {},
            )
        )


@dataclass
class AuditContext:
    """Lets the audited block add detail (e.g. the id it created) before the row is written."""

    detail: dict[str, Any]
    target: str


@contextmanager
def audited(
    engine: Engine,
    actor: Principal,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> Iterator[AuditContext]:
    """Record a mutating action with outcome ok, denied (PermissionDenied) or failed."""

    ctx = AuditContext(detail=dict(detail or {}), target=str(target))
    try:
        yield ctx
    except PermissionDenied as err:
        record(
            engine,
            actor.username,
            action,
            ctx.target,
            "denied",
            {**ctx.detail, "permission": err.permission},
        )
        raise
    except Exception as err:
        record(
            engine,
            actor.username,
            action,
            ctx.target,
            "failed",
            {**ctx.detail, "error": str(err)[:500]},
        )
        raise
    record(engine, actor.username, action, ctx.target, "ok", ctx.detail)


@dataclass(frozen=True)
class AuditPage:
    rows: pd.DataFrame
    total: int


def read_audit_log(
    engine: Engine,
    actor: Principal,
    *,
    offset: int = 0,
    limit: int = 50,
    action_prefix: str | None = None,
    user: str | None = None,
    since: datetime | None = None,
) -> AuditPage:
    """A page of the audit log, newest first; filters are applied in SQL."""
    import pandas as pd  # only here: every `clara` command imports this module at start

    require(actor, "audit:read")
    conds = []
    if action_prefix:
        conds.append(AuditEntry.action.startswith(action_prefix))
    if user:
        conds.append(AuditEntry.actor == user)
    if since:
        conds.append(AuditEntry.at >= since)
    with reading(engine) as s:
        total = s.scalar(select(func.count()).select_from(AuditEntry).where(*conds)) or 0
        rows = s.scalars(
            select(AuditEntry)
            .where(*conds)
            .order_by(AuditEntry.id.desc())
            .offset(offset)
            .limit(limit)
        ).all()
        frame = pd.DataFrame(
            [
                {
                    "id": r.id,
                    "at": r.at,
                    "actor": r.actor,
                    "action": r.action,
                    "target": r.target,
                    "outcome": r.outcome,
                    "detail": r.detail,
                }
                for r in rows
            ],
            columns=["id", "at", "actor", "action", "target", "outcome", "detail"],
        )
    return AuditPage(frame, total)
