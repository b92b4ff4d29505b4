"""Embedding pending chunks one batch at a time (core.corpus.embedding.embed_next_batch), the
step a job handler runs: each batch is committed on its own, progress is reported, and a
run that stops between batches (a killed worker) resumes with what is still pending, with
the same vectors as one `embed_pending` run. Real database (both engines), real model,
real Chroma."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from core.corpus.embedding import embed_next_batch, embed_pending, pending_count
from core.corpus.ingest import IngestOptions, ingest_paths
from core.corpus.models import Chunk
from core.corpus.vectors import get_vector_store
from core.permissions import PermissionDenied
from tests.conftest import principal

TEXT = "Die Hundesteuer wird jährlich im Voraus fällig. " * 30


def _ingest(engine, admin, settings, tmp_path, n: int = 4) -> int:
    src = tmp_path / "docs"
    src.mkdir()
    for i in range(n):
        (src / f"doc{i}.md").write_text(f"# Satzung {i}\n\n{TEXT}", encoding="utf-8")
    ingest_paths(
        engine, admin, [src], IngestOptions(embed=False, chunk_tokens=64, chunk_overlap=8), settings
    )
    return pending_count(engine, admin)


def test_batches_commit_one_by_one_and_resume_after_a_stop(db_engine, admin, settings, tmp_path):
    pending = _ingest(db_engine, admin, settings, tmp_path)
    assert pending >= 6
    seen: list[tuple[str, int, int | None]] = []

    step = embed_next_batch(
        db_engine,
        admin,
        settings,
        batch_size=3,
        progress=lambda stage, done, total, _d: seen.append((stage, done, total)),
    )
    assert step.embedded == 3 and step.pending == pending - 3
    assert seen == [("embedding", 3, pending)]
    store = get_vector_store(settings)
    assert store.count() == 3
    with db_engine.connect() as conn:
        done_ids = conn.execute(sa.select(Chunk.id).where(Chunk.embedded.is_(True))).scalars()
        assert sorted(done_ids) == sorted(
            conn.execute(sa.select(Chunk.id).order_by(Chunk.id).limit(3)).scalars()
        )
        assert step.last_chunk_id == max(
            conn.execute(sa.select(Chunk.id).order_by(Chunk.id).limit(3)).scalars()
        )

    # "Killed" here: a new caller starts from scratch (after_id 0) and finds only the rest.
    steps = []
    while (s := embed_next_batch(db_engine, admin, settings, batch_size=4)).embedded:
        steps.append(s)
    assert sum(s.embedded for s in steps) == pending - 3
    assert steps[-1].pending == 0 == pending_count(db_engine, admin)
    assert s.embedded == 0 and s.pending == 0
    assert store.count() == pending
    # Nothing left for a full run either.
    assert embed_pending(db_engine, admin, settings) == 0


def test_after_id_continues_behind_the_last_batch(db_engine, admin, settings, tmp_path):
    pending = _ingest(db_engine, admin, settings, tmp_path, n=2)
    first = embed_next_batch(db_engine, admin, settings, batch_size=2)
    second = embed_next_batch(
        db_engine, admin, settings, after_id=first.last_chunk_id, batch_size=2
    )
    assert second.last_chunk_id > first.last_chunk_id
    assert second.pending == pending - 4


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_needs_the_ingest_permission(db_engine, admin, settings, tmp_path):
    _ingest(db_engine, admin, settings, tmp_path, n=1)
    with pytest.raises(PermissionDenied):
        embed_next_batch(db_engine, principal("auditor"), settings)


def test_embed_job_runs_in_the_worker_and_resumes_with_what_is_pending(
    db_engine, admin, settings, tmp_path
):
    """`start_embedding` only queues an "embed" job (one at a time); `clara worker` runs it
    in a child process batch by batch with progress; a stopped job's successor continues
    with what is pending (committed batches are not embedded again)."""
    from core.corpus.embedding import embedding_job, start_embedding
    from core.training.jobs import get_job
    from workers.trainer import Worker

    pending = _ingest(db_engine, admin, settings, tmp_path, n=6)
    # A first batch by hand, as if a killed worker had committed it.
    embed_next_batch(db_engine, admin, settings, batch_size=4)
    left = pending_count(db_engine, admin)
    assert left == pending - 4
    job_id = start_embedding(db_engine, admin, settings)
    assert start_embedding(db_engine, admin, settings) == job_id  # one at a time
    assert embedding_job(db_engine, admin).state == "queued"
    assert pending_count(db_engine, admin) == left  # nothing ran in this process
    Worker(settings, engine=db_engine, once=True, kinds=("embed",), log=lambda m: None).run()
    job = get_job(db_engine, admin, job_id)
    assert job.state == "succeeded", job.error
    assert (job.step, job.max_steps) == (left, left)
    assert pending_count(db_engine, admin) == 0
    assert embedding_job(db_engine, admin).done == left
    assert get_vector_store(settings).count() == pending
    with pytest.raises(PermissionDenied):
        start_embedding(db_engine, principal("auditor"), settings)
