"""`clara admin migrate`: move a workbench from its embedded stores to PostgreSQL and a Chroma
server, and prove that the copy reads back as the original.

The database. The target's schema is made by the migrations (never `create_all`); then every
table the migrations made is copied with its ids, in foreign-key order and in batches (COPY),
and the serial sequences are set past the copied ids. All of it is ONE transaction on the
target: a refusal, an error or a checksum that differs rolls everything back, so the target
is left as it was found. The keyword index (`corpus_terms`, `corpus_term_docs`) is copied like
any other table: its rows are the index, so the copy is exact by construction, and COPY of
the postings is much faster than stemming every document again. The audit log is copied as
it is, ids and times included (its triggers refuse UPDATE and DELETE, not INSERT).

The source is read through a connection that SQLite itself opens read-only (`mode=ro`), in one
snapshot: writes made after the snapshot are not copied, so stop the workbench first. After a
move of the database the source file is byte for byte what it was (it stays a way back). The
only rows ever added to it are audit rows: of an attempt that moved nothing (denied, refused
or failed), and of a move of the vectors alone.

Verification, per table: the row count and a sha256 over a canonical serialisation of every
row ordered by primary key (strings in byte order on both engines), computed by the same code
on both sides from what each engine gives back: datetimes as UTC ISO text to the microsecond,
JSON as its parsed value with sorted keys (an SQL NULL is not a JSON null), bytes in hex,
floats exactly as stored.

`force`. Without it the target database must hold no tables at all, and each target
collection must be missing or empty. With it the target may hold things, on one condition:
nothing in it has to be changed or removed. Tables and collections that are not ours are left
alone; ours must be at the source's schema revision and may only hold rows (vectors) that
are identical to the source's under the same key: those are kept, the rest is added, and the
result must then equal the source. So `force` fills a schema made beforehand (`clara db
upgrade`) and continues an interrupted vector copy; it never adds anything twice and never
deletes anything. Anything else is refused before a row or vector is written.

Vectors. Every collection of the embedded Chroma store is copied to the server: its
configuration and metadata (which embedding filled it), then ids, embeddings, documents and
metadatas in batches. Verification: the counts, the same ids, a sha256 over ids + documents +
metadatas computed the same way on both sides, and every embedding compared with its
source. Embeddings cannot be checksummed exactly: a collection in cosine space normalises each
vector as it stores it, and float32 rounding leaves the stored vector a few units in the last
place from the one sent (7.5e-9 measured on unit vectors, on the embedded store and the server
alike); a comparison within VECTOR_TOLERANCE finds any vector that is not the same one.

Audit. Only an admin (`system:maintain`). A move of the database is recorded in the target's
audit log, in the copy's own transaction: the last row of the copied history says how the new
store came to be. A move of the vectors alone is recorded in the workbench's own log.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import make_url

from core.audit import record
from core.config import Settings, mask_url
from core.db.base import UTCDateTime
from core.db.engine import create_engine_for
from core.db.migrate import connection_revision, head_revision, upgrade_connection
from core.db.models import AuditEntry
from core.errors import ClaraError
from core.permissions import PermissionDenied, Principal, require

ACTION = "system.migrate"
PERMISSION = "system:maintain"
BATCH_ROWS = 5000
BATCH_VECTORS = 1000
# Far above the rounding of a re-normalised float32 unit vector (~1e-8), far below any
# difference between two real embeddings.
VECTOR_TOLERANCE = 1e-6

# progress(stage, done, total): stage is a table name or "vectors NAME".
Progress = Callable[[str, int, int | None], None]


class MigrationRefused(ClaraError):
    """The move cannot be done as asked; nothing was written to the target."""


class MigrationMismatch(ClaraError):
    """The copy does not read back as the source did (`report` says where); the target
    database was rolled back, vectors sent to the server stay there."""

    def __init__(self, report: MigrationReport) -> None:
        self.report = report
        bad = [t.table for t in report.tables if not t.ok]
        bad += [f"vectors {c.name}" for c in report.collections if not c.ok]
        message = f"the copy differs from the source in {', '.join(bad)}"
        if report.tables:
            message += "; the target database was rolled back"
        if report.collections:
            message += "; the vectors sent to the Chroma server stay there"
        super().__init__(message)


@dataclass
class TableCheck:
    table: str
    source_rows: int
    target_rows: int
    added: int  # the rest was there already, identical (rows the migrations insert)
    source_sha256: str
    target_sha256: str
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ok = (self.source_rows, self.source_sha256) == (self.target_rows, self.target_sha256)


@dataclass
class CollectionCheck:
    name: str
    source_count: int
    target_count: int
    added: int
    source_sha256: str  # over ids, documents and metadatas
    target_sha256: str
    max_embedding_difference: float
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        same = (self.source_count, self.source_sha256) == (self.target_count, self.target_sha256)
        self.ok = same and self.max_embedding_difference <= VECTOR_TOLERANCE


@dataclass
class MigrationReport:
    database_url: str | None  # password masked
    chroma_url: str | None
    revision: str | None
    force: bool
    tables: list[TableCheck]
    collections: list[CollectionCheck]
    seconds: float
    # What to set for the workbench to use the new stores (the password masked).
    set_afterwards: dict[str, str]
    # The move's own row in the target's audit log (after the copied ones).
    audit_id: int | None = None
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ok = all(t.ok for t in self.tables) and all(c.ok for c in self.collections)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def migrate_store(
    engine: Engine,
    actor: Principal,
    settings: Settings,
    *,
    to: str | None = None,
    chroma_to: str | None = None,
    force: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copy the workbench's SQLite database to the PostgreSQL database `to` and/or its
    embedded vectors to the Chroma server `chroma_to`, verified (see the module doc)."""
    move = _Move(actor, to, chroma_to, force, batch_rows, progress or (lambda *_: None))
    with _failures_recorded(engine, move):
        require(actor, PERMISSION)
        if not (to or chroma_to):
            raise MigrationRefused("name a target: a PostgreSQL URL, a Chroma server or both")
        vectors = _VectorMove.prepare(settings, chroma_to, move) if chroma_to else None
        if to:
            return _move_database(settings, _target_url(to), move, vectors)
        vectors.run()
        report = _verified(move, [], vectors)
        record(engine, actor.username, ACTION, chroma_to, "ok", move.detail(report))
        return report


@dataclass
class _Move:
    """What one run moves and how, shared by its steps."""

    actor: Principal
    to: str | None
    chroma_to: str | None
    force: bool
    batch_rows: int
    progress: Progress
    revision: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def database_url(self) -> str | None:
        return mask_url(self.to) if self.to else None

    @property
    def target(self) -> str:
        return self.database_url or self.chroma_to or ""

    def detail(self, report: MigrationReport | None = None) -> dict[str, Any]:
        """The audit row's detail: what was asked, and with a report what was moved."""
        asked = {"to": self.database_url, "chroma_to": self.chroma_to, "force": self.force}
        if report is None:
            return asked
        return {
            **asked,
            "revision": report.revision,
            "tables": len(report.tables),
            "rows": sum(t.target_rows for t in report.tables),
            "vectors": sum(c.target_count for c in report.collections),
        }


@contextmanager
def _failures_recorded(engine: Engine, move: _Move) -> Iterator[None]:
    """Denied, refused and failed attempts go to the workbench's own audit log (the target
    database is as it was); a success is recorded by the move itself (see migrate_store)."""
    actor = move.actor.username
    try:
        yield
    except PermissionDenied:
        extra = {"permission": PERMISSION}
        record(engine, actor, ACTION, move.target, "denied", {**move.detail(), **extra})
        raise
    except Exception as err:
        extra = {"error": str(err)[:500]}
        record(engine, actor, ACTION, move.target, "failed", {**move.detail(), **extra})
        raise


def _verified(
    move: _Move, tables: list[TableCheck], vectors: _VectorMove | None
) -> MigrationReport:
    """The report, or MigrationMismatch when anything reads back differently."""
    wanted = {"CLARA_DATABASE_URL": move.database_url, "CLARA_CHROMA_URL": move.chroma_to}
    report = MigrationReport(
        database_url=move.database_url,
        chroma_url=move.chroma_to,
        revision=move.revision,
        force=move.force,
        tables=tables,
        collections=vectors.checks if vectors else [],
        seconds=round(time.monotonic() - move.started, 2),
        set_afterwards={k: v for k, v in wanted.items() if v},
    )
    if not report.ok:
        raise MigrationMismatch(report)
    return report


# The database ----------------------------------------------------------------------------


def _source_path(settings: Settings) -> Path:
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise MigrationRefused(
            f"the workbench's database is {mask_url(settings.effective_database_url)}: only "
            "the embedded SQLite database is moved"
        )
    path = Path(url.database).expanduser().resolve()
    if not path.is_file():
        raise MigrationRefused(f"there is no SQLite database at {path}")
    return path


def _target_url(to: str) -> str:
    if to.startswith(("postgresql://", "postgres://")):
        to = "postgresql+psycopg://" + to.split("://", 1)[1]  # the project's one driver
    if not to.startswith("postgresql+psycopg://"):
        raise MigrationRefused(f"{mask_url(to)} is not a postgresql+psycopg:// URL")
    return to


def _read_only(path: Path) -> Engine:
    """The source, opened read-only by SQLite itself: whatever a bug here tried, SQLite
    would refuse to write. Reads happen in one transaction, so they see one snapshot."""

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            f"{path.as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,  # BEGIN is ours (below), as in core.db.engine
            check_same_thread=False,
            timeout=30,
        )

    engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    return engine


def _move_database(
    settings: Settings, to: str, move: _Move, vectors: _VectorMove | None
) -> MigrationReport:
    """Everything on the target in one transaction, committed only when every table and
    the vectors (if asked for too) read back as the source."""
    source, target = _read_only(_source_path(settings)), create_engine_for(to)
    try:
        with _said_by_target(f"connecting to {move.database_url}"):
            target.connect().close()
        with source.connect() as src, target.begin() as dst:
            move.revision = _source_revision(src)
            _check_target(dst, move)
            with _said_by_target("making the schema"):
                upgrade_connection(dst)
            tables = _tables(src, dst)
            copied = [_copy_table(src, dst, t, move) for t in tables]
            _set_sequences(dst, tables)
            checks = [_check(dst, c, move.batch_rows) for c in copied]
            if vectors is not None:
                vectors.run()
            report = _verified(move, checks, vectors)
            report.audit_id = _record_move(dst, move, report)
            return report
    finally:
        source.dispose()
        target.dispose()


@contextmanager
def _said_by_target(what: str) -> Iterator[None]:
    """What Postgres refuses (a connection, a table name taken by another application, a NUL
    character that SQLite kept in a text) as one line naming the step; the transaction, if
    one was open, rolls back."""
    import psycopg

    try:
        yield
    except (sa.exc.DBAPIError, psycopg.Error) as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise MigrationRefused(f"{what}: {reason}") from err


def _source_revision(src: Connection) -> str:
    revision, head = connection_revision(src), head_revision()
    if revision != head:
        raise MigrationRefused(
            f"the source database is at schema revision {revision}, not the newest ({head}): "
            "run `clara db upgrade` first"
        )
    return revision


def _check_target(dst: Connection, move: _Move) -> None:
    names = sorted(sa.inspect(dst).get_table_names())
    if not names:
        return
    if not move.force:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise MigrationRefused(
            f"the target database is not empty ({len(names)} tables: {shown}). --force fills "
            "it only where nothing has to change: see `clara admin migrate --help`"
        )
    if "alembic_version" in names and connection_revision(dst) != move.revision:
        raise MigrationRefused(
            f"the target's schema is at revision {connection_revision(dst)}, the source's at "
            f"{move.revision}: even --force fills only a schema at the same revision"
        )


def _tables(src: Connection, dst: Connection) -> list[sa.Table]:
    """The source's tables, in foreign-key order, typed as the migrations made them on the
    target (so tables added by later migrations need nothing here); refused when the source
    holds a table or column the target lacks (its data would be lost). Other tables of the
    target (--force) are not ours and left alone."""
    made = sa.MetaData()
    made.reflect(bind=dst)
    source = sa.inspect(src)
    found = set(source.get_table_names()) - {"alembic_version"}
    missing = sorted(found - set(made.tables))
    if missing:
        raise MigrationRefused(f"the source has tables the migrations do not make: {missing}")
    tables = []
    for reflected in made.sorted_tables:
        if reflected.name not in found:
            continue
        theirs = {c["name"] for c in source.get_columns(reflected.name)}
        if theirs != set(reflected.columns.keys()):
            raise MigrationRefused(
                f"table {reflected.name}: the source's columns {sorted(theirs)} are not the "
                f"migrated schema's {sorted(reflected.columns.keys())}"
            )
        tables.append(_read_table(reflected))
    return tables


def _read_table(reflected: sa.Table) -> sa.Table:
    """`reflected` with generic types that read the same values from both engines (aware
    UTC datetimes from SQLite's text, booleans from its integers)."""
    columns = [
        sa.Column(c.name, _read_type(reflected.name, c), primary_key=c.primary_key)
        for c in reflected.columns
    ]
    return sa.Table(reflected.name, sa.MetaData(), *columns)


_READ_TYPES: tuple[tuple[type, Callable[[Any], sa.types.TypeEngine]], ...] = (
    (sa.JSON, lambda t: sa.JSON()),
    (sa.DateTime, lambda t: UTCDateTime() if t.timezone else sa.DateTime()),
    (sa.Date, lambda t: sa.Date()),
    (sa.Boolean, lambda t: sa.Boolean()),
    (sa.Float, lambda t: sa.Float()),
    (sa.Integer, lambda t: sa.Integer()),
    (sa.LargeBinary, lambda t: sa.LargeBinary()),
    (sa.String, lambda t: sa.Text()),
)


def _read_type(table: str, column: sa.Column) -> sa.types.TypeEngine:
    for kind, make in _READ_TYPES:
        if isinstance(column.type, kind):
            return make(column.type)
    raise MigrationRefused(f"{table}.{column.name}: no copy rule for the type {column.type}")


def _select(table: sa.Table, dialect: str) -> sa.Select:
    """Every column, JSON as its text (the only way to tell an SQL NULL from a JSON null on
    both engines), ordered by primary key with strings in byte order (Postgres sorts by the
    database's collation otherwise; SQLite compares bytes)."""
    columns = [
        sa.cast(c, sa.Text).label(c.name) if isinstance(c.type, sa.JSON) else c
        for c in table.columns
    ]
    order = [
        c.collate("C") if dialect == "postgresql" and isinstance(c.type, sa.String) else c
        for c in table.primary_key.columns
    ]
    return sa.select(*columns).order_by(*order)


def _batches(conn: Connection, table: sa.Table, size: int) -> Iterator[Sequence[sa.Row]]:
    # On the statement: a Connection's own execution_options would stay for what follows.
    statement = _select(table, conn.dialect.name).execution_options(yield_per=size)
    yield from conn.execute(statement).partitions()


def _canonical(row: sa.Row, table: sa.Table) -> bytes:
    values = [_canonical_value(v, c) for v, c in zip(row, table.columns, strict=True)]
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _canonical_value(value: Any, column: sa.Column) -> Any:
    if value is None:
        return None
    if isinstance(column.type, sa.JSON):
        parsed = json.loads(value)
        return json.dumps(parsed, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value  # str, int, bool, float: JSON writes each exactly (floats by repr)


def _digest(conn: Connection, table: sa.Table, batch_rows: int) -> tuple[int, str]:
    """(rows, sha256 over their canonical lines in primary-key order)."""
    digest, rows = hashlib.sha256(), 0
    for batch in _batches(conn, table, batch_rows):
        for row in batch:
            digest.update(_canonical(row, table))
        rows += len(batch)
    return rows, digest.hexdigest()


def _key(row: sa.Row, table: sa.Table) -> tuple:
    return tuple(row._mapping[c.name] for c in table.primary_key.columns)


def _present(dst: Connection, table: sa.Table, batch_rows: int) -> dict[tuple, bytes]:
    """The rows the target already holds (after the migrations: their own rows, e.g. the
    roles; with --force whatever was there), by key."""
    if not dst.execute(sa.select(sa.func.count()).select_from(table)).scalar():
        return {}
    return {
        _key(row, table): _canonical(row, table)
        for batch in _batches(dst, table, batch_rows)
        for row in batch
    }


@dataclass(frozen=True)
class _Copied:
    table: sa.Table
    rows: int
    added: int
    sha256: str


def _check(dst: Connection, copied: _Copied, batch_rows: int) -> TableCheck:
    """The target's table read back the way the source's was read while copying."""
    rows, sha256 = _digest(dst, copied.table, batch_rows)
    return TableCheck(
        table=copied.table.name,
        source_rows=copied.rows,
        target_rows=rows,
        added=copied.added,
        source_sha256=copied.sha256,
        target_sha256=sha256,
    )


def _copy_table(src: Connection, dst: Connection, table: sa.Table, move: _Move) -> _Copied:
    """Copy the rows the target lacks, hashing every source row on the way. A target row
    that differs from the source's, or is not in the source, refuses the whole move."""
    present = _present(dst, table, move.batch_rows)
    total = src.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    digest, done, added = hashlib.sha256(), 0, 0
    for batch in _batches(src, table, move.batch_rows):
        fresh = []
        for row in batch:
            line = _canonical(row, table)
            digest.update(line)
            there = present.pop(_key(row, table), None)
            if there is None:
                fresh.append(row)
            elif there != line:
                raise MigrationRefused(
                    f"table {table.name}: the target's row {_key(row, table)} differs from the "
                    "source's; nothing was changed"
                )
        with _said_by_target(f"copying table {table.name}"):
            _copy_rows(dst, table, fresh)
        done, added = done + len(batch), added + len(fresh)
        move.progress(table.name, done, total)
    if present:
        raise MigrationRefused(
            f"table {table.name}: the target holds {len(present)} row(s) that are not in the "
            "source; nothing was changed"
        )
    return _Copied(table, total, added, digest.hexdigest())


def _copy_rows(dst: Connection, table: sa.Table, rows: list[sa.Row]) -> None:
    """COPY, as the keyword index does: per-row INSERT parameters cost more than the rows.
    Values go as read (JSON as its text), which Postgres parses into the column's type."""
    if not rows:
        return
    names = ", ".join(dst.dialect.identifier_preparer.quote(c.name) for c in table.columns)
    cursor = dst.connection.dbapi_connection.cursor()
    try:
        with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    finally:
        cursor.close()


def _set_sequences(dst: Connection, tables: list[sa.Table]) -> None:
    """Serial ids continue after the copied ones (COPY does not advance a sequence)."""
    for table in tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, sa.Integer):
            continue
        quoted = dst.dialect.identifier_preparer.quote(table.name)
        sequence = dst.execute(sa.select(sa.func.pg_get_serial_sequence(quoted, pk[0].name)))
        name = sequence.scalar()
        if name:
            top = dst.execute(sa.select(sa.func.max(pk[0]))).scalar() or 0
            dst.execute(sa.select(sa.func.setval(name, top + 1, False)))


def _record_move(dst: Connection, move: _Move, report: MigrationReport) -> int:
    """The move's own audit row, the first with an id from the moved sequence."""
    log = AuditEntry.__table__
    row = log.insert().values(
        actor=move.actor.username,
        action=ACTION,
        target=move.target[:255],
        outcome="ok",
        detail=move.detail(report),
    )
    return dst.execute(row.returning(log.c.id)).scalar_one()


# The vectors -----------------------------------------------------------------------------


@dataclass
class _VectorMove:
    """The embedded store's collections to the server: checked before anything is written
    (`prepare`), then copied and verified (`run`)."""

    source: Any  # chromadb clients
    target: Any
    move: _Move
    checks: list[CollectionCheck] = field(default_factory=list)

    @classmethod
    def prepare(cls, settings: Settings, url: str, move: _Move) -> _VectorMove:
        from core.corpus.vectors import embedded_client, server_client

        if settings.chroma_url:
            raise MigrationRefused(
                f"the workbench already uses the Chroma server {settings.chroma_url}"
            )
        if not url.startswith(("http://", "https://")):
            raise MigrationRefused(f"{url} is not an http:// or https:// Chroma server URL")
        try:
            target = server_client(url)
        except ValueError as err:  # chromadb's way of saying "no server there"
            raise MigrationRefused(f"{url}: {err}") from None
        path = settings.effective_chroma_path
        # No folder: nothing was ever embedded (a client would create one).
        vectors = cls(embedded_client(path) if path.is_dir() else None, target, move)
        for collection in vectors._collections():
            vectors._check(collection)
        return vectors

    @property
    def batch(self) -> int:
        return min(BATCH_VECTORS, self.target.get_max_batch_size())

    def _collections(self) -> list[Any]:
        if self.source is None:
            return []
        names = sorted(c.name for c in self.source.list_collections())
        return [self.source.get_collection(n, embedding_function=None) for n in names]

    def _existing(self, name: str) -> Any | None:
        if name not in {c.name for c in self.target.list_collections()}:
            return None
        return self.target.get_collection(name, embedding_function=None)

    def _check(self, source: Any) -> None:
        """Refuse a target collection that the copy would have to change."""
        target = self._existing(source.name)
        if target is None:
            return
        name = f"the server's collection {source.name!r}"
        if _space(target) != _space(source):
            raise MigrationRefused(f"{name} uses the {_space(target)} space, not {_space(source)}")
        ours, theirs = _embedding(source), _embedding(target)
        if theirs and theirs != ours:
            raise MigrationRefused(f"{name} holds embeddings of {theirs}, the source of {ours}")
        if not target.count():
            return
        if not self.move.force:
            raise MigrationRefused(
                f"{name} holds {target.count()} vectors. --force adds only what is missing, "
                "where every vector it holds is the source's"
            )
        ids, there = set(_ids(source)), _ids(target)
        if extra := [i for i in there if i not in ids]:
            raise MigrationRefused(f"{name} holds {len(extra)} vectors that are not the source's")
        if _differing(source, target, sorted(there), self.batch):
            raise MigrationRefused(f"{name} holds vectors that differ from the source's")

    def run(self) -> None:
        for source in self._collections():
            self.checks.append(self._copy(source))

    def _copy(self, source: Any) -> CollectionCheck:
        target = self._existing(source.name) or self.target.create_collection(
            source.name,
            metadata=source.metadata or None,
            configuration=_configuration(source),
            embedding_function=None,
        )
        if source.metadata and not _embedding(target):
            target.modify(metadata={**(target.metadata or {}), **source.metadata})
        ids = sorted(_ids(source))
        there = set(_ids(target))
        missing = [i for i in ids if i not in there]
        stage = f"vectors {source.name}"
        for done, part in enumerate(_chunks(missing, self.batch), 1):
            records = list(_records(source, part, self.batch))
            target.add(
                ids=[r.id for r in records],
                embeddings=[r.embedding for r in records],
                documents=[r.document for r in records],
                metadatas=[r.metadata for r in records],
            )
            self.move.progress(stage, min(done * self.batch, len(missing)), len(missing))
        return _verify(source, target, ids, len(missing), self.batch)


def _space(collection: Any) -> str:
    return ((collection.configuration or {}).get("hnsw") or {}).get("space", "l2")


def _embedding(collection: Any) -> str | None:
    from core.corpus.vectors import EMBEDDING_KEY

    return (collection.metadata or {}).get(EMBEDDING_KEY)


def _configuration(collection: Any) -> dict[str, Any] | None:
    """The index settings the server can take (the embedding function is ours: none)."""
    conf = collection.configuration or {}
    kept = {k: conf[k] for k in ("hnsw", "spann") if conf.get(k)}
    return kept or None


def _ids(collection: Any) -> list[str]:
    ids: list[str] = []
    while page := collection.get(include=[], limit=BATCH_VECTORS * 10, offset=len(ids))["ids"]:
        ids += page
    return ids


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class _Record:
    id: str
    embedding: Any  # numpy float32 vector
    document: str | None
    metadata: dict[str, Any] | None

    def line(self) -> bytes:
        fields = [self.id, self.document, self.metadata]
        return json.dumps(fields, ensure_ascii=False, sort_keys=True).encode() + b"\n"


def _records(collection: Any, ids: list[str], batch: int) -> Iterator[_Record]:
    """The records of `ids`, in that order (Chroma answers in its own)."""
    import numpy as np

    for part in _chunks(ids, batch):
        got = collection.get(ids=part, include=["embeddings", "documents", "metadatas"])
        found = {
            i: _Record(i, np.asarray(e, dtype=np.float32), d, m)
            for i, e, d, m in zip(
                got["ids"], got["embeddings"], got["documents"], got["metadatas"], strict=True
            )
        }
        for i in part:
            yield found[i]


def _distance(a: _Record, b: _Record) -> float:
    import numpy as np

    if a.embedding.shape != b.embedding.shape:
        return math.inf
    return float(np.max(np.abs(a.embedding - b.embedding), initial=0.0))


def _differing(source: Any, target: Any, ids: list[str], batch: int) -> bool:
    pairs = zip(_records(source, ids, batch), _records(target, ids, batch), strict=True)
    return any(a.line() != b.line() or _distance(a, b) > VECTOR_TOLERANCE for a, b in pairs)


def _verify(source: Any, target: Any, ids: list[str], added: int, batch: int) -> CollectionCheck:
    """Counts, the sha256 of each side over its own sorted ids, and the largest difference
    between an embedding and its source."""
    there = sorted(_ids(target))
    if there != ids:  # each side's digest over what it holds shows how they differ
        return CollectionCheck(
            source.name, len(ids), len(there), added,
            _records_digest(source, ids, batch), _records_digest(target, there, batch), math.inf,
        )  # fmt: skip
    ours, theirs, worst = hashlib.sha256(), hashlib.sha256(), 0.0
    for a, b in zip(_records(source, ids, batch), _records(target, ids, batch), strict=True):
        ours.update(a.line())
        theirs.update(b.line())
        worst = max(worst, _distance(a, b))
    return CollectionCheck(
        source.name, len(ids), len(there), added, ours.hexdigest(), theirs.hexdigest(), worst
    )


def _records_digest(collection: Any, ids: list[str], batch: int) -> str:
    digest = hashlib.sha256()
    for r in _records(collection, ids, batch):
        digest.update(r.line())
    return digest.hexdigest()
