"""Issue 10 item 11: no file is lost to "database is locked", and an ingest that lost files
is audited as such.

Another process (the embedding or scoring writer, a second ingest) holds SQLite's write
lock while the ingest runs. Before the fix a file's transaction began with a plain BEGIN,
read which documents existed and then tried to write: SQLite refuses that upgrade at once
while another connection writes, so the file failed without waiting. Writers now take the
lock up front and retry with backoff when another writer keeps it past the busy timeout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import core.db.engine as db_engine_module
from core.corpus.embedders import get_embedder
from core.corpus.embedding import embed_pending, pending_count
from core.corpus.ingest import IngestOptions, ingest_paths
from core.corpus.models import Chunk, Document
from core.corpus.sample import SAMPLE_DIR
from core.db.models import AuditEntry

NO_EMBED = IngestOptions(embed=False)

HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    db, seconds = sys.argv[1], float(sys.argv[2])
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE IF NOT EXISTS lock_holder (at REAL)")
    conn.execute("INSERT INTO lock_holder VALUES (?)", (time.time(),))
    print("locked", flush=True)
    time.sleep(seconds)
    conn.execute("COMMIT")
    print("released", flush=True)
    """
)


class Holder:
    """A separate process that holds SQLite's write lock (BEGIN IMMEDIATE) for a while."""

    def __init__(self, db_path: str, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, db_path, str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line == "locked", self.proc.stderr.read()
        self.locked_at = time.monotonic()

    def wait(self) -> None:
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0 and "released" in out, err


def _sqlite_path(engine) -> str:
    return engine.url.database


def _files(tmp_path: Path, n: int = 6) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for p in [p for p in sorted(SAMPLE_DIR.glob("*.md")) if p.name != "README.md"][:n]:
        shutil.copy(p, folder / p.name)
    return folder


def _audit_rows(engine, action: str) -> list[AuditEntry]:
    with engine.connect() as c:
        return list(c.execute(sa.select(AuditEntry).where(AuditEntry.action == action)).mappings())


# The write lock of a whole database file is SQLite's (PostgreSQL locks rows and waits).
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@sqlite_only
def test_ingest_waits_for_another_process_holding_the_write_lock(
    db_engine, admin, settings, tmp_path
):
    engine = db_engine
    folder = _files(tmp_path)
    holder = Holder(_sqlite_path(engine), seconds=3)
    try:
        report = ingest_paths(engine, admin, [folder], NO_EMBED, settings)
    finally:
        holder.wait()
    assert report.problems() == []
    assert report.ok and report.added == 6
    # It really ran into the lock: the first file could only commit after the holder did.
    assert time.monotonic() - holder.locked_at >= 2.5
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(Document)).scalar_one() == 6
    [row] = _audit_rows(engine, "corpus.ingest")
    assert row["outcome"] == "ok"


@sqlite_only
def test_ingest_retries_when_the_lock_outlasts_the_busy_timeout(
    db_engine, admin, settings, tmp_path, monkeypatch
):
    engine = db_engine
    folder = _files(tmp_path, 3)
    monkeypatch.setattr(db_engine_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    engine.dispose()  # new connections get the short busy timeout
    holder = Holder(_sqlite_path(engine), seconds=2.5)
    try:
        report = ingest_paths(engine, admin, [folder], NO_EMBED, settings)
    finally:
        holder.wait()
    assert report.problems() == []
    assert report.ok and report.added == 3
    assert _audit_rows(engine, "corpus.ingest")[0]["outcome"] == "ok"


@sqlite_only
def test_embedding_writer_retries_past_the_busy_timeout(
    db_engine, admin, settings, tmp_path, monkeypatch
):
    engine = db_engine
    folder = _files(tmp_path, 2)
    ingest_paths(engine, admin, [folder], NO_EMBED, settings)
    pending = pending_count(engine, admin)
    assert pending > 0
    get_embedder(settings)  # loaded before the lock is taken, so the write meets the lock
    monkeypatch.setattr(db_engine_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    engine.dispose()
    holder = Holder(_sqlite_path(engine), seconds=3)
    try:
        done = embed_pending(engine, admin, settings)
    finally:
        holder.wait()
    assert done == pending and pending_count(engine, admin) == 0
    with engine.connect() as c:
        assert (
            c.execute(
                sa.select(sa.func.count()).select_from(Chunk).where(Chunk.embedded.is_(False))
            ).scalar_one()
            == 0
        )


def test_an_ingest_that_lost_files_is_audited_as_partly_failed(
    db_engine, admin, settings, tmp_path
):
    folder = _files(tmp_path, 2)
    (folder / "leer.txt").write_text("")
    shutil.copy(SAMPLE_DIR / "broken" / "fehlerhaft.jsonl", folder / "fehlerhaft.jsonl")
    report = ingest_paths(db_engine, admin, [folder], NO_EMBED, settings)
    assert not report.ok
    [row] = _audit_rows(db_engine, "corpus.ingest")
    assert row["outcome"] == "partial"
    named = {Path(f["path"]).name: f for f in row["detail"]["problem_files"]}
    assert set(named) == {"leer.txt", "fehlerhaft.jsonl"}
    assert named["leer.txt"]["status"] == "failed" and "empty" in named["leer.txt"]["problem"]
    assert named["fehlerhaft.jsonl"]["status"] == "partial"
    assert row["detail"]["failed_files"] == 1 and row["detail"]["partial_files"] == 1

    # Every file failed: the audit says failed.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "leer.txt").write_text("")
    ingest_paths(db_engine, admin, [bad], NO_EMBED, settings)
    rows = _audit_rows(db_engine, "corpus.ingest")
    assert [r["outcome"] for r in rows] == ["partial", "failed"]
