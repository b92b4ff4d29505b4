"""The job queue: atomic claim, leases, and `JobLease`, through which a running job writes.

All background work is a row in one table (core.training.models.TrainingJob): training
("sft"), dataset scoring ("score"), corpus embedding ("embed"); `enqueue_job` adds one,
`claim_next_job(kinds=...)` takes one.

Claiming differs by engine and nowhere else:
- Postgres: `SELECT ... FOR UPDATE SKIP LOCKED` — many workers on many machines claim
  different rows without waiting for each other.
- SQLite: one `BEGIN IMMEDIATE` transaction takes the database write lock before reading, so
  the read-then-update cannot interleave with another worker's.

Every claim increments the job's fencing token. Every write a running job makes goes through
its `JobLease(engine, job_id, token)`: heartbeat, progress, metrics, checkpoints, adapter
registration, success, failure with a `FailureReason`. Each of them matches the row only
while the token is the job's and the job is running, so a process that lost its lease
(worker killed, lease expired, job taken over) can no longer change the job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, and_, case, insert, select, text, update

from core.db import is_postgres, is_sqlite, writing
from core.db.base import utcnow
from core.training.models import FINISHED_STATES, JOB_KINDS, TrainingJob, TrainingMetric

if TYPE_CHECKING:
    from core.permissions import Principal

JOBS = TrainingJob.__table__
METRICS = TrainingMetric.__table__
METRIC_FIELDS = (
    "phase",
    "step",
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "eval_loss",
    "eval_perplexity",
)


class FailureReason(StrEnum):
    """Why a job failed (`training_jobs.failure_reason`); `error` says it in words."""

    EXCEPTION = "exception"  # the job's code raised; reported by the job through its lease
    KILLED = "killed"  # its process died by a signal (out of memory, operator)
    EXIT = "exit"  # its process exited with an error code without reporting why
    LEASE_EXPIRED = "lease_expired"  # its worker stopped answering and attempts are used up


class LeaseLost(RuntimeError):
    """The job's token no longer holds: another worker owns the job, or it ended."""


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
    finished: bool = False  # not held because this very attempt recorded its outcome


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
            failure_reason=case(
                (JOBS.c.cancel_requested.is_(True), JOBS.c.failure_reason),
                (JOBS.c.attempts >= JOBS.c.max_attempts, FailureReason.LEASE_EXPIRED.value),
                else_=JOBS.c.failure_reason,
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
    kinds: tuple[str, ...] = JOB_KINDS,
    host: str = "",
    gpus: int = 0,
) -> ClaimedJob | None:
    """Atomically take the highest-priority queued job (oldest first) that needs at most
    `gpus` GPUs, or None."""
    with engine.connect() as conn:
        _begin_claim(conn)
        with conn.begin():
            now = db_now(conn)
            requeue_expired(conn, now)
            q = (
                select(JOBS.c.id)
                .where(JOBS.c.state == "queued", JOBS.c.kind.in_(kinds), JOBS.c.gpus <= gpus)
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
                    failure_reason=None,
                )
                .returning(JOBS.c.fencing_token, JOBS.c.attempts, JOBS.c.kind, JOBS.c.name)
            ).first()
            if row is None:
                return None
            return ClaimedJob(job_id, row.fencing_token, row.attempts, row.kind, row.name)


def _fenced(job_id: int, token: int):
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
            state = conn.execute(
                select(JOBS.c.state).where(JOBS.c.id == job_id, JOBS.c.fencing_token == token)
            ).scalar()
            return LeaseState(held=False, cancel_requested=False, finished=state in FINISHED_STATES)
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
    reason: FailureReason | None = None,
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
                failure_reason=reason.value if reason else None,
                finished_at=None if state == "queued" else now,
                lease_owner=None,
                lease_expires_at=None,
                pid=None,
                pid_started_at=None,
                **values,
            )
        )
    return bool(res.rowcount)


class JobLease:
    """The one way a running job writes: every method is fenced by the job's token.

    The worker heartbeats and records how a process ended; the job's own process (the child)
    reports progress, metrics, checkpoints, its adapter, success or failure. Once the lease is
    lost none of them changes anything: the update methods return False, `metric` and
    `checkpoint` raise `LeaseLost` (a job that cannot record its work must stop).
    """

    def __init__(self, engine: Engine, job_id: int, token: int) -> None:
        self.engine, self.job_id, self.token = engine, job_id, token

    def __repr__(self) -> str:
        return f"JobLease(job {self.job_id}, token {self.token})"

    # Reads ----------------------------------------------------------------------------------
    def held(self) -> bool:
        return lease_held(self.engine, self.job_id, self.token)

    def cancel_requested(self) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(JOBS.c.cancel_requested).where(_fenced(self.job_id, self.token))
            ).first()
        return bool(row and row.cancel_requested)

    # Writes ---------------------------------------------------------------------------------
    def heartbeat(self, lease_seconds: float) -> LeaseState:
        return renew_lease(self.engine, self.job_id, self.token, lease_seconds)

    def update(self, **values: object) -> bool:
        return update_running(self.engine, self.job_id, self.token, **values)

    def progress(self, done: int, total: int | None = None) -> bool:
        """How far the job is (`step` of `max_steps`: samples, chunks, training steps)."""
        values: dict[str, object] = {"step": int(done)}
        if total is not None:
            values["max_steps"] = int(total)
        return self.update(**values)

    def checkpoint(self, path: str, step: int) -> None:
        if not self.update(checkpoint=path, step=step):
            raise LeaseLost(f"job {self.job_id}: lease lost; checkpoint not recorded")

    def metric(self, row: dict[str, Any], attempt: int) -> None:
        """One metric row (train rows also advance the job's step), in one transaction."""
        values = {k: row.get(k) for k in METRIC_FIELDS}
        values["phase"] = values["phase"] or "train"
        with writing(self.engine) as s:
            job_values: dict[str, Any] = {}
            if values["phase"] == "train":
                job_values["step"] = int(values["step"] or 0)
            res = s.execute(
                update(JOBS)
                .where(_fenced(self.job_id, self.token))
                .values(**job_values, heartbeat_at=JOBS.c.heartbeat_at)
            )
            if not res.rowcount:
                raise LeaseLost(f"job {self.job_id}: lease lost; metric not recorded")
            s.execute(
                insert(METRICS).values(
                    job_id=self.job_id,
                    attempt=attempt,
                    extra=row.get("extra") or {},
                    at=utcnow(),
                    **{k: v for k, v in values.items() if v is not None},
                )
            )

    def register_adapter(self, actor: Principal, **fields: Any) -> Any:
        """Register the job's adapter; the row is written only while the lease holds."""
        from core.training.adapters import register_adapter

        return register_adapter(
            self.engine, actor, job_id=self.job_id, job_token=self.token, **fields
        )

    def succeed(self, **values: object) -> bool:
        return finish_job(self.engine, self.job_id, self.token, "succeeded", **values)

    def fail(self, reason: FailureReason, error: str) -> bool:
        return finish_job(
            self.engine, self.job_id, self.token, "failed", error=error, reason=reason
        )

    def cancelled(self, summary: str) -> bool:
        return finish_job(self.engine, self.job_id, self.token, "cancelled", error=summary)

    def requeue(self, error: str | None = None, reason: FailureReason | None = None) -> bool:
        """Back to the queue (worker shutdown, a killed process with attempts left)."""
        return finish_job(
            self.engine, self.job_id, self.token, "queued", error=error, reason=reason
        )


# Submitting and cancelling, for every kind (callers check permissions and audit) ------------


def enqueue_job(
    engine: Engine,
    *,
    kind: str,
    name: str,
    owner: str,
    spec: dict[str, Any] | None = None,
    priority: int = 0,
    max_attempts: int = 3,
    method: str | None = None,
    log_path: Callable[[int], str] | None = None,
    output_dir: Callable[[int], str] | None = None,
    **values: Any,
) -> int:
    """Queue one job; returns its id. `log_path` / `output_dir` map the new id to paths."""
    assert kind in JOB_KINDS, kind
    with writing(engine) as s:
        job = TrainingJob(
            kind=kind,
            name=name[:64],
            owner=owner,
            method=method or kind,
            spec=spec or {},
            priority=priority,
            max_attempts=max_attempts,
            **values,
        )
        s.add(job)
        s.flush()
        if log_path:
            job.log_path = log_path(job.id)
        if output_dir:
            job.output_dir = output_dir(job.id)
        return job.id


def request_cancel(engine: Engine, job_id: int) -> str | None:
    """Queued: cancelled at once. Running: flagged, the worker stops it. Returns the state
    before, or None when there is no such job."""
    with writing(engine) as s:
        job = s.get(TrainingJob, job_id, with_for_update=True)
        if job is None:
            return None
        before = job.state
        if job.state == "queued":
            job.state, job.finished_at, job.cancel_requested = "cancelled", utcnow(), True
        elif job.state == "running":
            job.cancel_requested = True
        return before


def active_jobs(engine: Engine, kind: str) -> list[TrainingJob]:
    """Queued or running jobs of one kind, oldest first (detached rows, read-only use)."""
    from core.db import reading

    with reading(engine) as s:
        rows = list(
            s.scalars(
                select(TrainingJob)
                .where(TrainingJob.kind == kind, TrainingJob.state.notin_(FINISHED_STATES))
                .order_by(TrainingJob.id)
            )
        )
        s.expunge_all()
        return rows
