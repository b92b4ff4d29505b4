"""`clara config show`, `clara db upgrade|status`, `clara status`, `clara audit`, `clara up`."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.common import (
    CliFailure,
    app,
    console,
    context,
    err_console,
    print_json,
    print_rows,
    settings,
)

config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
admin_app = typer.Typer(help="Maintenance of the installation.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")


@config_app.command("show")
def config_show(json_out: bool = typer.Option(False, "--json")) -> None:
    """Print the effective configuration (secrets masked)."""
    values = settings().masked()
    print_rows(
        values.items(),
        json_out,
        ["variable", "value"],
        lambda kv: (f"CLARA_{kv[0].upper()}", kv[1]),
        data=values,
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the newest revision."""
    from core.db import connect, get_engine, upgrade

    engine = get_engine(settings())
    connect(engine)
    rev = upgrade(engine)
    console.print(f"database at revision [bold]{rev}[/bold]")


@db_app.command("status")
def db_status() -> None:
    """Show the schema revision in the database and the newest one known."""
    from core.db import connect, current_revision, get_engine, head_revision

    engine = get_engine(settings())
    connect(engine)
    cur, head = current_revision(engine), head_revision()
    console.print(f"database: {cur or '(empty)'}   newest: {head}")
    if cur != head:
        raise CliFailure("schema is not up to date: run `clara db upgrade`")


@app.command("status")
def status(json_out: bool = typer.Option(False, "--json")) -> None:
    """System status: database, schema, table counts, data dir."""
    from core.system import system_status

    ctx = context()
    s = system_status(ctx.engine, ctx.user, ctx.settings)
    if json_out:
        print_json(s)
        return
    console.print(f"environment: {s.environment}   auth: {'on' if s.auth_enabled else 'OFF'}")
    if not s.detailed:
        console.print(f"database: {'ok' if s.database_ok else 'unreachable'}")
        if s.database_ok and not s.schema_current:
            console.print("schema: needs an upgrade (tell an administrator)")
        console.print("(database address, data dir and tables: shown to admins and auditors)")
        return
    console.print(f"database: {s.database_url}  ({'ok' if s.database_ok else s.database_error})")
    console.print(f"schema: {s.schema_revision} (newest {s.schema_head})")
    console.print(f"data dir: {s.data_dir}  ({s.data_dir_bytes / 1e6:.1f} MB)")
    t = Table("table", "rows")
    for name, n in s.table_counts.items():
        t.add_row(name, str(n))
    console.print(t)


@app.command("audit")
def audit(
    limit: int = 50,
    action: str | None = typer.Option(None, help="action prefix, e.g. users."),
    user: str | None = None,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Show the newest audit log entries."""
    from core.audit import read_audit_log

    ctx = context()
    page = read_audit_log(ctx.engine, ctx.user, limit=limit, action_prefix=action, user=user)
    print_rows(
        page.rows.itertuples(),
        json_out,
        ["at", "actor", "action", "target", "outcome"],
        lambda r: (r.at.strftime("%Y-%m-%d %H:%M:%S"), r.actor, r.action, r.target, r.outcome),
        data=page.rows.to_dict(orient="records"),
        title=f"{len(page.rows)} of {page.total}",
    )


@app.command("up")
def up(
    port: int | None = typer.Option(None, help="UI port (default CLARA_UI_PORT, 8501)"),
    host: str | None = typer.Option(None, help="bind address (default CLARA_HOST)"),
    no_worker: bool = typer.Option(False, "--no-worker", help="do not start a training worker"),
    no_chat: bool = typer.Option(False, "--no-chat", help="do not start the chat server"),
    no_api: bool = typer.Option(False, "--no-api", help="do not start the HTTP API server"),
) -> None:
    """Start the workbench: the web app and its supervised helper processes."""
    from cli.corpus import offer_sample
    from cli.supervisor import PortTaken, Supervisor, check_port, children_for_up
    from core.ops.cleanup import LEFTOVERS_ONLY, cleanup
    from core.permissions import SYSTEM

    ctx = context()
    cfg = ctx.settings
    ui_host, ui_port = host or cfg.host, port or cfg.ui_port
    cfg.check_bind(ui_host)
    for leftover in cleanup(ctx.engine, SYSTEM, cfg, LEFTOVERS_ONLY):
        console.print(f"removed the leftover of a killed build: {leftover.path}")
    offer_sample(ctx)
    if cfg.env != "production" and not cfg.auth_enabled:
        err_console.print("[bold yellow]CLARA_AUTH=off: login is disabled (development only)[/]")
    children = children_for_up(
        cfg, ui_host, ui_port, worker=not no_worker, chat=not no_chat, api=not no_api
    )
    try:
        for child in children:
            if child.port:
                check_port(child.host, child.port, child.port_variable)
    except PortTaken as err:
        raise CliFailure(str(err)) from None
    sup = Supervisor(children, log_dir=cfg.data_path / "logs")
    console.print(f"CLARA Workbench: [bold]http://{ui_host}:{ui_port}[/bold]   (Ctrl-C stops)")
    code = sup.run()
    raise typer.Exit(code)


@admin_app.command("cleanup")
def admin_cleanup(
    dry_run: bool = typer.Option(False, "--dry-run", help="only list what would be removed"),
    keep_checkpoints: int = typer.Option(
        1, help="checkpoints kept per succeeded job (the newest); -1: keep all"
    ),
    export_days: float = typer.Option(
        30.0, help="remove dataset exports older than this many days; -1: keep all"
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Remove what killed builds and deleted jobs left, old checkpoints of succeeded jobs and
    old exports; prints what it frees (never a build that is still running)."""
    from core.ops.cleanup import CleanupPolicy, cleanup

    ctx = context()
    policy = CleanupPolicy(
        keep_checkpoints=None if keep_checkpoints < 0 else keep_checkpoints,
        export_days=None if export_days < 0 else export_days,
    )
    items = cleanup(ctx.engine, ctx.user, ctx.settings, policy, dry_run=dry_run)
    freed = sum(i.bytes for i in items)
    if json_out:
        print_json(
            {
                "dry_run": dry_run,
                "bytes": freed,
                "paths": [str(i.path) for i in items],
                "items": [
                    {"path": str(i.path), "bytes": i.bytes, "reason": i.reason} for i in items
                ],
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    for i in items:
        console.print(f"{verb} {i.path}  ({_mb(i.bytes)}; {i.reason})")
    if items:
        total = f"{_mb(freed)} {'to free' if dry_run else 'freed'}"
        console.print(f"{len(items)} item(s) {verb}, {total}")
    else:
        console.print("nothing to clean up")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
