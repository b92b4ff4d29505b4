"""`clara admin backup DEST` and `clara admin restore SRC` (core/ops/backup.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console, context, err_console, print_json, settings, stage_progress
from cli.system import admin_app

# Stages whose counts are bytes (the others count tables or vectors).
_BYTE_STAGES = {"files", "verifying"}


def _amount(stage: str, done: int, total: int | None) -> str:
    if stage in _BYTE_STAGES:
        return f"{done / 1e6:.1f}/{(total or 0) / 1e6:.1f} MB"
    return f"{done}/{total}"


@admin_app.command("backup")
def admin_backup(
    dest: Path = typer.Argument(..., help="a new folder for the backup (outside the data dir)"),
    logs: bool = typer.Option(False, "--logs", help="include the log files"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Back up the workbench (database, vectors, files) into DEST; the backup holds every
    secret: keep it safe."""
    from core.ops.backup import create_backup

    ctx = context()
    with stage_progress(not json_out, amount=_amount) as progress:
        report = create_backup(
            ctx.engine, ctx.user, ctx.settings, dest, include_logs=logs, progress=progress
        )
    if json_out:
        print_json(report)
        return
    console.print(
        f"backup [bold]{report.path}[/bold]: {report.files} files, {report.bytes / 1e6:.1f} MB, "
        f"{report.vectors} vectors, {report.engine} at revision {report.schema_revision}"
    )
    console.print("left out: " + "; ".join(e["what"] for e in report.excluded))
    err_console.print("[yellow]It holds the auth secret and password hashes: keep it safe.[/]")


@admin_app.command("restore")
def admin_restore(
    src: Path = typer.Argument(..., help="the backup's folder"),
    force: bool = typer.Option(
        False,
        "--force",
        help="restore into a data dir or database that is not empty: what is in the way is "
        "moved aside (replaced-by-restore-<time>), nothing is deleted",
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a backup into this configuration's data dir and database (both empty). The
    whole backup is verified first; CLARA_CLI_USER must be an admin of the backup."""
    from core.ops.backup import restore_backup, verify_backup

    # No context(): it would create a database and an admin in the empty target.
    cfg = settings()
    with stage_progress(not json_out, amount=_amount) as progress:
        backup = verify_backup(src, progress)
        actor = backup.principal(cfg.cli_user)
        report = restore_backup(actor, cfg, backup, force=force, progress=progress)
    if json_out:
        print_json(report)
        return
    console.print(
        f"restored {report.files} files ({report.bytes / 1e6:.1f} MB), {report.vectors} "
        f"vectors and the {report.engine} database into [bold]{report.data_dir}[/bold]; "
        f"schema {report.backup_schema_revision} → {report.schema_revision}"
    )
    for place in report.moved_aside:
        console.print(f"what was in the way is in {place} (nothing was deleted)")
