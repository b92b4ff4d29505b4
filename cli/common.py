"""Shared CLI plumbing: the root typer app, the acting user, clean one-line errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from core.errors import ClaraError
from core.permissions import PermissionDenied, Principal

# Settings (pydantic-settings), storage (SQLAlchemy, Alembic) and the domain modules are
# imported by the commands that use them, never at start-up: `clara --help` and every
# group's help need none of them (tests/unit/test_cli_imports.py checks the heavy ones).
if TYPE_CHECKING:
    from core.config import Settings

# Model loads print tqdm bars ("Loading weights") that interleave with our own rich output
# and fill logs; the CLI shows its own progress for everything slow. Before any import of
# transformers, which reads this once.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(
    name="clara",
    help="CLARA Workbench: corpus → datasets → LoRA adapters → chat.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

EXIT_USAGE, EXIT_CONFIG, EXIT_DB, EXIT_DENIED, EXIT_FAILED = 2, 2, 3, 4, 1


class CliFailure(Exception):
    """Raised by commands for an expected failure: message printed, exit code returned."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _loaded_class(module: str, name: str) -> type[BaseException] | tuple[()]:
    """`module.name` if the module has been imported, else () (an except clause that matches
    nothing): an error of that class cannot occur before its module is loaded, so the CLI
    need not import settings or storage just to be able to catch their errors."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name) if loaded is not None else ()


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn the known error types into one readable line and an exit code, no traceback."""
    try:
        yield
    except _loaded_class("core.config", "ConfigError") as err:
        err_console.print(f"[red]configuration error:[/red] {err}")
        sys.exit(EXIT_CONFIG)
    except _loaded_class("core.db.engine", "DatabaseUnavailable") as err:
        err_console.print(f"[red]database error:[/red] {err}")
        sys.exit(EXIT_DB)
    except PermissionDenied as err:
        err_console.print(f"[red]permission denied:[/red] {err}")
        sys.exit(EXIT_DENIED)
    except CliFailure as err:
        err_console.print(f"[red]error:[/red] {err}")
        sys.exit(err.code)
    except ClaraError as err:  # every domain error, mapped here once
        err_console.print(f"[red]error:[/red] {err}")
        sys.exit(EXIT_FAILED)


def settings() -> Settings:
    from core.config import get_settings

    return get_settings()


def startup():
    """Prepare storage (migrate, first admin) and print a generated admin password once."""
    from core.system import prepare

    st = prepare(settings())
    if st.generated_admin_password:
        err_console.print(
            "[bold yellow]Created the first admin.[/bold yellow] user: [bold]admin[/bold]  "
            f"password: [bold]{st.generated_admin_password}[/bold]  "
            "(shown once; change it with `clara users reset-password admin`)"
        )
    return st


def acting_user(engine) -> Principal:
    """The CLI acts as CLARA_CLI_USER (default `admin`), with that user's permissions.

    Whoever runs the CLI has the data dir and database credentials anyway; naming the user
    still matters because every action is permission-checked and audited under that name.
    """
    from core.users import principal_for

    name = settings().cli_user
    principal = principal_for(engine, name)
    if principal is None:
        raise CliFailure(
            f"CLARA_CLI_USER={name!r} is not an enabled user; set it to an existing user name",
            EXIT_DENIED,
        )
    return principal


def allowed_user(engine, permission: str, action: str, target: str = "") -> Principal:
    """The acting user, refused *before* the command asks anything (a password, a "really?").

    Core checks the permission again inside the operation; this check only makes sure that a
    user without it is told so at once instead of being asked for input first. The refusal is
    audited as the operation itself would audit it (action, target, outcome "denied").
    """
    from core.audit import record

    principal = acting_user(engine)
    if not principal.can(permission):
        record(engine, principal.username, action, target, "denied", {"permission": permission})
        raise PermissionDenied(principal.username, principal.role, permission)
    return principal


@dataclass
class Context:
    """What every command needs: storage, settings and the acting user (resolved when first
    used, so commands that need no user do not require one). Domain errors need no handling
    in commands: `fail_cleanly` turns every ClaraError into one line."""

    engine: Any
    settings: Settings

    @cached_property
    def user(self) -> Principal:
        return acting_user(self.engine)

    def allowed(self, permission: str, action: str, target: str = "") -> Principal:
        """The acting user, refused before the command asks anything (see allowed_user)."""
        return allowed_user(self.engine, permission, action, target)


def context() -> Context:
    st = startup()
    return Context(st.engine, st.settings)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def print_rows(
    rows: Iterable[Any],
    json_out: bool,
    columns: Sequence[str],
    cells: Callable[[Any], Sequence[object]],
    *,
    data: Any = None,
    title: str | None = None,
) -> None:
    """The one output of list commands: JSON (`data`, else the rows) for --json, else a
    table with one row of `cells(row)` per row."""
    if json_out:
        print_json(list(rows) if data is None else data)
        return
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*("" if c is None else str(c) for c in cells(row)))
    console.print(table)


def print_json(value: Any) -> None:
    """Machine-readable output for --json (stdout only, nothing else on it)."""
    sys.stdout.write(json.dumps(_plain(value), ensure_ascii=False, indent=2, default=str) + "\n")


@contextmanager
def stage_progress(
    enabled: bool = True,
    *,
    labels: dict[str, str] | None = None,
    amount: Callable[[str, int, int | None], str] | None = None,
    transient: bool = False,
) -> Iterator[Callable[..., None] | None]:
    """The one progress display of the CLI: a rich bar per stage for core's
    `progress(stage, done, total[, detail])` reports, on stderr (stdout stays for the result
    and --json). Yields None when disabled, which core takes as "no reports"."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        TextColumn("{task.fields[amount]}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
        console=err_console,
        transient=transient,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int | None, detail: str = "") -> None:
            if stage not in tasks:
                label = (labels or {}).get(stage, stage)
                tasks[stage] = bar.add_task(label, total=total, amount="", detail="")
            shown = amount(stage, done, total) if amount else f"{done}/{total or '?'}"
            bar.update(tasks[stage], completed=done, total=total, amount=shown, detail=detail[-40:])

        yield update
