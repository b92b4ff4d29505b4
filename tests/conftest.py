"""Shared fixtures: isolated settings and data dirs, and a database per test on both engines.

`db_engine` is parametrized over SQLite and the real PostgreSQL at 127.0.0.1:5432 (database
`test`). Each Postgres test gets its own schema (search_path), dropped afterwards, so runs
never collide. With CI=true an unreachable Postgres fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.auth import Principal
from core.config import Settings, get_settings

PG_ADMIN_URL = os.environ.get(
    "CLARA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parent.parent

# Tests never read the developer's .env or real data dir.
for _k in list(os.environ):
    if _k.startswith("CLARA_") and _k not in (
        "CLARA_TEST_PG_URL",
        "CLARA_TEST_NEO4J_URI",
        "CLARA_TEST_NEO4J_USER",
        "CLARA_TEST_NEO4J_PASSWORD",
    ):
        del os.environ[_k]
# bcrypt's production cost (12) makes every login take ~0.3 s; the tests check behaviour.
os.environ["CLARA_BCRYPT_ROUNDS"] = "4"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"


def _pg_available() -> str | None:
    try:
        eng = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as err:  # any failure means "not available"
        return str(err).splitlines()[0]


_PG_ERROR = _pg_available()


def require_postgres() -> None:
    if _PG_ERROR is None:
        return
    msg = f"PostgreSQL at {PG_ADMIN_URL} unreachable: {_PG_ERROR}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: Postgres is required)")
    pytest.skip(msg)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "clara-data"
    d.mkdir()
    return d


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A fresh Postgres schema; yields a URL whose connections use it as search_path."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    yield f"{PG_ADMIN_URL}{sep}options=-csearch_path%3D{schema}"
    from core.db import dispose_engines

    dispose_engines()
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, data_dir: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{data_dir / 'clara.db'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def settings(data_dir: Path, db_url: str, monkeypatch) -> Iterator[Settings]:
    """Settings for one test (data dir in tmp, database per engine), also as the env."""
    monkeypatch.setenv("CLARA_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CLARA_DATABASE_URL", db_url)
    monkeypatch.setenv("CLARA_ENV", "testing")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def db_engine(settings: Settings):
    """A migrated database (both engines) with the bootstrap admin (password adminpass1)."""
    from core.auth import ensure_admin
    from core.db import dispose_engines, get_engine, upgrade

    engine = get_engine(settings)
    upgrade(engine)
    ensure_admin(engine, "adminpass1")
    yield engine
    dispose_engines()


@pytest.fixture
def admin() -> Principal:
    return Principal(username="admin", role="admin", user_id=1, full_name="Administrator")


def principal(role: str, name: str | None = None) -> Principal:
    return Principal(username=name or f"{role}1", role=role)
