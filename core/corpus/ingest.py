"""Ingestion: files → documents, revisions, chunks, keyword index and graph edges; then
embeddings in batches.

Each file is written in one transaction (`core.corpus.store_writes`), so a file that fails
leaves nothing behind; readers report bad rows of tabular files per line while the good rows
ingest. Documents are searchable by keyword as soon as their file commits; after the files,
the links they declare are matched to documents (those that match none wait for their
target) and mentions are linked (`core.corpus.linking`). Their chunks are marked pending:
`embed=True` embeds them here (`embed_pending`); otherwise the caller queues an "embed" job
(`core.corpus.embedding.start_embedding`, as `clara corpus ingest` and the page do) or
leaves them for `clara corpus embed`. The outcome is an `IngestReport`
(`core.corpus.ingest_report`), recorded in the audit log as ok, partial or failed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from core.config import Settings, get_settings
from core.corpus.chunking import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_TOKENS,
    Chunker,
    load_tokenizer,
)
from core.corpus.embedders import model_location
from core.corpus.embedding import embed_pending, pending_count
from core.corpus.files import collect_files
from core.corpus.ingest_report import (
    FileReport,
    IngestReport,
    Progress,
    ingest_audit_detail,
    ingest_outcome,
)
from core.corpus.link_keys import check_link_key
from core.corpus.linking import link_mentions, mirror_to_neo4j, resolve_links
from core.corpus.models import Chunk, Document
from core.corpus.readers import MAX_DOCUMENT_BYTES, parse_mapping
from core.corpus.store_writes import DocumentWriter, write_file
from core.corpus.vectors import get_vector_store
from core.db.engine import retry_on_lock
from core.errors import ClaraError
from core.permissions import Principal, require

log = logging.getLogger(__name__)
logging.getLogger("pypdf").setLevel(logging.ERROR)


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
    # How declared links are matched to documents: auto | id | filename | title | alias.
    link_key: str = "auto"


class IngestError(ClaraError):
    """The request itself is invalid (bad mapping, path missing); nothing was ingested."""


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
            opts.link_key = check_link_key(opts.link_key)
        except ValueError as err:
            raise IngestError(str(err)) from None
        try:
            files = collect_files(paths, opts.globs, opts.exclude)
        except FileNotFoundError as err:
            raise IngestError(str(err)) from None
        report = _run_ingest(engine, settings, files, opts, mapping, progress)
        audit.report = report
    return _embed_unless_deferred(engine, actor, settings, opts, report, progress)


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
        try:
            mapping = parse_mapping(opts.mapping)
            opts.link_key = check_link_key(opts.link_key)
        except ValueError as err:
            raise IngestError(str(err)) from None
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
    return _embed_unless_deferred(engine, actor, settings, opts, report, progress)


def _embed_unless_deferred(
    engine: Engine,
    actor: Principal,
    settings: Settings,
    opts: IngestOptions,
    report: IngestReport,
    progress: Progress | None,
) -> IngestReport:
    """Embed the pending chunks now, unless the options leave them to later (`embed=False`:
    the page's background thread, `clara corpus embed`)."""
    if opts.embed and report.pending_embeddings:
        report.embedded = embed_pending(engine, actor, settings, progress=progress)
        report.pending_embeddings = pending_count(engine, actor)
    return report


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
    writer = DocumentWriter(
        _chunker(settings, opts),
        document_type=opts.document_type,
        domain=opts.domain,
        language=opts.language,
        link_key=opts.link_key,
    )
    with engine.connect() as conn:
        was_empty = not conn.execute(sa.select(sa.func.count()).select_from(Document)).scalar()
    report = IngestReport()
    for i, path in enumerate(files):
        if progress:
            progress("files", i, len(files), path.name)
        fr = write_file(engine, path, mapping, writer, opts.max_document_bytes)
        if display_names and path in display_names:
            fr.path = display_names[path]
        report.files.append(fr)
    if progress:
        progress("files", len(files), len(files), "linking references")
    report.links, relinked = resolve_links(engine, writer.changed)
    link_mentions(engine, writer.changed, was_empty)
    if writer.stale_vectors:
        get_vector_store(settings).delete_documents(sorted(writer.stale_vectors))
    problem = mirror_to_neo4j(engine, settings, writer.changed + relinked)
    if problem:
        report.files.append(FileReport(path="(neo4j)", status="partial", problems=[problem]))
    with engine.connect() as conn:
        report.pending_embeddings = conn.execute(
            sa.select(sa.func.count()).select_from(Chunk).where(Chunk.embedded.is_(False))
        ).scalar_one()
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class _IngestAudit:
    target: str
    report: IngestReport | None = None


@contextmanager
def _audited_ingest(
    engine: Engine, actor: Principal, action: str, target: str
) -> Iterator[_IngestAudit]:
    """Like core.audit.audited, but an ingest that returns with failed files is recorded as
    "partial" or "failed" (naming the files), never as "ok". The row is written with the
    same lock retries as every other write."""
    from core.audit import record
    from core.permissions import PermissionDenied

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
