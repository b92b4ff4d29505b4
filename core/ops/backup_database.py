"""The database part of a backup: a consistent snapshot of a running workbench, and its load
into an empty database. Engine differences live here (core/ops/backup.py calls no SQL).

SQLite: the online backup API (`sqlite3.Connection.backup`) in one step, so the copy is one
consistent state even while workers write (WAL lets them go on); the copy is switched to a
rollback journal so that it is one self-contained file. Restore puts that file in place.

PostgreSQL: a logical export of the workbench's tables with `COPY ... TO STDOUT (FORMAT
csv, HEADER)` through the driver we already use, all tables inside one REPEATABLE READ, READ
ONLY transaction (one snapshot, as pg_dump takes it). We chose this over pg_dump because:
- pg_dump's output names the schema it came from, and workbenches (and our tests) live in a
  schema chosen by the URL's search_path: restoring into another schema or database would
  mean rewriting the dump;
- pg_dump and pg_restore are separate binaries that must be at least the server's version;
  a workbench host or image need not have them;
- restore builds the schema with our own migrations (up to the backup's revision, then to
  the newest), so triggers, indexes and constraints come from the same source as on every
  other installation, and an older backup is upgraded by the same code as a running one.
Restore runs in one transaction (migrations, TRUNCATE of the rows migrations seed, COPY FROM
of every table in foreign-key order, sequences, upgrade): it commits whole or not at all.

Both: rows that record absolute paths under the old data dir (adapters, dataset versions,
job folders, uploads) are rebased onto the new one; that is the only change restore makes to
a restored row.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, text

from core.db.engine import SQLITE_BUSY_TIMEOUT_MS, write_transaction
from core.db.migrate import MIGRATIONS_DIR, connection_revision, upgrade_connection
from core.errors import ClaraError

SQLITE_FILE = "clara.db"
VERSION_TABLE = "alembic_version"
# Columns that hold a file system path (or a base model, which may be one).
PATH_COLUMN = re.compile(r"^(path|base_model|checkpoint)$|_(path|dir)$")

Progress = Callable[[str, int, int | None, str], None]


class DatabaseBackupError(ClaraError):
    """The database cannot be backed up or restored as asked."""


def engine_kind(engine: Engine) -> str:
    return "sqlite" if engine.dialect.name == "sqlite" else "postgresql"


def sqlite_file(engine: Engine) -> Path:
    return Path(engine.url.database or "").expanduser().resolve()


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


# Snapshot --------------------------------------------------------------------------------


def snapshot(engine: Engine, folder: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Write the database into `folder`; returns the manifest's `database` section."""
    folder.mkdir(parents=True, exist_ok=True)
    if engine_kind(engine) == "sqlite":
        section = _sqlite_snapshot(engine, folder, progress)
    else:
        section = _postgres_snapshot(engine, folder, progress)
    if section["schema_revision"] is None:
        raise DatabaseBackupError(
            "the database holds no workbench schema (`clara db upgrade` makes one): "
            "nothing to back up"
        )
    return section


def _sqlite_snapshot(engine: Engine, folder: Path, progress: Progress | None) -> dict[str, Any]:
    source = sqlite_file(engine)
    if not source.is_file():
        raise DatabaseBackupError(f"the database {source} does not exist: nothing to back up")
    target = folder / SQLITE_FILE
    src = sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    dst = sqlite3.connect(target)
    try:
        # One step (pages=-1): a multi-step backup restarts whenever another process writes,
        # which a busy workbench (heartbeats every few seconds) does all the time.
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        tables = _sqlite_row_counts(dst)
        revision = _sqlite_revision(dst)
    finally:
        dst.close()
        src.close()
    if progress:
        progress("database", 1, 1, SQLITE_FILE)
    return {
        "engine": "sqlite",
        "schema_revision": revision,
        "file": SQLITE_FILE,
        "sqlite_version": sqlite3.sqlite_version,
        "tables": tables,
    }


def _sqlite_row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def _sqlite_revision(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
    except sqlite3.OperationalError:
        return None
    return row[0] if row else None


def _postgres_snapshot(engine: Engine, folder: Path, progress: Progress | None) -> dict[str, Any]:
    tables: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            # The first statement fixes the snapshot every COPY below reads.
            revision = connection_revision(conn)
            server = conn.execute(text("SHOW server_version")).scalar()
            names = _postgres_tables(conn)
            for i, name in enumerate(names):
                columns = [c["name"] for c in sa.inspect(conn).get_columns(name)]
                with (folder / f"{name}.csv").open("wb") as out:
                    rows = _copy_out(conn, name, columns, out)
                tables[name] = {"file": f"{name}.csv", "columns": columns, "rows": rows}
                if progress:
                    progress("database", i + 1, len(names), name)
    return {
        "engine": "postgresql",
        "schema_revision": revision,
        "format": "COPY csv with header, one file per table",
        "server_version": server,
        "tables": tables,
    }


def _postgres_tables(conn: Connection) -> list[str]:
    """Every table in the workbench's schema (the search_path's first), but the revision."""
    return sorted(n for n in sa.inspect(conn).get_table_names() if n != VERSION_TABLE)


def _copy_sql(conn: Connection, table: str, columns: list[str], direction: str) -> str:
    cols = ", ".join(_quote(conn, c) for c in columns)
    return f"COPY {_quote(conn, table)} ({cols}) {direction} WITH (FORMAT csv, HEADER true)"


def _copy_out(conn: Connection, table: str, columns: list[str], out: IO[bytes]) -> int:
    with conn.connection.driver_connection.cursor() as cur:
        with cur.copy(_copy_sql(conn, table, columns, "TO STDOUT")) as copy:
            for block in copy:
                out.write(block)
        return cur.rowcount


def _copy_in(conn: Connection, table: str, columns: list[str], source: IO[bytes]) -> int:
    with conn.connection.driver_connection.cursor() as cur:
        with cur.copy(_copy_sql(conn, table, columns, "FROM STDIN")) as copy:
            while block := source.read(1 << 20):
                copy.write(block)
        return cur.rowcount


# The target ------------------------------------------------------------------------------


def sqlite_in_use(path: Path) -> bool:
    """Whether a SQLite database file holds anything (a 0-byte file holds nothing)."""
    return path.is_file() and path.stat().st_size > 0


def settle_sqlite(path: Path) -> None:
    """Fold the write-ahead log into the file, so that the file alone holds the database
    (it is about to be moved aside)."""
    conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def postgres_tables_present(engine: Engine) -> list[str]:
    """The tables in the target schema: a workbench lives there unless it is empty."""
    with engine.connect() as conn:
        return sorted(sa.inspect(conn).get_table_names())


def _trigger_functions(conn: Connection, tables: list[str]) -> list[str]:
    found: set[str] = set()
    for name in tables:
        found.update(
            conn.execute(
                text(
                    "SELECT t.tgfoid::regprocedure::text FROM pg_trigger t "
                    "WHERE NOT t.tgisinternal AND t.tgrelid = CAST(:t AS regclass)"
                ),
                {"t": _quote(conn, name)},
            ).scalars()
        )
    return sorted(found)


def move_postgres_tables_aside(conn: Connection, schema: str) -> list[str]:
    """Move every table of the target schema (with its indexes, sequences, triggers and the
    functions those triggers call) into a new schema `schema`; nothing is dropped, and
    nothing is made when there are no tables."""
    tables = sorted(sa.inspect(conn).get_table_names())
    if not tables:
        return []
    functions = _trigger_functions(conn, tables)
    conn.execute(text(f"CREATE SCHEMA {_quote(conn, schema)}"))
    for name in tables:
        conn.execute(text(f"ALTER TABLE {_quote(conn, name)} SET SCHEMA {_quote(conn, schema)}"))
    for fn in functions:
        conn.execute(text(f"ALTER FUNCTION {fn} SET SCHEMA {_quote(conn, schema)}"))
    return tables


# Load ------------------------------------------------------------------------------------


def known_revision(revision: str | None) -> bool:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if not revision:
        return False
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        return ScriptDirectory.from_config(cfg).get_revision(revision) is not None
    except CommandError:
        return False


def load_postgres(
    conn: Connection,
    section: dict[str, Any],
    open_table: Callable[[str], Any],
    progress: Progress | None = None,
) -> None:
    """Build the schema at the backup's revision, load every table, upgrade to the newest.

    `open_table(file)` opens a table's CSV from the backup (a reader that checks its sha256
    when closed). Runs inside the caller's transaction."""
    upgrade_connection(conn, section["schema_revision"])
    tables = section["tables"]
    present = set(sa.inspect(conn).get_table_names())
    foreign = sorted(set(tables) - present)
    if foreign:
        raise DatabaseBackupError(
            f"the backup holds tables that revision {section['schema_revision']} does not "
            f"create: {', '.join(foreign)} (not a backup of a workbench's schema?)"
        )
    meta = sa.MetaData()
    meta.reflect(conn, only=list(tables))
    # The rows migrations seed (the roles) come back with the backup's own.
    conn.execute(text("TRUNCATE " + ", ".join(_quote(conn, n) for n in sorted(tables))))
    for i, table in enumerate(meta.sorted_tables):
        info = tables[table.name]
        with open_table(info["file"]) as source:
            rows = _copy_in(conn, table.name, info["columns"], source)
        if rows != info["rows"]:
            raise DatabaseBackupError(
                f"table {table.name}: {rows} rows loaded, the backup lists {info['rows']}"
            )
        _reset_sequences(conn, table)
        if progress:
            progress("database", i + 1, len(tables), table.name)
    upgrade_connection(conn, "head")


def _reset_sequences(conn: Connection, table: sa.Table) -> None:
    """Serial and identity columns continue after the loaded rows."""
    for col in table.columns:
        seq = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"),
            {"t": _quote(conn, table.name), "c": col.name},
        ).scalar()
        if seq:
            conn.execute(
                text(
                    f"SELECT setval(:s, COALESCE((SELECT max({_quote(conn, col.name)}) "
                    f"FROM {_quote(conn, table.name)}), 0) + 1, false)"
                ),
                {"s": seq},
            )


# Paths -----------------------------------------------------------------------------------


def rebase_paths(conn: Connection, old: str, new: str) -> int:
    """Make every path column that names a place under `old` name the same place under
    `new`; returns how many values changed."""
    if old == new:
        return 0
    meta = sa.MetaData()
    meta.reflect(conn)
    changed = 0
    for table in meta.sorted_tables:
        for col in table.columns:
            if PATH_COLUMN.search(col.name) and isinstance(col.type, sa.String):
                changed += _rebase_column(conn, table, col, old, new)
    return changed


def _rebase_column(conn: Connection, table: sa.Table, col: sa.Column, old: str, new: str) -> int:
    prefix = old.rstrip("/") + "/"
    under_old = sa.or_(col == old, sa.func.substr(col, 1, len(prefix)) == prefix)
    if not conn.execute(sa.select(sa.func.count()).select_from(table).where(under_old)).scalar():
        return 0
    value = sa.literal(new, sa.Text) + sa.func.substr(col, len(old) + 1)
    with _triggers_off(conn, table.name):
        return conn.execute(sa.update(table).where(under_old).values({col.name: value})).rowcount


@contextmanager
def _triggers_off(conn: Connection, table: str) -> Iterator[None]:
    """Our own triggers (dataset versions are immutable) refuse any UPDATE; moving a row's
    files is not a change of the version, so they are off for this one statement."""
    if conn.dialect.name == "sqlite":
        triggers = conn.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
            {"t": table},
        ).all()
        for name, _sql in triggers:
            conn.execute(text(f"DROP TRIGGER {_quote(conn, name)}"))
        yield
        for _name, sql in triggers:
            conn.execute(text(sql))
        return
    conn.execute(text(f"ALTER TABLE {_quote(conn, table)} DISABLE TRIGGER USER"))
    yield
    conn.execute(text(f"ALTER TABLE {_quote(conn, table)} ENABLE TRIGGER USER"))


def rebase_sqlite_paths(engine: Engine, old: str, new: str) -> int:
    with write_transaction(engine) as conn:
        return rebase_paths(conn, old, new)
