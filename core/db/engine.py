"""Engines and sessions. SQLite gets WAL and a busy timeout so UI, CLI and workers share it."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings, get_settings, mask_url
from core.errors import ClaraError

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A write that still finds the database locked after the busy timeout (another writer held
# it longer) is retried with backoff until this many seconds have passed since it started.
LOCK_RETRY_SECONDS = 600.0
LOCK_BACKOFF_FIRST_S = 0.05
LOCK_BACKOFF_MAX_S = 2.0

log = logging.getLogger(__name__)
T = TypeVar("T")

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


class DatabaseUnavailable(ClaraError):
    """The configured database cannot be reached; the message says which and why."""


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    # 64 MB of page cache instead of 2 MB: the keyword postings index takes hundreds of
    # rows per document, spread over the whole key range.
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def _sqlite_begin(conn) -> None:
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
        def _no_autobegin(dbapi_conn, _rec):
            dbapi_conn.isolation_level = None

        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        # JIT compiling a keyword ranking took longer (80 ms) than running it: our queries
        # are many and short, the kind JIT slows down.
        # (connect_args replace the URL's own options, e.g. a search_path: keep them).
        connect_args={
            "connect_timeout": 5,
            "options": f"{u.query.get('options', '')} -c jit=off".strip(),
        },
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


def is_lock_error(err: BaseException) -> bool:
    """True for errors that mean "another writer holds a lock, try again": SQLite's
    "database is locked" / "database table is locked", PostgreSQL's deadlock, serialization
    failure and lock-not-available. Never true for a constraint violation or a bad query."""
    orig = getattr(err, "orig", err)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in ("40P01", "40001", "55P03"):
        return True
    if not isinstance(err, OperationalError) and type(orig).__name__ != "OperationalError":
        return False
    msg = str(orig).lower()
    return "database is locked" in msg or "database table is locked" in msg or "busy" in msg


def retry_on_lock(
    fn: Callable[[], T],
    *,
    what: str = "write",
    deadline_s: float | None = None,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Run `fn` (one whole transaction) again while it fails for a lock, with exponential
    backoff and jitter, until `deadline_s` (default LOCK_RETRY_SECONDS) have passed; then
    the last lock error is raised. `fn` must roll back everything it did when it raises
    (a `writing()` / `engine.begin()` block inside it does)."""
    limit = LOCK_RETRY_SECONDS if deadline_s is None else deadline_s
    started = time.monotonic()
    delay = LOCK_BACKOFF_FIRST_S
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as err:
            if not is_lock_error(err) or time.monotonic() - started + delay > limit:
                raise
            log.warning("%s found the database locked (attempt %d); retrying", what, attempt)
            if on_retry is not None:
                on_retry(attempt, err)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(LOCK_BACKOFF_MAX_S, delay * 2)


@contextmanager
def write_transaction(engine: Engine, *, what: str = "write") -> Iterator[Connection]:
    """`writing()` for code that works on a Connection (bulk SQL): the same lock rules."""
    with writing(engine) as s:
        yield s.connection()


_sessionmakers: dict[int, sessionmaker] = {}


@contextmanager
def writing(engine: Engine | None = None) -> Iterator[Session]:
    """A transaction that writes: committed on success, rolled back on any error.

    On SQLite it takes the write lock before the block runs (BEGIN IMMEDIATE, retried with
    backoff while another writer keeps it past the busy timeout), so a block that reads and
    then writes never fails with "database is locked" when it upgrades. Plain `engine.begin()`
    semantics on PostgreSQL.
    """
    with _transaction(engine, immediate=True) as s:
        yield s


class ReadOnlyTransaction(Exception):
    """A `reading()` block tried to write: use `writing()` for it."""


def _refuse_flush(session: Session, _ctx, _instances) -> None:
    if session.new or session.dirty or session.deleted:
        raise ReadOnlyTransaction("this block only reads (reading()); writes need writing()")


def _refuse_dml(state) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        raise ReadOnlyTransaction("this block only reads (reading()); writes need writing()")


@contextmanager
def reading(engine: Engine | None = None) -> Iterator[Session]:
    """A transaction that only reads; it never commits, and a write inside it raises
    ReadOnlyTransaction, so a forgotten write lock shows up at once, not under load."""
    engine = engine or get_engine()
    maker = _sessionmakers.get(id(engine))
    if maker is None:
        maker = _sessionmakers[id(engine)] = sessionmaker(bind=engine, expire_on_commit=False)
    session = maker()
    event.listen(session, "before_flush", _refuse_flush)
    event.listen(session, "do_orm_execute", _refuse_dml)
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@contextmanager
def _transaction(engine: Engine | None = None, *, immediate: bool = False) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error (behind writing()).

    `immediate=True` starts with BEGIN IMMEDIATE on SQLite, so a block that reads and then
    writes waits (busy timeout) for another writer up front: a plain BEGIN that reads first
    cannot upgrade to a write lock while another process writes (WAL: "database is locked"
    at once). The BEGIN IMMEDIATE is issued before the block runs and retried with backoff
    (retry_on_lock) when another writer keeps the lock past the busy timeout.
    """
    engine = engine or get_engine()
    with ExitStack() as stack:
        if immediate and engine.dialect.name == "sqlite":

            def begin_immediate() -> tuple[Connection, Session]:
                conn = engine.connect()
                conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
                session = Session(bind=conn, expire_on_commit=False)
                try:
                    session.connection()  # BEGIN IMMEDIATE now, before the block runs
                except BaseException:
                    session.close()
                    conn.info.pop("sqlite_begin", None)
                    conn.close()
                    raise
                return conn, session

            conn, session = retry_on_lock(begin_immediate, what="session")
            stack.callback(conn.close)
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
