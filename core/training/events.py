"""A job as a stream of events, for live views that cannot hold a database session open
(the HTTP API's Server-Sent Events): its metric rows as they are written and every change
of its state, ending with the final state.

`job_events` checks the reader and the job at once and returns an iterator that reads the
database once per `next()` and never sleeps: when nothing new has arrived it yields None,
and the consumer waits as it sees fit before asking again (the API waits without holding a
thread). Closing the iterator stops it; it holds no session between items.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Engine

from core.db import reading
from core.permissions import Principal
from core.training.jobs import finite, get_job, job_progress, metric_rows
from core.training.models import FINISHED_STATES, TrainingJob

# Metric rows read per poll at most: a long history arrives in parts, none of them huge.
BATCH = 500
# What a "state" event carries; a change of any of these is a new event.
STATE_FIELDS = (
    "id",
    "kind",
    "name",
    "state",
    "step",
    "max_steps",
    "attempts",
    "max_attempts",
    "cancel_requested",
    "checkpoint",
    "error",
    "failure_reason",
    "adapter_id",
    "started_at",
    "finished_at",
)


@dataclass(frozen=True)
class JobEvent:
    """`metric`: one metric row; `state`: the job after a change; `end`: the final state,
    after which the stream stops. `data` is plain JSON (ISO times, no NaN)."""

    event: Literal["metric", "state", "end"]
    data: dict[str, Any]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return finite(value)


def _state(job: TrainingJob) -> dict[str, Any]:
    data = {f: _plain(getattr(job, f)) for f in STATE_FIELDS}
    data["progress"] = job_progress(job)[0]  # step / max_steps; 1.0 once succeeded
    return data


def job_events(
    engine: Engine, actor: Principal, job_id: int | str, *, since_metric_id: int = 0
) -> Iterator[JobEvent | None]:
    """Events of one job: first its metric rows after `since_metric_id` and its state, then
    what changes, until it is final. None: nothing new yet (wait a little, then `next()`).

    The permission and the job's existence are checked now, not at the first `next()`, so
    a caller can refuse before it starts streaming."""
    job = get_job(engine, actor, job_id)
    return _poll(engine, job.id, since_metric_id)


def _poll(engine: Engine, job_id: int, last_metric: int) -> Iterator[JobEvent | None]:
    last_state: dict[str, Any] | None = None
    while True:
        with reading(engine) as s:
            # The job first, then its metrics: a job seen final has written every metric
            # row it will write, so the rows read next are all of them.
            job = s.get(TrainingJob, job_id)
            rows = metric_rows(s, job_id, last_metric, limit=BATCH)
            state = _state(job) if job is not None else None
        for row in rows:
            last_metric = row["id"]
            yield JobEvent("metric", {k: _plain(v) for k, v in row.items()})
        if len(rows) == BATCH:
            continue  # more history waiting: read on before anything else
        if state is None:  # removed while watched (jobs are not deleted today)
            gone = {**(last_state or {"id": job_id}), "state": None, "error": "job removed"}
            yield JobEvent("end", gone)
            return
        if state != last_state:
            last_state = state
            yield JobEvent("state", state)
        if state["state"] in FINISHED_STATES:
            yield JobEvent("end", state)
            return
        yield None
