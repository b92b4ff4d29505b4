"""Quality scoring of a dataset with core.datasets.quality, in batches, with progress.

A scoring run is a row (status, done/total, heartbeat) so any page or CLI can watch it.
`start_scoring` queues it as a "score" job in the one jobs queue (core.training.queue), which
`clara worker` runs in a child process of its own (core.training.handlers.run_scoring); the
page or CLI only polls the run. `score_dataset` runs it in the calling process (the CLI's
blocking `clara dataset score`, tests). Scores are written batch by batch; a run whose worker
was killed resumes in its next attempt and skips the samples it scored already.

Deduplication covers the dataset itself and the other datasets: their non-rejected samples
seed the exact and near-duplicate indexes, so a sample copied from another dataset is flagged
with `duplicate_of = "<dataset>#<sample id>"`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, bindparam, case, func, select, true, update

from core.audit import audited
from core.config import get_settings
from core.datasets.errors import DatasetConflict, DatasetError, ScoringRunNotFound
from core.datasets.models import Dataset, DatasetSample, ScoringRun
from core.datasets.service import joined_text, resolve_dataset
from core.db import reading, writing
from core.db.base import utcnow
from core.permissions import Principal, require
from core.training.models import FINISHED_STATES, TrainingJob

FETCH = 256
_T = DatasetSample.__table__
SCORE_UPDATE = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"), _T.c.content_sha256 == bindparam("b_sha"))
    .values(
        {
            c: bindparam(c)
            for c in (
                "score",
                "signals",
                "reasons",
                "reason_codes",
                "flagged_spans",
                "duplicate_of",
                "token_count",
                "scored_at",
                "minhash",
            )
        }
    )
)
STALE_AFTER = timedelta(minutes=2)
ACTIVE = ("queued", "running", "cancelling")


class ScoringRunInfo(BaseModel):
    id: int
    dataset_id: int
    status: str
    total: int
    done: int
    error: str | None
    stats: dict[str, Any] | None
    started_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    job_id: int | None = None  # the queued job that runs it (None: run in-process)

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else min(self.done / self.total, 1.0)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _job_of_run(s: Any, run_id: int) -> TrainingJob | None:
    """The newest "score" job that runs `run_id` (its spec names the run)."""
    jobs = s.scalars(
        select(TrainingJob)
        .where(TrainingJob.kind == "score")
        .order_by(TrainingJob.id.desc())
        .limit(200)
    )
    return next((j for j in jobs if (j.spec or {}).get("run_id") == run_id), None)


def _job_outcome(job: TrainingJob | None) -> tuple[str, str | None] | None:
    """(status, error) for an active run whose job ended without finishing it (cancelled
    while queued, failed, attempts used up); None while the job can still finish it."""
    if job is None or job.state not in FINISHED_STATES:
        return None
    if job.state == "cancelled":
        return "cancelled", None
    return "failed", job.error or f"its job {job.id} {job.state}"


def _info(r: ScoringRun, job: TrainingJob | None = None) -> ScoringRunInfo:
    status, error = r.status, r.error
    if r.status in ACTIVE and (outcome := _job_outcome(job)) is not None:
        status, error = outcome
    return ScoringRunInfo(
        id=r.id,
        dataset_id=r.dataset_id,
        status=status,
        total=r.total,
        done=r.done,
        error=error,
        stats=r.stats,
        started_by=r.started_by,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        heartbeat_at=r.heartbeat_at,
        job_id=job.id if job is not None else None,
    )


def _run_info(s: Any, r: ScoringRun) -> ScoringRunInfo:
    return _info(r, _job_of_run(s, r.id) if r.status in ACTIVE else None)


def load_tokenizer(base_model: str | None) -> Any:
    """The base model's tokenizer when configured and available locally; None otherwise
    (the quality library then counts regex tokens). Never downloads."""
    if not base_model:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    except (OSError, ValueError, ImportError):
        return None


def _create_run(engine: Engine, actor: Principal, dataset_ref: int | str) -> ScoringRunInfo:
    with writing(engine) as s:
        d = resolve_dataset(s, dataset_ref)
        now = utcnow()
        # Write-lock the dataset row so two concurrent starts cannot both pass the check.
        s.execute(update(Dataset).where(Dataset.id == d.id).values(updated_at=now))
        for r in s.scalars(
            select(ScoringRun).where(ScoringRun.dataset_id == d.id, ScoringRun.status.in_(ACTIVE))
        ):
            job = _job_of_run(s, r.id)
            beat = r.heartbeat_at or r.created_at
            if (outcome := _job_outcome(job)) is not None:
                r.status, r.error = outcome
                r.finished_at = now
            elif job is None and now - beat > STALE_AFTER:
                # Run in a process of its own (no job) that stopped beating.
                r.status, r.error, r.finished_at = "failed", "no heartbeat: the run died", now
            else:
                raise DatasetConflict(
                    f"dataset {d.name!r} is being scored already (run {r.id}, {r.done}/"
                    f"{r.total}); wait for it to finish or cancel it"
                )
        total = s.scalar(select(func.count()).where(DatasetSample.dataset_id == d.id)) or 0
        run = ScoringRun(
            dataset_id=d.id,
            status="queued",
            total=total,
            done=0,
            started_by=actor.username,
            thresholds=d.thresholds,
            created_at=now,
            heartbeat_at=now,
        )
        s.add(run)
        s.flush()
        return _info(run)


def start_scoring(engine: Engine, actor: Principal, dataset_ref: int | str) -> ScoringRunInfo:
    """Queue a scoring run as a "score" job for `clara worker`; returns at once."""
    from core.training.jobs import job_log_path, jobs_root
    from core.training.queue import enqueue_job

    with audited(engine, actor, "datasets.score", target=str(dataset_ref)) as ctx:
        require(actor, "datasets:review")
        run = _create_run(engine, actor, dataset_ref)
        ctx.detail["run_id"] = run.id
        settings = get_settings()
        with reading(engine) as s:
            name = s.get(Dataset, run.dataset_id).name
        job_id = enqueue_job(
            engine,
            kind="score",
            name=f"score-{name}",
            owner=actor.username,
            spec={"run_id": run.id, "dataset_id": run.dataset_id},
            max_steps=run.total or None,
            log_path=lambda jid: str(job_log_path(settings, jid)),
            output_dir=lambda jid: str(jobs_root(settings) / str(jid)),
        )
        ctx.detail["job_id"] = job_id
        return run.model_copy(update={"job_id": job_id})


def score_dataset(
    engine: Engine,
    actor: Principal,
    dataset_ref: int | str,
    progress: Callable[[int, int], None] | None = None,
) -> ScoringRunInfo:
    """Score in this process (CLI with a progress bar, tests); returns the finished run."""
    with audited(engine, actor, "datasets.score", target=str(dataset_ref)) as ctx:
        require(actor, "datasets:review")
        run = _create_run(engine, actor, dataset_ref)
        ctx.detail["run_id"] = run.id
        execute_run(engine, run.id, progress)
        info = get_scoring_run(engine, actor, run.id)
        if info.status == "failed":
            raise DatasetError(f"scoring failed: {info.error}")
        return info


def get_scoring_run(engine: Engine, actor: Principal, run_id: int) -> ScoringRunInfo:
    require(actor, "datasets:read")
    with reading(engine) as s:
        r = s.get(ScoringRun, run_id)
        if r is None:
            raise ScoringRunNotFound(run_id)
        return _run_info(s, r)


def latest_scoring_run(
    engine: Engine, actor: Principal, dataset_ref: int | str
) -> ScoringRunInfo | None:
    require(actor, "datasets:read")
    with reading(engine) as s:
        d = resolve_dataset(s, dataset_ref)
        r = s.scalar(
            select(ScoringRun)
            .where(ScoringRun.dataset_id == d.id)
            .order_by(ScoringRun.id.desc())
            .limit(1)
        )
        return _run_info(s, r) if r else None


def cancel_scoring(engine: Engine, actor: Principal, run_id: int) -> None:
    """Ask a run to stop after its current batch (scores written so far are kept); a run
    whose job still waits in the queue is cancelled at once."""
    from core.training.queue import request_cancel

    with audited(engine, actor, "datasets.score_cancel", target=str(run_id)):
        require(actor, "datasets:review")
        with writing(engine) as s:
            s.execute(
                update(ScoringRun)
                .where(ScoringRun.id == run_id, ScoringRun.status.in_(("queued", "running")))
                .values(status="cancelling")
            )
            job = _job_of_run(s, run_id)
            job_id = job.id if job is not None and job.state == "queued" else None
        if job_id is not None and request_cancel(engine, job_id) == "queued":
            mark_run(engine, run_id, "cancelled")


def mark_run(engine: Engine, run_id: int, status: str, error: str | None = None) -> None:
    """End an unfinished run (its job was cancelled or stopped for good)."""
    with writing(engine) as s:
        s.execute(
            update(ScoringRun)
            .where(ScoringRun.id == run_id, ScoringRun.status.in_(ACTIVE))
            .values(status=status, error=error, finished_at=utcnow(), heartbeat_at=utcnow())
        )


def _iter_samples(
    engine: Engine, dataset_id: int, scored_since: datetime | None = None
) -> Iterator[tuple[int, str, str]]:
    """(id, content sha, joined text) in keyset pages; rejected samples last so they never
    become the representative of a duplicate cluster. With `scored_since`, samples scored
    since then (by an earlier attempt of the same run) are skipped."""
    rejected_last = case((DatasetSample.status == "rejected", 1), else_=0)
    last = (-1, -1)
    while True:
        with reading(engine) as s:
            rows = s.execute(
                select(
                    rejected_last.label("rl"),
                    DatasetSample.id,
                    DatasetSample.kind,
                    DatasetSample.text,
                    DatasetSample.messages,
                    DatasetSample.system,
                    DatasetSample.content_sha256,
                )
                .where(DatasetSample.dataset_id == dataset_id)
                .where(
                    true()
                    if scored_since is None
                    else (DatasetSample.scored_at.is_(None))
                    | (DatasetSample.scored_at < scored_since)
                )
                .where(
                    (rejected_last > last[0])
                    | ((rejected_last == last[0]) & (DatasetSample.id > last[1]))
                )
                .order_by(rejected_last, DatasetSample.id)
                .limit(FETCH)
            ).all()
        if not rows:
            return
        for _rl, sid, kind, text, messages, system, sha in rows:
            yield sid, sha, joined_text(kind, text, messages, system)
        last = (rows[-1][0], rows[-1][1])


def minhash_key(t: Any) -> str:
    """The MinHash parameters a stored signature was made with (reusable only if equal)."""
    return f"{t.num_perm}:{t.minhash_ngram}:{t.minhash_seed}:{t.minhash_hash}"


def _reference(
    engine: Engine, dataset_id: int, key: str, scored_since: datetime | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, bytes]]]:
    """Other datasets' non-rejected samples for the dedup indexes: stored content hashes and
    MinHash signatures where a compatible earlier run left them, the text otherwise. With
    `scored_since` (a resumed run), also this dataset's samples scored since then, under
    their own ids, so that the rest is still compared with them."""
    texts, hashes, sigs = [], [], []
    with reading(engine) as s:
        own_name = s.get(Dataset, dataset_id).name
    wanted = (DatasetSample.dataset_id != dataset_id) & (DatasetSample.status != "rejected")
    if scored_since is not None:
        wanted = wanted | (
            (DatasetSample.dataset_id == dataset_id) & (DatasetSample.scored_at >= scored_since)
        )
    with reading(engine) as s:
        for name, sid, kind, text, messages, system, minhash, signals in s.execute(
            select(
                Dataset.name,
                DatasetSample.id,
                DatasetSample.kind,
                DatasetSample.text,
                DatasetSample.messages,
                DatasetSample.system,
                DatasetSample.minhash,
                DatasetSample.signals,
            )
            .join(Dataset, Dataset.id == DatasetSample.dataset_id)
            .where(wanted)
            .order_by(DatasetSample.id)
        ):
            rid = f"{name}#{sid}" if name != own_name else str(sid)
            if (
                minhash
                and signals
                and signals.get("minhash_key") == key
                and signals.get("content_hash")
            ):
                hashes.append((rid, signals["content_hash"]))
                sigs.append((rid, bytes(minhash)))
            else:
                texts.append((rid, joined_text(kind, text, messages, system)))
    return texts, hashes, sigs


def execute_run(
    engine: Engine,
    run_id: int,
    progress: Callable[[int, int], None] | None = None,
    *,
    stop: threading.Event | None = None,
    resume: bool = False,
) -> tuple[str | None, str | None]:
    """Do the work of one run (in whatever process calls it); returns (outcome, error):
    done | cancelled (asked through the run) | stopped (`stop` was set; the run stays
    running for a later attempt) | failed, or None when the run is not there to be run.
    Never raises for run errors, which are recorded on the run row instead.

    `resume` (a job's later attempt) continues a run left running by a killed process:
    the samples it scored already keep their scores and are not scored again."""
    from core.datasets.quality import QualityPipeline, QualityThresholds, default_steps

    with writing(engine) as s:
        run = s.get(ScoringRun, run_id)
        resuming = resume and run is not None and run.status == "running"
        if run is None or (run.status != "queued" and not resuming):
            return None, None
        if not resuming:
            run.started_at = utcnow()
        run.status, run.heartbeat_at, run.pid = "running", utcnow(), os.getpid()
        dataset_id, total, since = run.dataset_id, run.total, run.started_at
        thresholds = QualityThresholds.from_dict(run.thresholds or {})
        done = 0
        if resuming:
            done = (
                s.scalar(
                    select(func.count()).where(
                        DatasetSample.dataset_id == dataset_id, DatasetSample.scored_at >= since
                    )
                )
                or 0
            )
    scored_since = since if resuming else None
    try:
        base_model = get_settings().base_model
        tokenizer = load_tokenizer(base_model)
        key = minhash_key(thresholds)
        texts, hashes, sigs = _reference(engine, dataset_id, key, scored_since)
        steps = default_steps(
            tokenizer=tokenizer,
            reference=texts,
            reference_hashes=hashes,
            reference_signatures=sigs,
            keep_signatures=True,
        )
        pipeline = QualityPipeline(steps, thresholds, batch_size=FETCH)
        shas: dict[str, str] = {}

        def inputs() -> Iterator[tuple[str, str]]:
            for sid, sha, text in _iter_samples(engine, dataset_id, scored_since):
                shas[str(sid)] = sha
                yield str(sid), text

        pending: list[Any] = []

        def flush() -> bool:
            nonlocal done, pending
            now = utcnow()
            params = []
            for res in pending:
                reasons = list(res.reasons)
                params.append(
                    {
                        "b_id": int(res.id),
                        "b_sha": shas.pop(res.id),
                        "score": float(res.score),
                        "signals": (
                            {**res.signals, "minhash_key": key}
                            if res.signature
                            else dict(res.signals)
                        ),
                        "minhash": res.signature,
                        "reasons": reasons,
                        "reason_codes": "," + ",".join(reasons) + "," if reasons else "",
                        "flagged_spans": [list(sp) for sp in res.flagged_spans],
                        "duplicate_of": res.duplicate_of,
                        "token_count": int(res.signals.get("tokens", 0) or 0),
                        "scored_at": now,
                    }
                )
            with writing(engine) as s:
                if params:
                    # One executemany per batch; an edit made while scoring wins (the content
                    # hash no longer matches, so its stale score is not written).
                    s.connection().execute(SCORE_UPDATE, params)
                done += len(pending)
                pending = []
                r = s.get(ScoringRun, run_id)
                r.done, r.heartbeat_at = done, now
                r.total = max(r.total, done)  # samples added while scoring
                cancel = r.status == "cancelling"
            if progress:
                progress(done, max(total, done))
            return cancel

        cancelled = stopped = False
        for res in pipeline.run(inputs()):
            pending.append(res)
            if len(pending) >= FETCH:
                cancelled = flush()
                stopped = stop is not None and stop.is_set()
                if cancelled or stopped:
                    break
        if pending and not cancelled and not stopped:
            cancelled = flush()
        if stopped and not cancelled:
            return "stopped", None  # a later attempt resumes it
        final = "cancelled" if cancelled else "done"
        with writing(engine) as s:
            r = s.get(ScoringRun, run_id)
            r.status = final
            r.stats = {
                "pipeline": pipeline.stats(),
                "tokenizer": f"base model {base_model}" if tokenizer else "regex (fallback)",
            }
            r.finished_at = r.heartbeat_at = utcnow()
        return final, None
    except Exception as err:  # recorded on the run so the page can show it
        error = f"{type(err).__name__}: {err}"[:2000]
        with writing(engine) as s:
            r = s.get(ScoringRun, run_id)
            r.status, r.finished_at, r.error = "failed", utcnow(), error
        return "failed", error
