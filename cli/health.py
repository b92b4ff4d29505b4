"""`clara admin health`: every check of core.ops.health, exit 1 when one fails."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.common import acting_user, console, print_json, settings
from cli.system import admin_app

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@admin_app.command("health")
def admin_health(
    json_out: bool = typer.Option(False, "--json"),
    forget_stale: bool = typer.Option(
        False,
        "--forget-stale",
        help="first forget processes whose heartbeat is stale (they are gone for good)",
    ),
) -> None:
    """Check the database and schema, the vector and graph stores, every worker and server
    (heartbeats), the queue, the data dir's disk and this machine's GPUs. Exits 1 when a
    check fails (a dead process, a store that does not answer, the schema behind, the disk
    nearly full), 0 otherwise (warnings included)."""
    from core.db import get_engine
    from core.ops.health import health_report
    from core.ops.heartbeats import forget_stale_processes

    cfg = settings()
    engine = get_engine(cfg)  # no migration: a schema behind the code is one of the checks
    actor = _actor(engine)
    forgotten = (
        forget_stale_processes(engine, actor, cfg.health_stale_seconds) if forget_stale else []
    )
    report = health_report(engine, actor, cfg)
    if json_out:
        print_json({"status": report.status, **vars(report), "forgotten": forgotten})
    else:
        for name in forgotten:
            console.print(f"forgot {name}", style="dim")
        _print(report)
    if report.status == "fail":
        raise typer.Exit(1)


def _actor(engine):
    """The CLI user; without a database (or a schema) there is no user to check, so the
    report is made as the system: whoever runs the CLI holds the database's credentials."""
    from core.db import DatabaseUnavailable, connect, current_revision
    from core.permissions import SYSTEM

    try:
        connect(engine)
        known = current_revision(engine) is not None
    except DatabaseUnavailable:
        known = False
    return acting_user(engine) if known else SYSTEM


def _print(report) -> None:
    from core.ops.health import describe_gpus

    checks = Table("check", "status", "detail", title=f"health: {report.status}")
    for c in report.checks:
        checks.add_row(c.name, f"[{STYLE[c.status]}]{c.status}[/]", c.detail)
    console.print(checks)
    if report.processes:
        procs = Table("kind", "host", "pid", "started", "heartbeat", "state", "current")
        for p in report.processes:
            state = "replaced" if p.replaced else "stale" if p.stale else "live"
            jobs = ", ".join(str(j["id"]) for j in p.detail.get("jobs") or [])
            procs.add_row(
                p.kind,
                p.host,
                str(p.pid),
                p.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                f"{p.age_seconds:.0f} s ago",
                state,
                f"jobs {jobs}" if jobs else p.detail.get("url") or "",
            )
        console.print(procs)
    if report.queue:
        states = next(iter(report.queue.values())).keys()
        queue = Table("kind", *states, title="jobs")
        for kind, counts in sorted(report.queue.items()):
            queue.add_row(kind, *(str(counts[s]) for s in states))
        console.print(queue)
    if report.gpus:
        console.print(f"GPUs: {describe_gpus(report.gpus)}")
