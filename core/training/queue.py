"""The job queue's engine-specific part: atomic claim, lease renewal, fenced completion.

Claiming differs by engine and nowhere else:
- Postgres: `SELECT ... FOR UPDATE SKIP LOCKED` — many workers on many machines claim
  different rows without waiting for each other.
- SQLite: one `BEGIN IMMEDIATE` transaction takes the database write lock before reading, so
  the read-then-update cannot interleave with another worker's.

Every claim increments the job's fencing token. Heartbeats, metric writes and completion
carry the token, so a process that lost its lease (worker killed, lease expired, job taken
over) can no longer change the job: its updates match no row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, case, select, text, update

from core.db import is_postgres, is_sqlite
from core.db.base import utcnow
from core.training.models import TrainingJob

JOBS = TrainingJob.__table__


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    token: int
    attempt: int
    kind: str
    name: str


@dataclass(frozen=True)
class LeaseState:
    held: bool
    cancel_requested: bool


def db_now(conn: Connection) -> datetime:
    """The database's clock on Postgres (workers on several machines agree on lease expiry);
    the local clock on SQLite, which is only ever shared by processes of one machine."""
    if is_postgres(conn.engine):
        return conn.execute(text("SELECT now()")).scalar_one()
    return utcnow()


def _begin_claim(conn: Connection) -> None:
    if is_sqlite(conn.engine):
        conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"


def requeue_expired(conn: Connection, now: datetime) -> int:
    """Running jobs whose lease ran out (their worker died) go back to the queue — or to
    cancelled / failed when a cancel was asked for or their attempts are used up."""
    res = conn.execute(
        update(JOBS)
        .where(JOBS.c.state == "running", JOBS.c.lease_expires_at < now)
        .values(
            state=case(
                (JOBS.c.cancel_requested.is_(True), "cancelled"),
                (JOBS.c.attempts >= JOBS.c.max_attempts, "failed"),
                else_="queued",
            ),
            error=case(
                (JOBS.c.cancel_requested.is_(True), JOBS.c.error),
                (
                    JOBS.c.attempts >= JOBS.c.max_attempts,
                    "the worker running this job stopped answering (lease expired) and all "
                    "attempts are used up; see the log, then retry",
                ),
                else_=JOBS.c.error,
            ),
            finished_at=case(
                (JOBS.c.cancel_requested.is_(True), now),
                (JOBS.c.attempts >= JOBS.c.max_attempts, now),
                else_=None,
            ),
            lease_owner=None,
            lease_expires_at=None,
            pid=None,
            pid_started_at=None,
        )
    )
    return res.rowcount or 0


def claim_next_job(
    engine: Engine,
    worker_id: str,
    lease_seconds: float,
    kinds: tuple[str, ...] = ("sft", "sleep"),
    host: str = "",
) -> ClaimedJob | None:
    """Atomically take the highest-priority queued job (oldest first), or None."""
    with engine.connect() as conn:
        _begin_claim(conn)
        with conn.begin():
            now = db_now(conn)
            requeue_expired(conn, now)
            q = (
                select(JOBS.c.id)
                .where(JOBS.c.state == "queued", JOBS.c.kind.in_(kinds))
                .order_by(JOBS.c.priority.desc(), JOBS.c.id)
                .limit(1)
            )
            if is_postgres(engine):
                q = q.with_for_update(skip_locked=True)
            job_id = conn.execute(q).scalar()
            if job_id is None:
                return None
            row = conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.state == "queued")
                .values(
                    state="running",
                    attempts=JOBS.c.attempts + 1,
                    fencing_token=JOBS.c.fencing_token + 1,
                    lease_owner=worker_id,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    heartbeat_at=now,
                    started_at=now,
                    worker_host=host or None,
                    error=None,
                )
                .returning(JOBS.c.fencing_token, JOBS.c.attempts, JOBS.c.kind, JOBS.c.name)
            ).first()
            if row is None:
                return None
            return ClaimedJob(job_id, row.fencing_token, row.attempts, row.kind, row.name)


def _fenced(job_id: int, token: int):  # noqa: ANN202 - SQL expression
    return and_(JOBS.c.id == job_id, JOBS.c.fencing_token == token, JOBS.c.state == "running")


def renew_lease(engine: Engine, job_id: int, token: int, lease_seconds: float) -> LeaseState:
    """Extend the lease while the token still holds; report whether a cancel was asked for."""
    with engine.begin() as conn:
        now = db_now(conn)
        row = conn.execute(
            update(JOBS)
            .where(_fenced(job_id, token))
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now)
            .returning(JOBS.c.cancel_requested)
        ).first()
    if row is None:
        return LeaseState(held=False, cancel_requested=False)
    return LeaseState(held=True, cancel_requested=bool(row.cancel_requested))


def lease_held(engine: Engine, job_id: int, token: int) -> bool:
    """Read-only check used by the training child before it writes anything durable."""
    with engine.connect() as conn:
        now = db_now(conn)
        row = conn.execute(select(JOBS.c.lease_expires_at).where(_fenced(job_id, token))).first()
    return row is not None and (row.lease_expires_at is None or row.lease_expires_at > now)


def update_running(engine: Engine, job_id: int, token: int, **values: object) -> bool:
    with engine.begin() as conn:
        res = conn.execute(update(JOBS).where(_fenced(job_id, token)).values(**values))
    return bool(res.rowcount)


def finish_job(
    engine: Engine,
    job_id: int,
    token: int,
    state: str,
    *,
    error: str | None = None,
    **values: object,
) -> bool:
    """Move a running job to its final (or, for a lost child, queued) state; fenced."""
    assert state in ("succeeded", "failed", "cancelled", "queued")
    with engine.begin() as conn:
        now = db_now(conn)
        res = conn.execute(
            update(JOBS)
            .where(_fenced(job_id, token))
            .values(
                state=state,
                error=error,
                finished_at=None if state == "queued" else now,
                lease_owner=None,
                lease_expires_at=None,
                pid=None,
                pid_started_at=None,
                **values,
            )
        )
    return bool(res.rowcount)
