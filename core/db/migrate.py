"""Run Alembic migrations programmatically (at start and from `clara db upgrade`)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

# Alembic (and the dialects it loads) is imported when a function here runs, not with
# core.db: commands that never touch the database (`clara --help`) start faster.
if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection, Engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _config(engine: Engine | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.set_main_option(
            "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return cfg


_REVISION = re.compile(r'^(revision|down_revision)\s*=\s*["\']([^"\']+)["\']', re.MULTILINE)


@cache
def head_revision() -> str:
    """The newest migration, read from the scripts' own `revision`/`down_revision` lines.

    Every command compares it with the database's revision; loading Alembic and executing
    every script for that cost a CLI call 0.3 s. A test keeps it equal to Alembic's head.
    Read once per process: health probes and metrics scrapes ask for it every few seconds,
    and the scripts do not change under a running process.
    """
    revisions, parents = set(), set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict(m.groups() for m in _REVISION.finditer(script.read_text(encoding="utf-8")))
        if "revision" in found:
            revisions.add(found["revision"])
            parents.add(found.get("down_revision"))
    heads = sorted(revisions - parents)
    return heads[0] if len(heads) == 1 else _alembic_head()


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision (None before the first migration)."""
    with engine.connect() as conn:
        return connection_revision(conn)


def connection_revision(conn: Connection) -> str | None:
    """The schema revision as `conn` sees it (inside its transaction, if one is open)."""
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Create or upgrade the schema; returns the revision now in the database."""
    with engine.begin() as conn:
        upgrade_connection(conn, revision)
    return current_revision(engine)


def upgrade_connection(conn: Connection, revision: str = "head") -> None:
    """Create or upgrade the schema inside the caller's transaction, committing nothing: a
    caller that fills the new schema (core.ops.migrate_store) rolls both back together."""
    from alembic import command

    cfg = _config(conn.engine)
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)
