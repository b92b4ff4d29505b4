"""Engines and sessions. SQLite gets WAL and a busy timeout so UI, CLI and workers share it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings, get_settings, mask_url

SQLITE_BUSY_TIMEOUT_MS = 30_000

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


class DatabaseUnavailable(Exception):
    """The configured database cannot be reached; the message says which and why."""


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI connection
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn) -> None:  # noqa: ANN001
    # pysqlite's own transaction handling is disabled below; emit BEGIN ourselves so that
    # `BEGIN IMMEDIATE` (used for atomic job claiming) is possible on this connection.
    conn.exec_driver_sql(conn.info.pop("sqlite_begin", "BEGIN"))


def create_engine_for(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_pre_ping=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn, _rec):  # noqa: ANN001
            dbapi_conn.isolation_level = None

        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args={"connect_timeout": 5},
    )


def get_engine(settings: Settings | None = None, url: str | None = None) -> Engine:
    """One engine per URL per process (thread-safe; engines pool their own connections)."""
    url = url or (settings or get_settings()).effective_database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine_for(url)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def connect(engine: Engine) -> None:
    """Check that the database answers; raise DatabaseUnavailable with a clear message."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as err:
        reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise DatabaseUnavailable(
            f"database {mask_url(engine.url.render_as_string(hide_password=False))} "
            f"is not reachable: {reason}. Check CLARA_DATABASE_URL and that the server runs."
        ) from None


_sessionmakers: dict[int, sessionmaker] = {}


@contextmanager
def session_scope(engine: Engine | None = None, *, immediate: bool = False) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error.

    `immediate=True` is for transactions that read and then write on SQLite: they start
    with BEGIN IMMEDIATE and so wait (busy timeout) for another writer up front. A plain
    BEGIN that reads first cannot upgrade to a write lock while another process writes
    (WAL: "database is locked" at once, without waiting). No effect on PostgreSQL.
    """
    engine = engine or get_engine()
    with ExitStack() as stack:
        if immediate and engine.dialect.name == "sqlite":
            conn = stack.enter_context(engine.connect())
            conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
            session = Session(bind=conn, expire_on_commit=False)
        else:
            maker = _sessionmakers.get(id(engine))
            if maker is None:
                maker = _sessionmakers[id(engine)] = sessionmaker(
                    bind=engine, expire_on_commit=False
                )
            session = maker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
