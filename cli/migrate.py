"""`clara admin migrate`: the embedded stores to PostgreSQL and a Chroma server (core.ops.
migrate_store does the work, the checks and the audit)."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.common import CliFailure, console, context, print_json, stage_progress
from cli.system import admin_app

MASK = "********"  # core.config.mask_url's stand-in for a password

FORCE_HELP = (
    "fill a target that already holds something, where nothing in it has to change: our "
    "tables at the source's schema revision holding only rows identical to the source's, "
    "collections holding only the source's vectors (what is there stays, the rest is "
    "added; other tables and collections are left alone; nothing is ever deleted)"
)


@admin_app.command("migrate")
def admin_migrate(
    to: str | None = typer.Option(
        None, "--to", help="PostgreSQL URL (postgresql+psycopg://user:pw@host/db)"
    ),
    chroma_to: str | None = typer.Option(
        None, "--chroma-to", help="Chroma server URL (http://host:port)"
    ),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Copy the SQLite database to PostgreSQL and/or the embedded vectors to a Chroma server,
    verified table by table (rows, sha256) and vector by vector; the source is only read.
    Stop the workbench first: writes made during the copy are not in it."""
    from core.config import mask_url
    from core.ops.migrate_store import ACTION, PERMISSION, MigrationMismatch, migrate_store

    ctx = context()
    user = ctx.allowed(PERMISSION, ACTION, mask_url(to) if to else chroma_to or "")
    try:
        with stage_progress(transient=True) as progress:
            report = migrate_store(
                ctx.engine, user, ctx.settings, to=to, chroma_to=chroma_to, force=force,
                progress=progress,
            )  # fmt: skip
    except MigrationMismatch as err:
        _print(err.report, json_out)
        raise CliFailure(str(err)) from None
    _print(report, json_out)


def _print(report, json_out: bool) -> None:
    if json_out:
        print_json(report.to_dict())
        return
    if report.tables:
        console.print(_tables(report))
    if report.collections:
        console.print(_collections(report))
    if not report.ok:
        return
    if report.audit_id is not None:
        console.print(f"the move itself is row {report.audit_id} of the new audit log")
    console.print(f"verified in {report.seconds} s. Set afterwards (and restart the workbench):")
    for name, value in report.set_afterwards.items():
        console.print(f"  {name}={value}", soft_wrap=True, highlight=False, markup=False)
    if any(MASK in v for v in report.set_afterwards.values()):
        console.print(f"  (with the password where it says {MASK})", highlight=False)


def _tables(report) -> Table:
    t = Table(
        "table", "source rows", "target rows", "added", "sha256", "same",
        title=f"{report.database_url} (schema {report.revision})",
    )  # fmt: skip
    for c in report.tables:
        digest = c.source_sha256[:16]
        if not c.ok:
            digest += f" ≠ {c.target_sha256[:16]}"
        t.add_row(
            c.table, str(c.source_rows), str(c.target_rows), str(c.added), digest, _mark(c.ok)
        )
    return t


def _collections(report) -> Table:
    t = Table(
        "collection", "source vectors", "target vectors", "added", "sha256",
        "largest difference", "same", title=report.chroma_url,
    )  # fmt: skip
    for c in report.collections:
        t.add_row(
            c.name, str(c.source_count), str(c.target_count), str(c.added),
            c.source_sha256[:16], f"{c.max_embedding_difference:.1e}", _mark(c.ok),
        )  # fmt: skip
    return t


def _mark(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]NO[/]"
