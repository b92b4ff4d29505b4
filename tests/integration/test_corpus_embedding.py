"""Embedding pending chunks one batch at a time (core.corpus.embedding.embed_next_batch), the
step a job handler runs: each batch is committed on its own, progress is reported, and a
run that stops between batches (a killed worker) resumes with what is still pending, with
the same vectors as one `embed_pending` run. `clara corpus ingest` leaves the embedding to
such a job (issue 12, item 6); a real `clara worker` killed with SIGKILL mid-run is taken
over without encoding finished batches again. Real database (both engines), real model,
real Chroma, real processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.corpus.embedding import embed_next_batch, embed_pending, pending_count
from core.corpus.ingest import IngestOptions, ingest_paths
from core.corpus.models import Chunk
from core.corpus.vectors import get_vector_store
from core.permissions import PermissionDenied
from tests.cli_run import clara, cli_env
from tests.conftest import principal

TEXT = "Die Hundesteuer wird jährlich im Voraus fällig. " * 30


def _ingest(engine, admin, settings, tmp_path, n: int = 4) -> int:
    src = tmp_path / "docs"
    src.mkdir(exist_ok=True)
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


def _start_worker(settings, log) -> subprocess.Popen:
    """A real `clara worker` for embed jobs; a short lease, so that a killed one's job is
    taken over within seconds."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--kinds", "embed", "--lease-seconds", "2"],
        env=cli_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _embedded(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(Chunk).where(Chunk.embedded.is_(True))
        ).scalar_one()


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the batch commits: one code path
def test_a_killed_worker_resumes_without_embedding_finished_batches_again(
    db_engine, admin, settings, tmp_path
):
    """SIGKILL of the worker and of its job's process mid-run (a machine going down): a new
    worker takes the job over once its lease has expired and embeds exactly the chunks
    still pending; the batches committed before the kill are not encoded again."""
    from core.corpus.embedding import embedding_job, start_embedding
    from core.training.jobs import load_job
    from tests.waiting import wait_until

    pending = _ingest(db_engine, admin, settings, tmp_path, n=5)
    batch = 5
    assert pending >= 8 * batch
    job_id = start_embedding(db_engine, admin, settings, batch_size=batch)
    log = (tmp_path / "worker.log").open("ab")
    first = _start_worker(settings, log)
    try:
        # Two batches committed, and more to come: kill now.
        wait_until(lambda: _embedded(db_engine) >= 2 * batch, "two batches", limit=180, every=0.05)
        child = load_job(db_engine, job_id).pid
        os.killpg(first.pid, signal.SIGKILL)
        if child:
            with contextlib.suppress(ProcessLookupError):  # it may have ended by itself
                os.killpg(child, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    time.sleep(0.5)  # a commit under way when the kill came has landed or rolled back
    done_before = _embedded(db_engine)
    assert batch * 2 <= done_before < pending, "the job ended before the kill"
    assert done_before % batch == 0  # whole batches only: each is committed on its own
    assert embedding_job(db_engine, admin).state == "running"  # its lease runs out

    second = _start_worker(settings, log)
    try:
        wait_until(
            lambda: embedding_job(db_engine, admin).state == "succeeded",
            "the job taken over and finished",
            limit=240,
        )
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=60)
        log.close()
    assert pending_count(db_engine, admin) == 0
    assert get_vector_store(settings).count() == pending
    job = load_job(db_engine, job_id)
    assert job.attempts == 2
    # The second attempt encoded exactly the chunks that were pending after the kill.
    lines = re.findall(r"embedded (\d+) chunks", Path(job.log_path).read_text("utf-8"))
    assert [int(n) for n in lines] == [pending - done_before]


def test_waiting_without_a_worker_says_so(db_engine, admin, settings, tmp_path):
    from core.corpus.embedding import NoEmbedWorker, start_embedding, wait_for_embedding

    _ingest(db_engine, admin, settings, tmp_path, n=1)
    job_id = start_embedding(db_engine, admin, settings)
    started = time.monotonic()
    with pytest.raises(NoEmbedWorker, match=f"embed job {job_id} is queued, but no worker"):
        wait_for_embedding(db_engine, admin, job_id, poll_s=0.1, no_worker_s=1.0)
    assert time.monotonic() - started < 10


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_ingest_queues_the_embedding_and_wait_needs_a_worker(
    db_engine, admin, settings, tmp_path
):
    """`clara corpus ingest` returns once the documents are keyword- and graph-searchable
    and leaves the vectors to an embed job; --wait with no worker running says so instead
    of hanging; --inline embeds in the process."""
    from core.corpus.embedding import embedding_job
    from core.corpus.search import search

    src = tmp_path / "docs"
    src.mkdir()
    (src / "hund.md").write_text(f"# Hundesteuer\n\n{TEXT}", encoding="utf-8")
    proc = clara(settings, "corpus", "ingest", str(src))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = embedding_job(db_engine, admin)
    assert job is not None and job.state == "queued"
    assert f"embeddings: job {job.id} queued for the worker" in proc.stdout
    assert pending_count(db_engine, admin) > 0
    hits = search(db_engine, admin, "Hundesteuer", settings, mode="keyword", k=5)
    assert [r.doc_id for r in hits] == ["hund"]

    (src / "katze.md").write_text(f"# Katzen\n\n{TEXT}", encoding="utf-8")
    proc = clara(settings, "corpus", "ingest", str(src), "--wait", "--json")
    assert proc.returncode != 0
    assert f"embed job {job.id} is queued, but no worker has taken it" in proc.stderr
    assert "--inline" in proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["added"] == 1 and report["summary"]["embed_job_id"] == job.id

    (src / "maus.md").write_text(f"# Mäuse\n\n{TEXT}", encoding="utf-8")
    proc = clara(settings, "corpus", "ingest", str(src), "--inline", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["pending_embeddings"] == 0
    assert report["summary"]["embed_job_id"] is None
    assert pending_count(db_engine, admin) == 0
    proc = clara(settings, "corpus", "ingest", str(src), "--inline", "--wait")
    assert proc.returncode != 0 and "choose one of" in proc.stderr

    # With a worker running, --wait returns once the job has embedded the new chunks.
    (src / "igel.md").write_text(f"# Igel\n\n{TEXT}", encoding="utf-8")
    with (tmp_path / "worker.log").open("ab") as log:
        worker = _start_worker(settings, log)
        try:
            proc = clara(settings, "corpus", "ingest", str(src), "--wait", "--json")
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["added"] == 1
    assert report["embedding"] == {
        "job_id": report["summary"]["embed_job_id"],
        "state": "succeeded",
        "pending": 0,
    }
    assert pending_count(db_engine, admin) == 0
