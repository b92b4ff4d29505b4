"""Writing the corpus: documents, revisions, chunks, keyword index and declared links, in
batches inside one transaction per file; and deleting a document from every store."""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from core.audit import audited
from core.config import Settings, get_settings
from core.corpus import keyword
from core.corpus.chunking import Chunker
from core.corpus.documents import DocumentNotFound
from core.corpus.graph import get_graph_stores
from core.corpus.ingest_report import DocumentOutcome, FileReport
from core.corpus.linking import link_ref_rows
from core.corpus.models import Chunk, Document, DocumentRevision, Edge, LinkRef
from core.corpus.readers import (
    MAX_DOCUMENT_BYTES,
    FileProblem,
    RowProblem,
    SourceDocument,
    read_file,
)
from core.corpus.vectors import get_vector_store
from core.db.base import utcnow
from core.db.engine import is_lock_error, retry_on_lock, write_transaction
from core.permissions import Principal, require

MAX_OUTCOMES_PER_FILE = 1000


def content_sha256(doc: SourceDocument) -> str:
    """Hash of everything a revision consists of (text, title, fields, metadata, links)."""
    payload = {
        "title": doc.title,
        "text": doc.text,
        "document_type": doc.document_type,
        "domain": doc.domain,
        "date": doc.date.isoformat() if doc.date else None,
        "metadata": doc.metadata,
        "links": sorted(doc.links),
    }
    raw = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


WRITE_BATCH = 200


class DocumentWriter:
    """Writes documents in batches: a handful of statements per batch instead of per row.

    `document_type` and `domain` fill in documents that have none; `link_key` says how the
    links they declare are matched (core.corpus.link_keys); `changed` collects the ids of
    documents added or updated, `stale_vectors` those whose old vectors must go.
    """

    def __init__(
        self,
        chunker: Chunker,
        *,
        document_type: str | None = None,
        domain: str | None = None,
        language: str = "de",
        link_key: str = "auto",
    ) -> None:
        self.chunker = chunker
        self.document_type, self.domain, self.language = document_type, domain, language
        self.link_key = link_key
        self.stale_vectors: set[str] = set()
        self.changed: list[str] = []

    def prepare(self, doc: SourceDocument) -> None:
        """Checks that need no database; raises ValueError for a bad row."""
        if not doc.doc_id or len(doc.doc_id) > 255:
            raise ValueError(f"document id {doc.doc_id[:40]!r} must be 1-255 characters")
        if self.document_type and not doc.document_type:
            doc.document_type = self.document_type
        if self.domain and not doc.domain:
            doc.domain = self.domain

    def write_batch(self, conn: Connection, docs: list[SourceDocument]) -> list[DocumentOutcome]:
        existing = {
            r.doc_id: r
            for r in conn.execute(
                sa.select(
                    Document.id,
                    Document.doc_id,
                    Document.revision,
                    Document.sha256,
                    Document.source_path,
                ).where(Document.doc_id.in_([d.doc_id for d in docs]))
            )
        }
        now = utcnow()
        outcomes: list[DocumentOutcome] = []
        new_rows, revisions, chunks, links, indexed = [], [], [], [], []
        updated_ids: list[str] = []
        pending = []
        for doc in docs:
            sha = content_sha256(doc)
            row = existing.get(doc.doc_id)
            if row is not None and row.sha256 == sha:
                outcomes.append(DocumentOutcome(doc.doc_id, "unchanged", row.revision, doc.line))
                continue
            clash = _id_clash(row.source_path if row is not None else None, doc)
            if clash:
                outcomes.append(
                    DocumentOutcome(doc.doc_id, "refused", row.revision, doc.line, clash)
                )
                continue
            values = {
                "title": doc.title[:10_000],
                "text": doc.text,
                "document_type": doc.document_type,
                "domain": doc.domain,
                "date": doc.date,
                "metadata": doc.metadata,
                "source_path": doc.source_path,
                "sha256": sha,
                "ingested_at": now,
                "language": self.language,
            }
            if row is None:
                revision = 1
                new_rows.append({"doc_id": doc.doc_id, "revision": 1, **values})
                outcomes.append(DocumentOutcome(doc.doc_id, "added", 1, doc.line))
            else:
                revision = row.revision + 1
                conn.execute(
                    sa.update(Document)
                    .where(Document.id == row.id)
                    .values(revision=revision, **values)
                )
                updated_ids.append(doc.doc_id)
                outcomes.append(DocumentOutcome(doc.doc_id, "updated", revision, doc.line))
            pending.append((doc, revision))
            revisions.append(
                {
                    "doc_id": doc.doc_id,
                    "revision": revision,
                    "sha256": sha,
                    "source_path": doc.source_path,
                    "ingested_at": now,
                }
            )
            links.extend(link_ref_rows(doc, self.link_key))
            indexed.append((doc.doc_id, doc.title, doc.text))
        split = self.chunker.split_many([d.text for d, _r in pending])
        for (doc, revision), doc_chunks in zip(pending, split, strict=True):
            chunks.extend(
                {
                    "doc_id": doc.doc_id,
                    "revision": revision,
                    "chunk_index": c.index,
                    "text": c.text,
                    "start_char": c.start_char,
                    "end_char": c.end_char,
                    "token_count": c.token_count,
                    "embedded": False,
                }
                for c in doc_chunks
            )
        if updated_ids:
            conn.execute(sa.delete(Chunk).where(Chunk.doc_id.in_(updated_ids)))
            conn.execute(sa.delete(Edge).where(Edge.src.in_(updated_ids)))
            conn.execute(sa.delete(LinkRef).where(LinkRef.src.in_(updated_ids)))
            self.stale_vectors.update(updated_ids)
        if new_rows:
            conn.execute(sa.insert(Document), new_rows)
        if revisions:
            conn.execute(sa.insert(DocumentRevision), revisions)
        if chunks:
            conn.execute(sa.insert(Chunk), chunks)
        if indexed:
            keyword.index_documents(conn, indexed, self.language)
        if links:  # edges once every file is in: a link may name a document of a later file
            conn.execute(sa.insert(LinkRef), links)
        self.changed.extend(d for d, _t, _b in indexed)
        return outcomes


def _id_clash(stored_source: str | None, doc: SourceDocument) -> str:
    """Why a document may not replace the stored one of the same id ("" when it may).

    A new revision comes from the file the document came from (by name: an upload lands in
    a new folder each time, a corpus may move). A document of the same id from another file
    is a collision, e.g. a jsonl whose ids are numbered like those of another; replacing the
    stored text would lose it, so the row is refused and named instead.
    """
    if not stored_source:
        return ""
    old, new = Path(stored_source).name, Path(doc.source_path).name
    if old == new:
        return ""
    return (
        f"id {doc.doc_id!r} is already the id of a document from {old}; not ingested (the "
        f"stored one is kept). Give this document another id (map another column with "
        f"--map id=COLUMN), or delete the stored one first (clara corpus delete {doc.doc_id})"
    )


def write_file(
    engine: Engine,
    path: Path,
    mapping: dict[str, str],
    writer: DocumentWriter,
    max_document_bytes: int = MAX_DOCUMENT_BYTES,
) -> FileReport:
    """Ingest one file in one write transaction; a lock never fails it: the transaction
    takes the write lock up front (BEGIN IMMEDIATE on SQLite, once the first batch is
    read) and, if another writer keeps the lock past the busy timeout or PostgreSQL
    reports a deadlock, the whole file is tried again with backoff (retry_on_lock)."""
    changed_before = len(writer.changed)
    stale_before = set(writer.stale_vectors)

    def attempt() -> FileReport:
        del writer.changed[changed_before:]
        writer.stale_vectors = set(stale_before)
        return _write_file_once(engine, path, mapping, writer, max_document_bytes)

    try:
        report = retry_on_lock(attempt, what=f"ingest of {path.name}")
    except sa.exc.SQLAlchemyError as err:  # still locked after LOCK_RETRY_SECONDS
        report = FileReport(
            path=str(path),
            status="failed",
            problems=[f"{type(err).__name__}: {_reason(err)} (gave up waiting for the lock)"],
        )
    if report.status == "failed":
        # The transaction rolled back: forget what this file had announced.
        report.counts = {"added": 0, "updated": 0, "unchanged": 0}
        report.documents = []
        del writer.changed[changed_before:]
        writer.stale_vectors = stale_before
        return report
    if report.problems:
        report.status = "partial"
    if not any(report.counts.values()) and not report.problems:
        report.status, report.problems = "failed", ["no documents found in this file"]
    return report


def _write_file_once(
    engine: Engine,
    path: Path,
    mapping: dict[str, str],
    writer: DocumentWriter,
    max_document_bytes: int,
) -> FileReport:
    """One attempt; lock errors propagate (the transaction rolled back) for a retry."""
    report = FileReport(path=str(path))

    try:
        with ExitStack() as stack:
            conn: Connection | None = None

            def flush(batch: list[SourceDocument]) -> None:
                nonlocal conn
                if conn is None:  # the write lock only once there is something to write
                    conn = stack.enter_context(write_transaction(engine, what="ingest"))
                for outcome in writer.write_batch(conn, batch):
                    if outcome.action == "refused":
                        where = f"line {outcome.line}: " if outcome.line else ""
                        report.problems.append(f"{where}{outcome.problem}")
                        continue
                    report.counts[outcome.action] += 1
                    if len(report.documents) < MAX_OUTCOMES_PER_FILE:
                        report.documents.append(outcome)
                batch.clear()

            batch: list[SourceDocument] = []
            ids: set[str] = set()
            for item in read_file(path, mapping, max_document_bytes):
                if isinstance(item, RowProblem):
                    report.problems.append(f"line {item.line}: {item.reason}")
                    continue
                report.warnings.extend(item.warnings)
                try:
                    writer.prepare(item)
                except ValueError as err:
                    where = f"line {item.line}: " if item.line else ""
                    report.problems.append(f"{where}{err}")
                    continue
                if item.doc_id in ids:  # the same id twice: the later row is a new revision
                    flush(batch)
                    ids.clear()
                batch.append(item)
                ids.add(item.doc_id)
                if len(batch) >= WRITE_BATCH:
                    flush(batch)
                    ids.clear()
            if batch:
                flush(batch)
    except FileProblem as err:
        report.status, report.problems = "failed", [err.reason]
    except (OSError, sa.exc.SQLAlchemyError) as err:
        if is_lock_error(err):
            raise
        report.status, report.problems = "failed", [f"{type(err).__name__}: {_reason(err)}"]
    return report


def _reason(err: Exception) -> str:
    orig = getattr(err, "orig", None)
    return str(orig or err).strip().splitlines()[0][:300]


# Delete -----------------------------------------------------------------------------------


def delete_document(
    engine: Engine, actor: Principal, doc_id: str, settings: Settings | None = None
) -> None:
    """Remove a document from the database, the keyword index, the vectors and the graph."""
    settings = settings or get_settings()
    with audited(engine, actor, "corpus.delete", target=doc_id):
        require(actor, "corpus:ingest")

        def remove() -> None:
            with write_transaction(engine, what="delete") as conn:
                pk = conn.execute(sa.select(Document.id).where(Document.doc_id == doc_id)).scalar()
                if pk is None:
                    raise DocumentNotFound(doc_id)
                keyword.remove_document(conn, pk)
                conn.execute(sa.delete(Edge).where(Edge.src == doc_id))
                conn.execute(sa.delete(LinkRef).where(LinkRef.src == doc_id))
                conn.execute(sa.delete(Chunk).where(Chunk.doc_id == doc_id))
                conn.execute(sa.delete(DocumentRevision).where(DocumentRevision.doc_id == doc_id))
                conn.execute(sa.delete(Document).where(Document.id == pk))

        retry_on_lock(remove, what="delete")
        get_vector_store(settings).delete_documents([doc_id])
        _rel, neo = get_graph_stores(engine, settings)
        if neo is not None:
            neo.delete_document(doc_id)
