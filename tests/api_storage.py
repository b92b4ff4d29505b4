"""One `clara api` server per test module and engine (SQLite, or PostgreSQL in a schema of
its own), for API tests whose cases share a corpus or datasets; plus what those tests ask
of every route: the routes a router declares, and the audit rows of an action.

    @pytest.fixture(scope="module", params=ENGINES)
    def api(request, tmp_path_factory):
        with module_api_server(request.param, tmp_path_factory, "corpus") as server:
            yield server
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import select

from tests.api_server import ApiServer, running_api_server
from tests.conftest import database_url

ENGINES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
PREFIX = "/api/v1"


@contextmanager
def module_api_server(kind: str, tmp_path_factory, name: str) -> Iterator[ApiServer]:
    """The server on fresh storage; `server.settings` and `server.kind` name it."""
    from core.config import Settings

    data = tmp_path_factory.mktemp(f"api-{name}-{kind}")
    with database_url(kind, data) as url:
        settings = Settings(_env_file=None, data_dir=data, database_url=url, env="testing")
        with running_api_server(settings) as server:
            server.settings, server.kind = settings, kind
            yield server


def declared_routes(router) -> set[tuple[str, str]]:
    """(method, path under /api/v1) of every route the router declares, e.g.
    ("GET", "/corpus/documents/{doc_id:path}")."""
    return {(m, r.path) for r in router.routes for m in r.methods if m != "HEAD"}


def concrete(path: str) -> str:
    """A declared path with every parameter filled in (for calls that never get that far)."""
    return PREFIX + re.sub(r"\{[^}]+\}", "x1", path)


def audit_rows(server: ApiServer, action: str, actor: str | None = None) -> list[dict]:
    """The audit rows of one action (optionally of one actor), oldest first."""
    from core.db import get_engine, reading
    from core.db.models import AuditEntry

    conds = [AuditEntry.action == action]
    if actor is not None:
        conds.append(AuditEntry.actor == actor)
    with reading(get_engine(server.settings)) as s:
        rows = s.scalars(select(AuditEntry).where(*conds).order_by(AuditEntry.id)).all()
        return [
            {"actor": r.actor, "target": r.target, "outcome": r.outcome, "detail": r.detail}
            for r in rows
        ]
