"""Ingestion: files → documents, revisions, chunks, keyword index and graph edges; then
embeddings in batches.

Each file is written in one transaction, so a file that fails leaves nothing behind;
readers report bad rows of tabular files per line while the good rows ingest. Documents are
searchable by keyword and graph as soon as their file commits; their chunks are marked
pending and `embed_pending` (called after ingest, by `clara corpus embed` or by the
background thread the page starts) computes the vectors.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from core.audit import audited
from core.auth import Principal, require
from core.config import Settings, get_settings
from core.corpus import keyword
from core.corpus.chunking import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_TOKENS,
    Chunker,
    load_tokenizer,
)
from core.corpus.documents import DocumentNotFound
from core.corpus.graph import (
    GraphEdge,
    MentionFinder,
    RelationalGraphStore,
    document_names,
    get_graph_stores,
    link_target_id,
)
from core.corpus.models import Chunk, Document, DocumentRevision, Edge
from core.corpus.readers import (
    MAX_DOCUMENT_BYTES,
    SUPPORTED_SUFFIXES,
    FileProblem,
    RowProblem,
    SourceDocument,
    parse_mapping,
    read_file,
)
from core.corpus.vectors import date_number, get_embedder, get_vector_store, model_location
from core.db.base import utcnow
from core.db.engine import is_lock_error, retry_on_lock, write_transaction

log = logging.getLogger(__name__)
logging.getLogger("pypdf").setLevel(logging.ERROR)

Progress = Callable[[str, int, int | None, str], None]
MAX_OUTCOMES_PER_FILE = 1000
EMBED_BATCH = 256


@dataclass
class IngestOptions:
    document_type: str | None = None
    domain: str | None = None
    mapping: dict[str, str] | str | None = None
    globs: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    language: str = "de"
    embed: bool = True


@dataclass
class DocumentOutcome:
    doc_id: str
    action: str  # added | updated | unchanged
    revision: int
    line: int | None = None


@dataclass
class FileReport:
    path: str
    status: str = "ok"  # ok | partial | failed
    documents: list[DocumentOutcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {"added": 0, "updated": 0, "unchanged": 0}
    )


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)
    embedded: int = 0
    pending_embeddings: int = 0
    seconds: float = 0.0

    def _sum(self, key: str) -> int:
        return sum(f.counts[key] for f in self.files)

    @property
    def added(self) -> int:
        return self._sum("added")

    @property
    def updated(self) -> int:
        return self._sum("updated")

    @property
    def unchanged(self) -> int:
        return self._sum("unchanged")

    @property
    def failed_files(self) -> list[FileReport]:
        return [f for f in self.files if f.status != "ok"]

    @property
    def ok(self) -> bool:
        return not self.failed_files

    def problems(self) -> list[str]:
        return [f"{f.path}: {p}" for f in self.files for p in f.problems]

    def warnings(self) -> list[str]:
        return [f"{f.path}: {w}" for f in self.files for w in f.warnings]

    def summary(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed_files": len([f for f in self.files if f.status == "failed"]),
            "partial_files": len([f for f in self.files if f.status == "partial"]),
            "embedded": self.embedded,
            "pending_embeddings": self.pending_embeddings,
            "seconds": round(self.seconds, 2),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "files": [
                {
                    "path": f.path,
                    "status": f.status,
                    "counts": f.counts,
                    "problems": f.problems,
                    "warnings": f.warnings,
                    "documents": [d.__dict__ for d in f.documents],
                }
                for f in self.files
            ],
        }


# Files ------------------------------------------------------------------------------------


def collect_files(
    paths: Iterable[str | Path], globs: list[str] | None = None, exclude: list[str] | None = None
) -> list[Path]:
    """Files under `paths` (folders recursively), filtered by glob patterns.

    A pattern matches the path relative to the folder given or the bare file name, so both
    `*.md` and `satzungen/**/*.pdf` work. Explicitly named files are always taken.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_file():
            out.append(p)
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such file or folder")
        for f in sorted(p.rglob("*")):
            rel = f.relative_to(p).as_posix()
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
                continue
            if f.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            if globs and not any(_glob(rel, f.name, g) for g in globs):
                continue
            if exclude and any(_glob(rel, f.name, g) for g in exclude):
                continue
            out.append(f)
    seen: dict[Path, None] = {}
    for f in out:
        seen.setdefault(f.resolve(), None)
    return list(seen)


def _glob(rel: str, name: str, pattern: str) -> bool:
    return (
        fnmatch.fnmatch(rel, pattern)
        or fnmatch.fnmatch(name, pattern)
        or (pattern.startswith("**/") and fnmatch.fnmatch(rel, pattern[3:]))
    )


# Writing ----------------------------------------------------------------------------------


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


def _explicit_edges(doc: SourceDocument) -> list[GraphEdge]:
    edges = []
    for ref, etype, origin in doc.links:
        target = link_target_id(ref)
        if target and target != doc.doc_id:
            edges.append(GraphEdge(doc.doc_id, target, etype, origin, ref[:200]))
    return edges


WRITE_BATCH = 200


class _Writer:
    """Writes documents in batches: a handful of statements per batch instead of per row."""

    def __init__(self, opts: IngestOptions, chunker: Chunker) -> None:
        self.opts, self.chunker = opts, chunker
        self.stale_vectors: set[str] = set()
        self.changed: list[str] = []

    def prepare(self, doc: SourceDocument) -> None:
        """Checks that need no database; raises ValueError for a bad row."""
        if not doc.doc_id or len(doc.doc_id) > 255:
            raise ValueError(f"document id {doc.doc_id[:40]!r} must be 1-255 characters")
        if self.opts.document_type and not doc.document_type:
            doc.document_type = self.opts.document_type
        if self.opts.domain and not doc.domain:
            doc.domain = self.opts.domain

    def write_batch(self, conn: Connection, docs: list[SourceDocument]) -> list[DocumentOutcome]:
        existing = {
            r.doc_id: r
            for r in conn.execute(
                sa.select(Document.id, Document.doc_id, Document.revision, Document.sha256).where(
                    Document.doc_id.in_([d.doc_id for d in docs])
                )
            )
        }
        now = utcnow()
        outcomes: list[DocumentOutcome] = []
        new_rows, revisions, chunks, edges, indexed = [], [], [], [], []
        updated_ids: list[str] = []
        pending = []
        for doc in docs:
            sha = content_sha256(doc)
            row = existing.get(doc.doc_id)
            if row is not None and row.sha256 == sha:
                outcomes.append(DocumentOutcome(doc.doc_id, "unchanged", row.revision, doc.line))
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
                "language": self.opts.language,
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
            edges.extend(_explicit_edges(doc))
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
            self.stale_vectors.update(updated_ids)
        if new_rows:
            conn.execute(sa.insert(Document), new_rows)
        if revisions:
            conn.execute(sa.insert(DocumentRevision), revisions)
        if chunks:
            conn.execute(sa.insert(Chunk), chunks)
        if indexed:
            keyword.index_documents(conn, indexed, self.opts.language)
        rows = _unique_edge_rows(edges)
        if rows:
            conn.execute(sa.insert(Edge), rows)
        self.changed.extend(d for d, _t, _b in indexed)
        return outcomes


def _unique_edge_rows(edges: list[GraphEdge]) -> list[dict[str, str]]:
    from core.corpus.graph import _unique_rows

    return _unique_rows(edges)


def _ingest_file(
    engine: Engine, path: Path, opts: IngestOptions, mapping: dict[str, str], writer: _Writer
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
        return _ingest_file_once(engine, path, opts, mapping, writer)

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


def _ingest_file_once(
    engine: Engine, path: Path, opts: IngestOptions, mapping: dict[str, str], writer: _Writer
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
                    report.counts[outcome.action] += 1
                    if len(report.documents) < MAX_OUTCOMES_PER_FILE:
                        report.documents.append(outcome)
                batch.clear()

            batch: list[SourceDocument] = []
            ids: set[str] = set()
            for item in read_file(path, mapping, opts.max_document_bytes):
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


# A name found in more than this share of the scanned documents (and in at least
# BOILERPLATE_MIN_DOCS of them) is boilerplate, not a citation: a letter whose first line,
# and so its title, is the city's letterhead would otherwise be "cited" by every document
# that names the city, and turn into a hub that drags itself into every graph search.
BOILERPLATE_SHARE = 1 / 3
BOILERPLATE_MIN_DOCS = 10


def _without_boilerplate(edges: list[GraphEdge], scanned: int) -> list[GraphEdge]:
    sources: dict[tuple[str, str], set[str]] = {}
    for e in edges:
        sources.setdefault((e.dst, e.evidence), set()).add(e.src)
    limit = max(BOILERPLATE_MIN_DOCS, scanned * BOILERPLATE_SHARE)
    common = {name for name, srcs in sources.items() if len(srcs) > limit}
    return [e for e in edges if (e.dst, e.evidence) not in common]


def _link_mentions(engine: Engine, changed: list[str], corpus_was_empty: bool) -> int:
    """Add `cites` edges for documents whose text names another document.

    New or changed documents are matched against every name; older documents only against
    the names of the new ones (skipped on a first load, where there are none).
    """
    if not changed:
        return 0
    finder, new_names = MentionFinder(), MentionFinder()
    changed_set = set(changed)
    with engine.connect() as conn:
        for doc_id, title, meta in conn.execute(
            sa.select(Document.doc_id, Document.title, Document.metadata_)
        ):
            aliases = (meta or {}).get("aliases") or []
            names = document_names(doc_id, title, aliases if isinstance(aliases, list) else [])
            finder.add(doc_id, names)
            if doc_id in changed_set:
                new_names.add(doc_id, names)
    edges: list[GraphEdge] = []

    def scan(ids: list[str] | None, names: MentionFinder) -> None:
        found: list[GraphEdge] = []
        scanned = 0
        with engine.connect() as conn:
            stmt = sa.select(Document.doc_id, Document.text).execution_options(yield_per=200)
            if ids is not None:
                for i in range(0, len(ids), 500):
                    part = ids[i : i + 500]
                    for doc_id, text in conn.execute(stmt.where(Document.doc_id.in_(part))):
                        scanned += 1
                        found.extend(
                            GraphEdge(doc_id, t, "cites", "mention", w)
                            for t, w in names.find(text, doc_id).items()
                        )
            else:
                for doc_id, text in conn.execute(stmt):
                    if doc_id not in changed_set:
                        scanned += 1
                        found.extend(
                            GraphEdge(doc_id, t, "cites", "mention", w)
                            for t, w in names.find(text, doc_id).items()
                        )
        edges.extend(_without_boilerplate(found, scanned))

    scan(changed, finder)
    if not corpus_was_empty:
        scan(None, new_names)
    if edges:

        def write() -> None:
            with write_transaction(engine, what="linking references") as conn:
                RelationalGraphStore(engine).add_edges(edges, conn=conn)

        retry_on_lock(write, what="linking references")
    return len(edges)


def _chunker(settings: Settings, opts: IngestOptions) -> Chunker:
    return Chunker(load_tokenizer(model_location(settings)), opts.chunk_tokens, opts.chunk_overlap)


def ingest_paths(
    engine: Engine,
    actor: Principal,
    paths: Iterable[str | Path],
    options: IngestOptions | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest files and folders; returns the per-file report (never raises for bad files)."""
    opts = options or IngestOptions()
    settings = settings or get_settings()
    paths = [str(p) for p in paths]
    with _audited_ingest(engine, actor, "corpus.ingest", ", ".join(paths)[:255]) as audit:
        require(actor, "corpus:ingest")
        try:
            mapping = parse_mapping(opts.mapping)
        except ValueError as err:
            raise IngestError(str(err)) from None
        try:
            files = collect_files(paths, opts.globs, opts.exclude)
        except FileNotFoundError as err:
            raise IngestError(str(err)) from None
        report = _run_ingest(engine, settings, files, opts, mapping, progress)
        audit.report = report
    if opts.embed and report.pending_embeddings:
        report.embedded = embed_pending(engine, actor, settings, progress=progress)
        report.pending_embeddings = pending_count(engine, actor)
    return report


def ingest_server_folder(
    engine: Engine,
    actor: Principal,
    folder: str | Path,
    options: IngestOptions | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest a folder on the server (a web user naming server paths needs admin rights)."""
    require(actor, "corpus:ingest_server_path")
    return ingest_paths(engine, actor, [folder], options, settings, progress)


@dataclass
class _IngestAudit:
    target: str
    report: IngestReport | None = None


# How many failed files the audit row names one by one.
AUDIT_MAX_FILES = 50


def ingest_outcome(report: IngestReport) -> str:
    """The audit outcome of an ingest: ok, partial (some file failed or lost rows) or
    failed (every file failed)."""
    if report.ok:
        return "ok"
    if report.files and all(f.status == "failed" for f in report.files):
        return "failed"
    return "partial"


def ingest_audit_detail(report: IngestReport) -> dict[str, Any]:
    """The summary plus every file that did not ingest whole, with its first problem."""
    bad = report.failed_files
    return {
        **report.summary(),
        "problem_files": [
            {"path": f.path, "status": f.status, "problem": (f.problems or [""])[0][:300]}
            for f in bad[:AUDIT_MAX_FILES]
        ],
        "problem_files_left_out": max(0, len(bad) - AUDIT_MAX_FILES),
    }


@contextmanager
def _audited_ingest(
    engine: Engine, actor: Principal, action: str, target: str
) -> Iterator[_IngestAudit]:
    """Like core.audit.audited, but an ingest that returns with failed files is recorded as
    "partial" or "failed" (naming the files), never as "ok". The row is written with the
    same lock retries as every other write."""
    from core.audit import record
    from core.auth import PermissionDenied

    ctx = _IngestAudit(target=target)

    def write(outcome: str, detail: dict[str, Any]) -> None:
        retry_on_lock(
            lambda: record(engine, actor.username, action, ctx.target, outcome, detail),
            what="audit",
        )

    try:
        yield ctx
    except PermissionDenied as err:
        write("denied", {"permission": err.permission})
        raise
    except Exception as err:
        write("failed", {"error": str(err)[:500]})
        raise
    if ctx.report is None:
        write("ok", {})
    else:
        write(ingest_outcome(ctx.report), ingest_audit_detail(ctx.report))


class IngestError(Exception):
    """The request itself is invalid (bad mapping, path missing); nothing was ingested."""


def _run_ingest(
    engine: Engine,
    settings: Settings,
    files: list[Path],
    opts: IngestOptions,
    mapping: dict[str, str],
    progress: Progress | None,
    display_names: dict[Path, str] | None = None,
) -> IngestReport:
    started = time.perf_counter()
    writer = _Writer(opts, _chunker(settings, opts))
    with engine.connect() as conn:
        was_empty = not conn.execute(sa.select(sa.func.count()).select_from(Document)).scalar()
    report = IngestReport()
    for i, path in enumerate(files):
        if progress:
            progress("files", i, len(files), path.name)
        fr = _ingest_file(engine, path, opts, mapping, writer)
        if display_names and path in display_names:
            fr.path = display_names[path]
        report.files.append(fr)
    if progress:
        progress("files", len(files), len(files), "linking references")
    _link_mentions(engine, writer.changed, was_empty)
    if writer.stale_vectors:
        get_vector_store(settings).delete_documents(sorted(writer.stale_vectors))
    _mirror_graph(engine, settings, writer.changed, report)
    with engine.connect() as conn:
        report.pending_embeddings = conn.execute(
            sa.select(sa.func.count()).select_from(Chunk).where(Chunk.embedded.is_(False))
        ).scalar_one()
    report.seconds = time.perf_counter() - started
    return report


def _mirror_graph(
    engine: Engine, settings: Settings, changed: list[str], report: IngestReport
) -> None:
    _rel, neo = get_graph_stores(engine, settings)
    if neo is None or not changed:
        return
    rel = RelationalGraphStore(engine)
    try:
        neo.ensure_documents(changed)
        with engine.connect() as conn:
            for i in range(0, len(changed), 500):
                part = changed[i : i + 500]
                rows = conn.execute(
                    sa.select(Edge.src, Edge.dst, Edge.type, Edge.origin, Edge.evidence).where(
                        Edge.src.in_(part)
                    )
                ).all()
                by_src: dict[str, list[GraphEdge]] = {d: [] for d in part}
                for r in rows:
                    by_src[r[0]].append(GraphEdge(*r))
                for src, edges in by_src.items():
                    neo.replace_edges(src, edges)
        # Incoming mention edges of older documents changed too.
        neo.add_edges([e for d in changed for e in rel.edges_of(d)])
    except Exception as err:  # noqa: BLE001 - the relational edges remain the record
        report.files.append(
            FileReport(path="(neo4j)", status="partial", problems=[f"graph mirror failed: {err}"])
        )


def ingest_uploads(
    engine: Engine,
    actor: Principal,
    uploads: list[tuple[str, bytes]],
    options: IngestOptions | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest uploaded files (name, content); they are kept under the data dir's uploads/."""
    opts = options or IngestOptions()
    settings = settings or get_settings()
    with _audited_ingest(
        engine, actor, "corpus.ingest_upload", ", ".join(n for n, _ in uploads)[:255]
    ) as audit:
        require(actor, "corpus:ingest")
        mapping = parse_mapping(opts.mapping)
        folder = (
            settings.data_path / "uploads" / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        )
        folder.mkdir(parents=True, exist_ok=True)
        files, names = [], {}
        for name, data in uploads:
            safe = Path(name).name or "upload"
            target = folder / safe
            target.write_bytes(data)
            files.append(target)
            names[target] = safe
        report = _run_ingest(engine, settings, files, opts, mapping, progress, names)
        audit.report = report
    if opts.embed and report.pending_embeddings:
        report.embedded = embed_pending(engine, actor, settings, progress=progress)
        report.pending_embeddings = pending_count(engine, actor)
    return report


# Embeddings -------------------------------------------------------------------------------

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


def _pending_batches(engine: Engine, batch_size: int) -> Iterator[list[Any]]:
    last_id = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
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
                .where(Chunk.embedded.is_(False), Chunk.id > last_id)
                .order_by(Chunk.id)
                .limit(batch_size)
            ).all()
        if not rows:
            return
        last_id = rows[-1][0]
        yield rows


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
    from concurrent.futures import ThreadPoolExecutor

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
            vectors = embedder.encode([r[3] for r in rows])
            ids = [str(r[0]) for r in rows]
            metas = [chunk_metadata(r[1], r[2], r[4], r[5], r[6], r[7]) for r in rows]
            store.upsert(ids, vectors, metas)
            chunk_ids = [r[0] for r in rows]

            def mark(chunk_ids: list[int] = chunk_ids) -> None:
                with write_transaction(engine, what="embedding writer") as conn:
                    conn.execute(
                        sa.update(Chunk).where(Chunk.id.in_(chunk_ids)).values(embedded=True)
                    )

            retry_on_lock(mark, what="embedding writer")
            done += len(rows)
            if progress:
                progress("embedding", done, total, "")
    return done


class BackgroundEmbedding:
    """One daemon thread per process that embeds pending chunks (started by the page)."""

    _thread: threading.Thread | None = None
    _error: str | None = None
    _guard = threading.Lock()

    @classmethod
    def start(cls, engine: Engine, actor: Principal, settings: Settings) -> bool:
        require(actor, "corpus:ingest")
        with cls._guard:
            if cls._thread is not None and cls._thread.is_alive():
                return False
            cls._error = None

            def run() -> None:
                try:
                    embed_pending(engine, actor, settings)
                except Exception as err:  # noqa: BLE001 - surfaced via last_error()
                    log.exception("background embedding failed")
                    cls._error = str(err)

            cls._thread = threading.Thread(target=run, name="clara-embed", daemon=True)
            cls._thread.start()
            return True

    @classmethod
    def running(cls) -> bool:
        return cls._thread is not None and cls._thread.is_alive()

    @classmethod
    def last_error(cls) -> str | None:
        return cls._error


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
                conn.execute(sa.delete(Chunk).where(Chunk.doc_id == doc_id))
                conn.execute(sa.delete(DocumentRevision).where(DocumentRevision.doc_id == doc_id))
                conn.execute(sa.delete(Document).where(Document.id == pk))

        retry_on_lock(remove, what="delete")
        get_vector_store(settings).delete_documents([doc_id])
        _rel, neo = get_graph_stores(engine, settings)
        if neo is not None:
            neo.delete_document(doc_id)
