"""Storage: one SQLAlchemy code path for SQLite (embedded) and PostgreSQL (shared)."""

from core.db.engine import (
    DatabaseUnavailable,
    ReadOnlyTransaction,
    connect,
    dispose_engines,
    get_engine,
    is_postgres,
    is_sqlite,
    reading,
    writing,
)
from core.db.migrate import current_revision, head_revision, upgrade

__all__ = [
    "DatabaseUnavailable",
    "ReadOnlyTransaction",
    "connect",
    "current_revision",
    "dispose_engines",
    "get_engine",
    "head_revision",
    "is_postgres",
    "is_sqlite",
    "reading",
    "upgrade",
    "writing",
]
