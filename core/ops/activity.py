"""Activity per hour for the Operations page: jobs submitted and finished, audit entries.

Counted from tables that exist anyway (jobs, audit log), so the charts cover the time before
anyone looked; frames are complete (every hour of the window), so a quiet hour is a zero.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import Engine, select

from core.db import reading
from core.db.models import AuditEntry
from core.permissions import Principal, require
from core.training.models import TrainingJob


def _hours(hours: int) -> tuple[datetime, pd.DatetimeIndex]:
    end = pd.Timestamp(datetime.now(UTC)).floor("h")
    index = pd.date_range(end=end, periods=hours, freq="h")
    return index[0].to_pydatetime(), index


def _per_hour(
    events: pd.DataFrame, index: pd.DatetimeIndex, groups: list[str], value: str
) -> pd.DataFrame:
    """`events` (column at, and `groups`) counted per hour of `index` and group; every
    group that occurs gets every hour, zeros included."""
    if events.empty:
        return pd.DataFrame(columns=["hour", *groups, value])
    events = events.assign(hour=pd.to_datetime(events["at"], utc=True).dt.floor("h"))
    counts = events.groupby(["hour", *groups]).size().rename(value)
    seen = sorted(events[groups].drop_duplicates().itertuples(index=False, name=None))
    full = pd.MultiIndex.from_tuples(
        [(hour, *group) for hour in index for group in seen], names=["hour", *groups]
    )
    return counts.reindex(full, fill_value=0).reset_index()


def job_activity(engine: Engine, actor: Principal, hours: int = 24) -> pd.DataFrame:
    """Jobs per hour: columns hour, kind, event ("submitted" or the final state), jobs."""
    require(actor, "system:health")
    since, index = _hours(hours)
    with reading(engine) as s:
        rows = s.execute(
            select(
                TrainingJob.kind, TrainingJob.state, TrainingJob.created_at, TrainingJob.finished_at
            ).where((TrainingJob.created_at >= since) | (TrainingJob.finished_at >= since))
        ).all()
    events = [
        (created, kind, "submitted") for kind, _state, created, _f in rows if created >= since
    ]
    events += [
        (finished, kind, state)
        for kind, state, _c, finished in rows
        if finished is not None and finished >= since
    ]
    frame = pd.DataFrame(events, columns=["at", "kind", "event"])
    return _per_hour(frame, index, ["kind", "event"], "jobs")


def audit_activity(engine: Engine, actor: Principal, hours: int = 24) -> pd.DataFrame:
    """Audit entries per hour: columns hour, family (the action up to its first dot, e.g.
    "users", "training"), entries."""
    require(actor, "system:health")
    since, index = _hours(hours)
    with reading(engine) as s:
        rows = s.execute(select(AuditEntry.at, AuditEntry.action).where(AuditEntry.at >= since))
        frame = pd.DataFrame(rows.all(), columns=["at", "action"])
    frame["family"] = frame["action"].str.split(".", n=1).str[0]
    return _per_hour(frame[["at", "family"]], index, ["family"], "entries")
