"""Start-up and system status: what every entry point (app, CLI, workers) does first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, inspect, select, table

from core.config import Settings, get_settings, mask_url
from core.db import connect, current_revision, get_engine, head_revision, upgrade
from core.permissions import Principal, require
from core.users import ensure_admin


@dataclass(frozen=True)
class Startup:
    engine: Engine
    settings: Settings
    generated_admin_password: str | None = None


def prepare(settings: Settings | None = None, *, migrate: bool = True) -> Startup:
    """Create the data dir and its secret, check the database, upgrade the schema, create
    the first admin.

    Raises core.db.DatabaseUnavailable (one clear line) when the database cannot be reached.
    """
    settings = settings or get_settings()
    settings.ensure_dirs()
    settings.auth_secret_value()  # made on the first start, before any server needs it
    engine = get_engine(settings)
    connect(engine)
    if migrate and current_revision(engine) != head_revision():
        upgrade(engine)
    admin_pw = settings.admin_password.get_secret_value() if settings.admin_password else None
    generated = ensure_admin(engine, admin_pw)
    return Startup(engine=engine, settings=settings, generated_admin_password=generated)


# Who may see the inside of the installation (database address, data directory, table
# names and row counts, error texts that can name files): those who run it and those who
# audit it. Everyone else with system:read sees whether the system is healthy.
DETAIL_PERMISSIONS: tuple[str, ...] = ("users:manage", "audit:read")


def may_see_system_details(actor: Principal | None) -> bool:
    """Admins and auditors; decided here so that every entry point shows the same."""
    return actor is not None and any(actor.can(p) for p in DETAIL_PERMISSIONS)


@dataclass
class SystemStatus:
    """System health. With `detailed` False (a principal who is neither admin nor auditor)
    the internal fields are empty: database_url, database_error, data_dir and
    schema_revision are None, data_dir_bytes is None and table_counts is empty; whether the
    database is reachable and the schema current is still said."""

    database_ok: bool
    database_url: str | None
    database_error: str | None
    schema_revision: str | None
    schema_head: str
    environment: str
    data_dir: str | None
    data_dir_bytes: int | None
    auth_enabled: bool
    table_counts: dict[str, int] = field(default_factory=dict)
    detailed: bool = True
    schema_current: bool = True


def dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def system_status(
    engine: Engine, actor: Principal, settings: Settings | None = None
) -> SystemStatus:
    """Health for everyone with system:read; the details only for admins and auditors
    (`may_see_system_details`)."""
    require(actor, "system:read")
    detailed = may_see_system_details(actor)
    settings = settings or get_settings()
    counts: dict[str, int] = {}
    error = None
    revision = None
    try:
        connect(engine)
        revision = current_revision(engine)
        if detailed:
            names = sorted(n for n in inspect(engine).get_table_names() if n != "alembic_version")
            with engine.connect() as conn:
                for name in names:
                    # Table names come from the database's own catalogue, not user input.
                    counts[name] = conn.execute(
                        select(func.count()).select_from(table(name))
                    ).scalar_one()
        ok = True
    except Exception as err:  # status page must render whatever went wrong
        ok, error = False, str(err).splitlines()[0]
    head = head_revision()
    if not detailed:
        return SystemStatus(
            database_ok=ok,
            database_url=None,
            database_error=None,
            schema_revision=None,
            schema_head=head,
            environment=settings.env,
            data_dir=None,
            data_dir_bytes=None,
            auth_enabled=settings.auth_enabled,
            detailed=False,
            schema_current=revision == head,
        )
    return SystemStatus(
        database_ok=ok,
        database_url=mask_url(settings.effective_database_url),
        database_error=error,
        schema_revision=revision,
        schema_head=head,
        environment=settings.env,
        data_dir=str(settings.data_path),
        data_dir_bytes=dir_size(settings.data_path) if settings.data_path.exists() else 0,
        auth_enabled=settings.auth_enabled,
        table_counts=counts,
        detailed=True,
        schema_current=revision == head,
    )


def liveness(engine: Engine) -> dict[str, object]:
    """What a probe without credentials may learn: is the database reachable, is the schema
    current. No names, addresses or error texts."""
    try:
        connect(engine)
        current = current_revision(engine) == head_revision()
        return {"status": "ok" if current else "degraded", "database": True, "schema": current}
    except Exception:  # a probe answers whatever went wrong; the detail is for admins
        return {"status": "error", "database": False, "schema": False}
