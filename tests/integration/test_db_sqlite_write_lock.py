"""SQLite: a transaction that reads and then writes must wait for another writer, not fail.

In WAL mode a plain BEGIN that has read cannot upgrade to a write lock while another
connection writes: SQLite answers "database is locked" at once instead of waiting out the
busy timeout. Dataset freeze hit this while the training worker polled for jobs.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from core.db import writing
from core.db.engine import create_engine_for


@pytest.fixture
def engine(tmp_path):
    eng = create_engine_for(f"sqlite:///{tmp_path / 'lock.db'}")
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TABLE counter (n INTEGER)")
        c.exec_driver_sql("INSERT INTO counter VALUES (0)")
    yield eng
    eng.dispose()


def _hold_write_lock(engine, started: threading.Event, seconds: float) -> None:
    with engine.connect() as conn:
        conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
        with conn.begin():
            conn.exec_driver_sql("UPDATE counter SET n = n + 100")
            started.set()
            time.sleep(seconds)


def _read_then_write(engine, immediate: bool) -> None:
    """With writing() (the lock first), or the way it failed: a plain BEGIN that reads first."""
    with writing(engine) if immediate else engine.begin() as s:
        n = s.execute(sa.text("SELECT n FROM counter")).scalar_one()
        time.sleep(0.3)  # the other writer still holds its lock
        s.execute(sa.text("UPDATE counter SET n = :n"), {"n": n + 1})


@pytest.mark.parametrize("immediate", [True, False])
def test_read_then_write_waits_for_another_writer_only_when_immediate(engine, immediate):
    started = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(engine, started, 1.0))
    holder.start()
    assert started.wait(5)
    try:
        if immediate:
            _read_then_write(engine, immediate=True)
            with engine.connect() as c:
                # It waited for the other writer and read its committed value.
                assert c.exec_driver_sql("SELECT n FROM counter").scalar_one() == 101
        else:
            with pytest.raises(OperationalError, match="database is locked"):
                _read_then_write(engine, immediate=False)
    finally:
        holder.join()
