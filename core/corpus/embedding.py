"""Embedding pending chunks: ingest marks new chunks pending, and these functions compute
their vectors in batches, write them to the vector store and mark the chunks embedded.

Each batch is committed on its own (vectors upserted, then the chunks marked), so an
interrupted run loses at most the batch under way, and a later run picks up the chunks that
are still pending. `embed_next_batch` is one such step (for a caller that reports progress
between steps); `embed_pending` runs them all, reading the next batch while the model
encodes the current one. In the background, embedding is an "embed" job of the one jobs
queue (core.training.queue): `start_embedding` queues it (one at a time), `clara worker`
runs it batch by batch (core.training.handlers.run_embedding), `embedding_job` shows it and
`wait_for_embedding` follows it (and says so when no worker is there to run it).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine, Row

from core.audit import audited
from core.config import Settings, get_settings
from core.corpus.embedders import TextEmbedder, embedding_identity, get_embedder
from core.corpus.ingest_report import Progress
from core.corpus.models import Chunk, Document
from core.corpus.vectors import VectorStore, date_number, get_vector_store
from core.db.engine import retry_on_lock, write_transaction
from core.errors import ClaraError
from core.permissions import Principal, require

EMBED_BATCH = 256

# One embedding run per process at a time (the page's thread, the CLI, a job handler).
_embed_lock = threading.Lock()


def pending_count(engine: Engine, actor: Principal) -> int:
    require(actor, "corpus:search")
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(Chunk).where(Chunk.embedded.is_(False))
        ).scalar_one()


def chunk_metadata(
    doc_id: str,
    chunk_index: int,
    document_type: str | None,
    domain: str | None,
    date: dt.date | None,
    metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    """What Chroma stores per vector: the fields search filters on, inside the store."""
    meta: dict[str, Any] = {"doc_id": doc_id, "chunk_index": chunk_index}
    if document_type:
        meta["document_type"] = document_type
    if domain:
        meta["domain"] = domain
    if date:
        meta["date"] = date_number(date)
    for k, v in (metadata or {}).items():
        if isinstance(v, str | int | float | bool) and not isinstance(v, bool):
            meta[f"m.{k}"] = str(v)
        elif isinstance(v, bool):
            meta[f"m.{k}"] = "true" if v else "false"
    return meta


def pending_rows(engine: Engine, after_id: int, limit: int) -> list[Row]:
    """Up to `limit` pending chunks with id above `after_id`, in id order, with the document
    fields their vectors carry: (id, doc_id, chunk_index, text, document_type, domain, date,
    metadata)."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(
                    Chunk.id,
                    Chunk.doc_id,
                    Chunk.chunk_index,
                    Chunk.text,
                    Document.document_type,
                    Document.domain,
                    Document.date,
                    Document.metadata_,
                )
                .join(Document, Document.doc_id == Chunk.doc_id)
                .where(Chunk.embedded.is_(False), Chunk.id > after_id)
                .order_by(Chunk.id)
                .limit(limit)
            ).all()
        )


def _pending_batches(engine: Engine, batch_size: int) -> Iterator[list[Row]]:
    last_id = 0
    while True:
        rows = pending_rows(engine, last_id, batch_size)
        if not rows:
            return
        last_id = rows[-1][0]
        yield rows


def _embed_rows(
    engine: Engine, embedder: TextEmbedder, store: VectorStore, rows: list[Row]
) -> None:
    """Encode the chunks of `rows`, upsert their vectors, then mark them embedded."""
    vectors = embedder.encode([r[3] for r in rows])
    ids = [str(r[0]) for r in rows]
    metas = [chunk_metadata(r[1], r[2], r[4], r[5], r[6], r[7]) for r in rows]
    store.upsert(ids, vectors, metas)
    chunk_ids = [r[0] for r in rows]

    def mark() -> None:
        with write_transaction(engine, what="embedding writer") as conn:
            conn.execute(sa.update(Chunk).where(Chunk.id.in_(chunk_ids)).values(embedded=True))

    retry_on_lock(mark, what="embedding writer")


@dataclass(frozen=True)
class EmbedStep:
    """What one `embed_next_batch` did: chunks embedded, the id to continue after, and the
    chunks still pending after it (0: done)."""

    embedded: int
    last_chunk_id: int
    pending: int


def embed_next_batch(
    engine: Engine,
    actor: Principal,
    settings: Settings | None = None,
    *,
    after_id: int = 0,
    batch_size: int = EMBED_BATCH,
    progress: Progress | None = None,
) -> EmbedStep:
    """Embed the next batch of pending chunks (ids above `after_id`) and commit it.

    Reports `progress("embedding", embedded, pending_before, "")`. A caller that runs steps
    until `pending` is 0 (a job handler) loses at most one batch when it is killed: the
    chunks of committed batches are no longer pending.
    """
    require(actor, "corpus:ingest")
    settings = settings or get_settings()
    embedder = get_embedder(settings)
    store = get_vector_store(settings)
    with _embed_lock:
        before = pending_count(engine, actor)
        rows = pending_rows(engine, after_id, batch_size)
        if rows:
            _embed_rows(engine, embedder, store, rows)
        if progress:
            progress("embedding", len(rows), before, "")
        return EmbedStep(
            embedded=len(rows),
            last_chunk_id=rows[-1][0] if rows else after_id,
            pending=pending_count(engine, actor),
        )


def embed_pending(
    engine: Engine,
    actor: Principal,
    settings: Settings | None = None,
    batch_size: int = EMBED_BATCH,
    progress: Progress | None = None,
    limit: int | None = None,
) -> int:
    """Compute embeddings for pending chunks in batches; returns how many were embedded.

    The next batch is read from the database while the model encodes the current one, so
    the model (the physical limit here) never waits for I/O.
    """
    require(actor, "corpus:ingest")
    settings = settings or get_settings()
    embedder = get_embedder(settings)
    store = get_vector_store(settings)
    total = pending_count(engine, actor)
    if limit is not None:
        total = min(total, limit)
    done = 0
    with _embed_lock, ThreadPoolExecutor(max_workers=1) as io:
        batches = _pending_batches(engine, batch_size)
        nxt = io.submit(next, batches, None)
        while True:
            rows = nxt.result()
            if rows is None or (limit is not None and done >= limit):
                break
            nxt = io.submit(next, batches, None)
            _embed_rows(engine, embedder, store, rows)
            done += len(rows)
            if progress:
                progress("embedding", done, total, "")
    return done


def reset_embeddings(engine: Engine, actor: Principal, settings: Settings) -> int:
    """Forget every vector and mark every chunk pending, so that `embed_pending` fills the
    collection anew with the configured backend and model (which the collection then
    records). Returns how many chunks are pending now. Chunks are marked first: a crash in
    between leaves pending chunks, never vectors counted as done that are gone."""
    require(actor, "corpus:ingest")
    identity = embedding_identity(settings)
    with audited(engine, actor, "corpus.reembed", target=identity) as audit:

        def mark() -> int:
            with write_transaction(engine, what="re-embed") as conn:
                conn.execute(sa.update(Chunk).values(embedded=False))
                return conn.execute(sa.select(sa.func.count()).select_from(Chunk)).scalar_one()

        pending = retry_on_lock(mark, what="re-embed")
        store = get_vector_store(settings)
        deleted = store.clear()
        store.record_embedding(identity)
        audit.detail.update({"vectors_deleted": deleted, "chunks_pending": pending})
    return pending


@dataclass(frozen=True)
class EmbeddingJob:
    """The embed job a page shows: its id, state, chunks done of total, error."""

    id: int
    state: str
    done: int
    total: int | None
    error: str | None

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


def start_embedding(
    engine: Engine,
    actor: Principal,
    settings: Settings | None = None,
    *,
    batch_size: int | None = None,
) -> int:
    """Queue an "embed" job for `clara worker` unless one is queued or running already;
    returns its id. Never starts a thread or a process here. `batch_size`: chunks per
    committed batch (default EMBED_BATCH); a killed job loses at most one batch."""
    from core.training.jobs import job_log_path, jobs_root
    from core.training.queue import active_jobs, enqueue_job

    require(actor, "corpus:ingest")
    settings = settings or get_settings()
    running = active_jobs(engine, "embed")
    if running:
        return running[0].id
    with audited(engine, actor, "corpus.embed", target="pending chunks") as audit:
        job_id = enqueue_job(
            engine,
            kind="embed",
            name="embed-pending",
            owner=actor.username,
            spec={"batch_size": int(batch_size)} if batch_size else {},
            log_path=lambda jid: str(job_log_path(settings, jid)),
            output_dir=lambda jid: str(jobs_root(settings) / str(jid)),
        )
        audit.detail["job_id"] = job_id
    return job_id


def embedding_job(engine: Engine, actor: Principal) -> EmbeddingJob | None:
    """The newest embed job (the one under way, or the last one), or None."""
    from core.training.models import TrainingJob

    require(actor, "corpus:search")
    return _job_row(
        lambda q: q.where(TrainingJob.kind == "embed").order_by(TrainingJob.id.desc()).limit(1),
        engine,
    )


def _job_row(narrow, engine: Engine) -> EmbeddingJob | None:
    from core.training.models import TrainingJob

    with engine.connect() as conn:
        row = conn.execute(
            narrow(
                sa.select(
                    TrainingJob.id,
                    TrainingJob.state,
                    TrainingJob.step,
                    TrainingJob.max_steps,
                    TrainingJob.error,
                )
            )
        ).first()
    return None if row is None else EmbeddingJob(*row)


class NoEmbedWorker(ClaraError):
    """An embed job waits and no worker is there to run it."""


# How long a queued embed job may wait, while no worker holds any job, before a caller that
# waits for it is told that no worker is running (a free worker claims within a second).
NO_WORKER_S = 10.0


def _job_state(engine: Engine, job_id: int) -> EmbeddingJob | None:
    from core.training.models import TrainingJob

    return _job_row(lambda q: q.where(TrainingJob.id == job_id), engine)


def _busy_job(engine: Engine) -> int | None:
    """A job some live worker holds now (running, lease not expired), or None."""
    from core.db.base import utcnow
    from core.training.models import TrainingJob

    with engine.connect() as conn:
        return conn.execute(
            sa.select(TrainingJob.id)
            .where(TrainingJob.state == "running", TrainingJob.lease_expires_at > utcnow())
            .limit(1)
        ).scalar()


def wait_for_embedding(
    engine: Engine,
    actor: Principal,
    job_id: int,
    progress: Progress | None = None,
    *,
    poll_s: float = 0.5,
    no_worker_s: float = NO_WORKER_S,
) -> EmbeddingJob | None:
    """Block until embed job `job_id` has ended and return it (None if it was deleted),
    reporting
    `progress("embedding", done, total, detail)` on the way.

    Raises NoEmbedWorker when the job has waited `no_worker_s` seconds while no worker held
    any job: then nobody is running `clara worker`, and waiting longer would only hang. A
    worker busy with another job is waited for (the detail names that job).
    """
    require(actor, "corpus:search")
    waiting_since = time.monotonic()
    while True:
        job = _job_state(engine, job_id)
        if job is None or not job.active:
            return job
        if job.state == "running":
            waiting_since = time.monotonic()
            if progress:
                progress("embedding", job.done, job.total, f"job {job_id}")
        else:
            busy = _busy_job(engine)
            if busy is not None:
                waiting_since = time.monotonic()
                if progress:
                    progress("embedding", 0, job.total, f"job {job_id} waits for job {busy}")
            elif time.monotonic() - waiting_since > no_worker_s:
                raise NoEmbedWorker(
                    f"embed job {job_id} is queued, but no worker has taken it in "
                    f"{no_worker_s:.0f} s: no `clara worker` is running. Start one "
                    "(`clara up`, or `clara worker --kinds embed`) and the job runs, or "
                    "embed in this process: `clara corpus embed` (or ingest with --inline)."
                )
        time.sleep(poll_s)
