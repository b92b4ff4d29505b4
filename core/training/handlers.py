"""What each kind of job does inside its process: the `{kind: handler}` table of the child.

A handler gets the job's `JobContext` (its row, its `JobLease`, a stop event set when the
worker asks it to stop) and returns the process's exit code. Every write it makes about the
job goes through the lease: progress, metrics, checkpoints, the adapter, success. Failure
is reported by the child (core.training.child) when a handler raises.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from sqlalchemy import Engine

from core.config import Settings
from core.training.distributed import Rank, writes_about_job
from core.training.jobs import JobInfo
from core.training.queue import JobLease, LeaseLost
from core.training.stopping import StopTracker

EXIT_OK, EXIT_FAILED, EXIT_STOPPED, EXIT_LOST = 0, 1, 3, 75


@dataclass
class JobContext:
    job: JobInfo
    lease: JobLease
    engine: Engine
    settings: Settings
    stop: threading.Event
    tracker: StopTracker
    log: Callable[[str], None]
    lost: Callable[[], NoReturn]
    rank: Rank | None = None  # a rank of a distributed job (core.training.distributed)
    node_rank: int = 0  # the machine of a distributed job this process runs the ranks of

    @property
    def writes(self) -> bool:
        """Whether this process writes about the job: always, except a rank other than 0
        and the process of a machine that joined the job."""
        return writes_about_job(self.rank, self.node_rank)

    def progress(self, done: int, total: int | None = None) -> None:
        if not self.lease.progress(done, total):
            self.lost()
        self.tracker.progress()


def run_sleep(ctx: JobContext) -> int:
    """Only exercises queue, worker and child process (tests, claim-latency benchmark)."""
    try:
        ctx.lease.metric(
            {"phase": "run", "step": 0, "extra": {"pid": os.getpid(), "token": ctx.lease.token}},
            ctx.job.attempts,
        )
    except LeaseLost:
        ctx.lost()
    ctx.tracker.set_phase("train")  # stops through the event, as training does
    deadline = time.monotonic() + float(ctx.job.spec.get("seconds", 0))
    while time.monotonic() < deadline:
        if ctx.stop.is_set():
            return EXIT_STOPPED
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    if float(ctx.job.spec.get("fail", 0)):
        raise RuntimeError("sleep job asked to fail")
    ctx.lease.succeed()
    return EXIT_OK


def run_training(ctx: JobContext) -> int:
    """Train the job's spec on its dataset version and register the adapter (kind "sft")."""
    from core.datasets.versions import get_version, read_version
    from core.permissions import SYSTEM
    from core.training.adapters import get_adapter
    from core.training.base_model import (
        DEMO,
        base_model_fingerprint,
        model_revision,
        resolve_base_model,
    )
    from core.training.distributed import run_launcher, wants_launch
    from core.training.runner import run_sft
    from core.training.spec import spec_from_dict
    from core.users import principal_for

    job, lease, log, engine = ctx.job, ctx.lease, ctx.log, ctx.engine
    spec = spec_from_dict(dict(job.spec))
    if job.base_model == DEMO and ctx.rank is None:
        log("using the demo base model (building it first if needed)")
    base = resolve_base_model(job.base_model, ctx.settings, progress=lambda m, _f: log(m))
    if wants_launch(spec.resources):
        # Built (the demo model) above, once, before the ranks that all load it start.
        return run_launcher(ctx, spec.resources)
    version = get_version(engine, SYSTEM, job.dataset_version_id)
    train_rows = read_version(version, "train").to_pylist()
    eval_rows = read_version(version, "eval").to_pylist()
    log(
        f"dataset {version.dataset_name}@v{version.number}: {len(train_rows)} train, "
        f"{len(eval_rows)} eval samples"
    )
    parent = get_adapter(engine, SYSTEM, spec.adapter) if spec.continues else None
    fingerprint = base_model_fingerprint(base)
    if parent is not None and parent.base_model_fingerprint != fingerprint:
        raise RuntimeError(
            f"adapter {parent.name!r} was trained on another base model than "
            f"{base} (fingerprint differs)"
        )
    before = _recorded_before(engine, job.id)

    def sink(row: dict[str, Any]) -> None:
        if not ctx.writes:
            return
        try:
            lease.metric(row, job.attempts)
        except LeaseLost:
            ctx.lost()

    def on_checkpoint(path: str, step: int) -> None:
        if not ctx.writes:
            return
        try:
            lease.checkpoint(path, step)
        except LeaseLost:
            ctx.lost()
        if ctx.stop.is_set():
            log(f"stop requested: checkpoint saved at step {step}")

    result = run_sft(
        spec,
        train_rows,
        eval_rows,
        job.output_dir,
        base_model=base,
        parent_adapter_path=parent.path if parent else None,
        sink=sink,
        stop=ctx.stop,
        guard=lease.held if ctx.writes else None,
        on_lost=ctx.lost,
        on_checkpoint=on_checkpoint,
        tracker=ctx.tracker,
        eval_before=not before,
        log=log,
    )
    if result.stopped_early:
        saved = result.metrics.get("checkpoint")
        if saved:
            ctx.tracker.finished(int(result.metrics.get("steps") or 0), saved)
        return EXIT_STOPPED
    if not ctx.writes:
        return EXIT_OK  # rank 0 registers the adapter and reports the outcome
    metrics = dict(result.metrics)
    if before and "eval_loss_before" not in metrics:
        metrics.update(before)
    if not lease.held():
        ctx.lost()
    actor = principal_for(engine, job.owner) or SYSTEM
    info = lease.register_adapter(
        actor,
        name=job.name,
        files_dir=result.adapter_dir,
        base_model=base,
        base_model_fingerprint=fingerprint,
        method=spec.method,
        dataset_version_id=version.id,
        dataset_manifest_sha256=version.manifest_sha256,
        parent_adapter_id=parent.id if parent else None,
        metrics=metrics,
        spec=spec.model_dump(mode="json"),
        extra_manifest={
            "base_model_ref": job.base_model,
            "base_model_revision": model_revision(base),
            "dataset_ref": f"{version.dataset_name}@v{version.number}",
        },
        settings=ctx.settings,
    )
    log(f"registered adapter {info.name!r} (id {info.id}) at {info.path}")
    lease.succeed()
    return EXIT_OK


def _recorded_before(engine: Engine, job_id: int) -> dict[str, float]:
    """The evaluation before training of an earlier attempt ({} when none was recorded)."""
    from sqlalchemy import select

    from core.db import reading
    from core.training.models import TrainingMetric

    with reading(engine) as s:
        row = s.scalar(
            select(TrainingMetric)
            .where(TrainingMetric.job_id == job_id, TrainingMetric.phase == "eval_before")
            .order_by(TrainingMetric.id)
            .limit(1)
        )
        if row is None:
            return {}
        return {"eval_loss_before": row.eval_loss, "eval_perplexity_before": row.eval_perplexity}


def run_scoring(ctx: JobContext) -> int:
    """Score a dataset (kind "score"): batch by batch, each batch's scores committed; a new
    attempt after a killed one skips the samples this run scored already."""
    from core.datasets.scoring import execute_run, mark_run

    run_id = int(ctx.job.spec["run_id"])
    ctx.tracker.set_phase("train")  # a stop request ends the run after the batch under way
    outcome, error = execute_run(
        ctx.engine, run_id, progress=ctx.progress, stop=ctx.stop, resume=True
    )
    ctx.log(f"scoring run {run_id}: {outcome}")
    if outcome == "stopped":
        if ctx.lease.cancel_requested():
            mark_run(ctx.engine, run_id, "cancelled")
        return EXIT_STOPPED
    if outcome == "failed":
        raise RuntimeError(error or f"scoring run {run_id} failed")
    if outcome == "cancelled":
        ctx.lease.cancelled(f"cancelled: {ctx.job.step} samples scored, their scores are kept")
        return EXIT_OK
    ctx.lease.succeed()
    return EXIT_OK


def run_embedding(ctx: JobContext) -> int:
    """Embed every pending corpus chunk (kind "embed"), one committed batch at a time; a new
    attempt continues with what is still pending."""
    from core.corpus.embedding import EMBED_BATCH, embed_next_batch, pending_count
    from core.permissions import SYSTEM
    from core.users import principal_for

    actor = principal_for(ctx.engine, ctx.job.owner) or SYSTEM
    ctx.tracker.set_phase("train")  # a stop request ends the run after the batch under way
    done, after = 0, 0
    total = pending_count(ctx.engine, actor)
    ctx.progress(0, total)
    while not ctx.stop.is_set():
        step = embed_next_batch(
            ctx.engine,
            actor,
            ctx.settings,
            after_id=after,
            batch_size=int(ctx.job.spec.get("batch_size") or EMBED_BATCH),
        )
        done, after = done + step.embedded, step.last_chunk_id
        ctx.progress(done, max(total, done + step.pending))
        if step.embedded == 0 or step.pending == 0:
            break
    if ctx.stop.is_set():
        return EXIT_STOPPED
    ctx.log(f"embedded {done} chunks")
    ctx.lease.succeed()
    return EXIT_OK


def run_embed_tune(ctx: JobContext) -> int:
    """Fine-tune the embedding model on the corpus and register it (kind "embed-tune")."""
    from core.corpus.embed_tune import run_embed_tune_job

    return run_embed_tune_job(ctx)


def run_gate(ctx: JobContext) -> int:
    """The gate of a learning cycle: promote the new adapter of a line or keep the old."""
    from core.learning.gate import run_gate as gate

    return gate(ctx)


HANDLERS: dict[str, Callable[[JobContext], int]] = {
    "sft": run_training,
    "gate": run_gate,
    "score": run_scoring,
    "embed": run_embedding,
    "embed-tune": run_embed_tune,
    "sleep": run_sleep,
}
