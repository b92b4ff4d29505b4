"""SQLite writers wait for another process's write lock even past the busy timeout:
writing() and write_transaction retry BEGIN IMMEDIATE with backoff, and
retry_on_lock repeats a whole transaction only for lock errors (issue 10, item 11)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

import core.db.engine as engine_module
from core.db import writing
from core.db.engine import create_engine_for, is_lock_error, retry_on_lock, write_transaction

HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE counter SET n = n + 100")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
    """
)


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    eng = create_engine_for(f"sqlite:///{tmp_path / 'lock.db'}")
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TABLE counter (n INTEGER PRIMARY KEY)")
        c.exec_driver_sql("INSERT INTO counter VALUES (0)")
    yield eng
    eng.dispose()


def _hold(engine, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, engine.url.database, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _value(engine) -> int:
    with engine.connect() as c:
        return c.exec_driver_sql("SELECT n FROM counter").scalar_one()


def test_writing_waits_past_the_busy_timeout(engine):
    proc = _hold(engine, 1.5)
    started = time.monotonic()
    try:
        with writing(engine) as s:
            n = s.execute(sa.text("SELECT n FROM counter")).scalar_one()
            s.execute(sa.text("UPDATE counter SET n = :n"), {"n": n + 1})
    finally:
        proc.wait(30)
    assert time.monotonic() - started >= 1.0
    assert _value(engine) == 101  # read after the other writer committed


def test_write_transaction_waits_past_the_busy_timeout(engine):
    proc = _hold(engine, 1.5)
    try:
        with write_transaction(engine) as conn:
            n = conn.exec_driver_sql("SELECT n FROM counter").scalar_one()
            conn.exec_driver_sql(f"UPDATE counter SET n = {n + 1}")
    finally:
        proc.wait(30)
    assert _value(engine) == 101


def test_retry_on_lock_repeats_only_lock_errors(engine):
    calls = []

    def locked_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("UPDATE", {}, Exception("database is locked"))
        return "done"

    assert retry_on_lock(locked_twice) == "done" and len(calls) == 3

    def duplicate() -> None:
        calls.append(1)
        with write_transaction(engine) as conn:
            conn.exec_driver_sql("INSERT INTO counter VALUES (0)")

    calls.clear()
    with pytest.raises(IntegrityError):
        retry_on_lock(duplicate)
    assert len(calls) == 1

    def always_locked() -> None:
        raise OperationalError("UPDATE", {}, Exception("database is locked"))

    with pytest.raises(OperationalError):
        retry_on_lock(always_locked, deadline_s=0.3)
    assert is_lock_error(OperationalError("x", {}, Exception("database is locked")))
    assert not is_lock_error(OperationalError("x", {}, Exception("no such table: t")))
