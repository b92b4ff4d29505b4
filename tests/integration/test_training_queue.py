"""The training job queue on both engines: atomic claims, leases, fencing, cancel, retry —
and real `clara worker` processes sharing one Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from core.db import is_postgres, is_sqlite, reading, writing
from core.db.base import utcnow
from core.permissions import PermissionDenied
from core.training.jobs import (
    JobStateError,
    cancel_job,
    get_job,
    list_jobs,
    retry_job,
    submit_sleep_job,
)
from core.training.models import TrainingJob, TrainingMetric
from core.training.queue import (
    claim_next_job,
    finish_job,
    lease_held,
    renew_lease,
)
from tests.conftest import ROOT, principal


def _expire(engine, job_id: int) -> None:
    with writing(engine) as s:
        s.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def test_claim_order_fencing_and_completion(db_engine, admin):
    low = submit_sleep_job(db_engine, admin, name="low")
    high = submit_sleep_job(db_engine, admin, name="high", priority=5)
    second_low = submit_sleep_job(db_engine, admin, name="low2")

    first = claim_next_job(db_engine, "w1", 30)
    assert first.id == high.id and first.token == 1 and first.attempt == 1
    assert claim_next_job(db_engine, "w1", 30).id == low.id  # then oldest first
    assert claim_next_job(db_engine, "w2", 30).id == second_low.id
    assert claim_next_job(db_engine, "w2", 30) is None

    assert renew_lease(db_engine, first.id, first.token, 30).held
    assert not renew_lease(db_engine, first.id, first.token + 1, 30).held
    assert finish_job(db_engine, first.id, first.token, "succeeded")
    # Finished: the token no longer matches a running job, so nothing more can change it.
    assert not finish_job(db_engine, first.id, first.token, "failed", error="late")
    job = get_job(db_engine, admin, first.id)
    assert job.state == "succeeded" and job.error is None and job.finished_at is not None


def test_expired_lease_requeues_with_new_token(db_engine, admin):
    job = submit_sleep_job(db_engine, admin, max_attempts=2)
    a = claim_next_job(db_engine, "dead-worker", 30)
    _expire(db_engine, job.id)
    b = claim_next_job(db_engine, "live-worker", 30)
    assert b.id == job.id and b.token == a.token + 1 and b.attempt == 2
    # The old holder is fenced out of every write.
    assert not lease_held(db_engine, job.id, a.token)
    assert not renew_lease(db_engine, job.id, a.token, 30).held
    assert not finish_job(db_engine, job.id, a.token, "succeeded")
    assert lease_held(db_engine, job.id, b.token)
    # Attempts used up: an expired lease now fails the job instead of requeueing it.
    _expire(db_engine, job.id)
    assert claim_next_job(db_engine, "w", 30) is None
    failed = get_job(db_engine, admin, job.id)
    assert failed.state == "failed" and "lease expired" in failed.error


def test_cancel_and_retry(db_engine, admin):
    queued = submit_sleep_job(db_engine, admin)
    assert cancel_job(db_engine, admin, queued.id).state == "cancelled"
    with pytest.raises(JobStateError, match="only queued or running"):
        cancel_job(db_engine, admin, queued.id)
    again = retry_job(db_engine, admin, queued.id)
    assert again.state == "queued" and again.attempts == 0 and not again.cancel_requested

    claimed = claim_next_job(db_engine, "w", 30)
    running = cancel_job(db_engine, admin, claimed.id)
    assert running.state == "running" and running.cancel_requested
    assert renew_lease(db_engine, claimed.id, claimed.token, 30).cancel_requested
    # A cancel asked for while the worker died: the expired lease ends it as cancelled.
    _expire(db_engine, claimed.id)
    assert claim_next_job(db_engine, "w", 30) is None
    assert get_job(db_engine, admin, claimed.id).state == "cancelled"
    with pytest.raises(JobStateError, match="only failed or cancelled"):
        retry_job(db_engine, admin, submit_sleep_job(db_engine, admin).id)
    with pytest.raises(PermissionDenied):
        cancel_job(db_engine, principal("user"), queued.id)
    with pytest.raises(PermissionDenied):
        submit_sleep_job(db_engine, principal("analyst"))


def test_concurrent_claims_take_each_job_once(db_engine, admin):
    ids = {submit_sleep_job(db_engine, admin).id for _ in range(24)}
    got: list[int] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        while (job := claim_next_job(db_engine, f"t{n}", 30)) is not None:
            with lock:
                got.append(job.id)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)
    assert len(list_jobs(db_engine, admin, ["running"])) == 24


def test_claim_uses_the_engine_specific_lock(db_engine, admin):
    """The one place where the engines differ: check which statement each branch issues."""
    from sqlalchemy import event

    submit_sleep_job(db_engine, admin)
    seen: list[str] = []

    def capture(conn, cursor, statement, *args):
        seen.append(statement.upper())

    event.listen(db_engine, "before_cursor_execute", capture)
    try:
        assert claim_next_job(db_engine, "w", 30) is not None
    finally:
        event.remove(db_engine, "before_cursor_execute", capture)
    joined = "\n".join(seen)
    if is_postgres(db_engine):
        assert "FOR UPDATE SKIP LOCKED" in joined
    else:
        assert is_sqlite(db_engine) and "FOR UPDATE" not in joined


def _worker(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_workers_run_thirty_jobs_exactly_once(db_engine, admin):
    jobs = [submit_sleep_job(db_engine, admin, 0.2).id for _ in range(30)]
    env = {**os.environ, "CLARA_CLI_USER": "admin"}
    workers = [
        _worker(env, "--once", "--concurrency", "2", "--lease-seconds", "10") for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    with reading(db_engine) as s:
        states = Counter(s.scalars(select(TrainingJob.state).where(TrainingJob.id.in_(jobs))))
        runs = Counter(
            s.scalars(
                select(TrainingMetric.job_id).where(
                    TrainingMetric.phase == "run", TrainingMetric.job_id.in_(jobs)
                )
            )
        )
        owners = set(s.scalars(select(TrainingJob.worker_host)))
        attempts = set(s.scalars(select(TrainingJob.attempts)))
    assert states == {"succeeded": 30}
    assert sorted(runs) == sorted(jobs) and set(runs.values()) == {1}
    assert attempts == {1} and owners
    # Both workers took part (each logs the jobs it started).
    started = [o.count(": started attempt") for o in outputs]
    assert sum(started) == 30 and all(n > 0 for n in started), started


@pytest.mark.slow
def test_worker_requeues_job_of_killed_worker_and_fails_crashing_child(db_engine, admin):
    orphan = submit_sleep_job(db_engine, admin, 0.1, name="orphan")
    # A worker that died holding `orphan`: its lease has run out.
    assert claim_next_job(db_engine, "dead", 30).id == orphan.id
    _expire(db_engine, orphan.id)
    crash = submit_sleep_job(db_engine, admin, 0.0, name="crash", max_attempts=1)
    with writing(db_engine) as s:
        s.get(TrainingJob, crash.id).spec = {"seconds": 0.0, "fail": 1}
    env = {**os.environ}
    w = _worker(env, "--once", "--lease-seconds", "5")
    out = w.communicate(timeout=300)[0]
    assert w.returncode == 0, out
    failed = get_job(db_engine, admin, crash.id)
    assert failed.state == "failed" and failed.error == "RuntimeError: sleep job asked to fail"
    # Reported by the child through its lease, with a typed reason; the traceback is in the log.
    assert failed.failure_reason == "exception"
    assert "RuntimeError: sleep job asked to fail" in Path(failed.log_path).read_text()
    done = get_job(db_engine, admin, orphan.id)
    assert done.state == "succeeded" and done.attempts == 2 and done.fencing_token == 2
