"""reading() refuses writes; writing() takes SQLite's write lock before its block runs."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from core.db import ReadOnlyTransaction, reading, writing
from core.db.models import User


def test_reading_refuses_orm_and_statement_writes(db_engine):
    with pytest.raises(ReadOnlyTransaction), reading(db_engine) as s:
        s.scalar(select(User).where(User.username == "admin")).full_name = "changed"
        s.flush()
    with pytest.raises(ReadOnlyTransaction), reading(db_engine) as s:
        s.execute(update(User).values(full_name="changed"))
    with pytest.raises(ReadOnlyTransaction), reading(db_engine) as s:
        s.add(User(username="x", password_hash="x", role="user"))
        s.flush()
    with reading(db_engine) as s:
        assert s.scalar(select(User.full_name).where(User.username == "admin")) == "Administrator"


def test_reading_never_commits_and_writing_does(db_engine):
    with reading(db_engine) as s:
        s.scalar(select(User).where(User.username == "admin")).full_name = "not kept"
    with writing(db_engine) as s:
        s.scalar(select(User).where(User.username == "admin")).full_name = "kept"
    with reading(db_engine) as s:
        assert s.scalar(select(User.full_name).where(User.username == "admin")) == "kept"


def test_writing_holds_the_write_lock_from_its_start(db_engine):
    if db_engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    with writing(db_engine) as s:
        s.execute(select(1))
        with db_engine.connect() as other:
            other.exec_driver_sql("PRAGMA busy_timeout = 0")
            with pytest.raises(Exception, match="locked"):
                other.exec_driver_sql("BEGIN IMMEDIATE")
