"""Shared fixtures: isolated settings and data dirs, and a database per test on both engines.

`db_engine` is parametrized over SQLite and the real PostgreSQL at 127.0.0.1:5432 (database
`test`). Each Postgres test gets its own schema (search_path), dropped afterwards, so runs
never collide. With CI=true an unreachable Postgres fails the run instead of skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.artifacts import build_once
from core.config import Settings, get_settings
from core.permissions import Principal

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with slow tests first, each module kept together and otherwise in order.

    The suite runs on pytest-xdist workers with `--dist loadscope --no-loadscope-reorder`
    (pyproject): each module goes whole to one worker (its module-scoped fixtures, e.g. a
    started `clara up` or chat server, are set up once), in this order, so that no long
    module starts when the other workers are about to run out of work.
    """
    slow = {getattr(i, "module", None) for i in items if i.get_closest_marker("slow")}
    items.sort(key=lambda i: getattr(i, "module", None) not in slow)  # a stable sort


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


@pytest.fixture(autouse=True)
def _fresh_streamlit_caches() -> Iterator[None]:
    """AppTest runs in this process: a cached engine (st.cache_resource) would otherwise
    point the next test's app at the previous test's database."""
    if "streamlit" in sys.modules:
        import streamlit as st

        st.cache_resource.clear()
        st.cache_data.clear()
    yield


def open_page(monkeypatch, page: str, timeout: float = 180):
    """The Streamlit app under AppTest with authentication off (everyone acts as admin),
    switched to `page` (e.g. "pages/corpus.py"); for page tests where the role does not
    matter (role tests sign in with a real session: tests/integration/test_app_roles.py)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CLARA_AUTH", "off")
    get_settings.cache_clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "clara-data"
    d.mkdir()
    return d


@contextmanager
def database_url(kind: str, data_dir: Path) -> Iterator[str]:
    """A fresh database: SQLite in `data_dir`, or ("postgres") a PostgreSQL schema of its own,
    reached through a URL whose connections use it as search_path and dropped at the end."""
    if kind == "sqlite":
        yield f"sqlite:///{data_dir / 'clara.db'}"
        return
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    try:
        yield f"{PG_ADMIN_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        from core.db import dispose_engines

        dispose_engines()
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_schema_url(data_dir: Path) -> Iterator[str]:
    """A fresh Postgres schema; yields a URL whose connections use it as search_path."""
    with database_url("postgres", data_dir) as url:
        yield url


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
    from core.db import dispose_engines, get_engine, upgrade
    from core.users import ensure_admin

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


def shared_build(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name`, built once per test run by `build(folder)` and shared read-only.

    For inputs that take seconds to make and that tests only read (a tiny model, an adapter
    trained on fixed data with a fixed seed): the first caller builds it under a file lock
    into a temporary folder that is renamed into place; every later caller, in this process
    or in another pytest-xdist worker of the same run, waits for the lock and reuses it.
    Tests that change such files copy them first.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # .../pytest-N/popen-gwK → .../pytest-N, shared by the workers
    root = base / "shared"
    root.mkdir(exist_ok=True)
    target = root / name
    build_once(target, lambda folder: folder.is_dir(), build)
    return target


@pytest.fixture(scope="session")
def shared_demo_model(tmp_path_factory) -> Path:
    """The tiny demo base model, built once per test run by `clara demo-model --json` (the
    command a user runs) in a data dir of its own, and shared read-only: tests link it into
    their data dir as `models/demo-llama`, where `ensure_demo_model` finds it complete."""

    def build(folder: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "CLARA_DATABASE_URL"}
        env.update(CLARA_DATA_DIR=str(folder), CLARA_DEMO_MODEL_SIZE="tiny", CLARA_ENV="testing")
        r = subprocess.run(
            [sys.executable, "-m", "cli", "demo-model", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        built = json.loads(r.stdout)
        assert built["size"] == "tiny", built
        assert Path(built["path"]) == folder / "models" / "demo-llama", built

    return shared_build(tmp_path_factory, "demo-model", build) / "models" / "demo-llama"


def link_demo_model(shared: Path, data_dir: Path) -> Path:
    """`data_dir/models/demo-llama` → the shared demo model (as `clara demo-model` leaves it)."""
    target = data_dir / "models" / "demo-llama"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(shared, target_is_directory=True)
    return target
