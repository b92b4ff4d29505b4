"""`clara users ...`"""

from __future__ import annotations

import typer

from cli.common import app, console, context, print_json, print_rows
from core.permissions import ROLES

users_app = typer.Typer(help="Manage users and roles.", no_args_is_help=True)
app.add_typer(users_app, name="users")


def _password(value: str | None, confirm: bool = True) -> str:
    if value:
        return value
    return typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)


@users_app.command("add")
def add(
    username: str,
    role: str = typer.Option("user", help=f"one of {', '.join(ROLES)}"),
    password: str | None = typer.Option(None, help="prompted when omitted"),
    email: str = "",
    full_name: str = "",
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Add a user."""
    from core import users as accounts

    ctx = context()
    actor = ctx.allowed("users:manage", "users.add", username)  # before the prompt
    info = accounts.create_user(
        ctx.engine, actor, username, _password(password), role, email, full_name
    )
    if json_out:
        print_json(info)
    else:
        console.print(f"added user [bold]{info.username}[/bold] with role {info.role}")


@users_app.command("list")
def list_(json_out: bool = typer.Option(False, "--json")) -> None:
    """List users."""
    from core import users as accounts

    ctx = context()
    users = accounts.list_users(ctx.engine, ctx.user)
    print_rows(
        users,
        json_out,
        ["user", "role", "name", "e-mail", "status", "last login"],
        lambda u: (
            u.username,
            u.role,
            u.full_name,
            u.email,
            "disabled" if u.disabled else "active",
            u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "-",
        ),
    )


@users_app.command("set-role")
def set_role(username: str, role: str) -> None:
    """Change a user's role."""
    from core import users as accounts

    ctx = context()
    info = accounts.set_role(ctx.engine, ctx.user, username, role)
    console.print(f"{info.username} is now {info.role}")


@users_app.command("disable")
def disable(username: str) -> None:
    """Disable a user (they can no longer log in)."""
    from core import users as accounts

    ctx = context()
    accounts.set_disabled(ctx.engine, ctx.user, username, True)
    console.print(f"{username} disabled")


@users_app.command("enable")
def enable(username: str) -> None:
    """Enable a disabled user again."""
    from core import users as accounts

    ctx = context()
    accounts.set_disabled(ctx.engine, ctx.user, username, False)
    console.print(f"{username} enabled")


@users_app.command("reset-password")
def reset_password(
    username: str, password: str | None = typer.Option(None, help="prompted when omitted")
) -> None:
    """Set a new password for a user (also lifts a login lockout)."""
    from core import users as accounts

    ctx = context()
    actor = ctx.user
    if actor.username != username.strip().lower():  # everyone may change their own password
        actor = ctx.allowed("users:manage", "users.reset_password", username)
    accounts.reset_password(ctx.engine, actor, username, _password(password))
    console.print(f"password of {username} changed")


api_key_app = typer.Typer(help="Personal API keys for the HTTP API.", no_args_is_help=True)
users_app.add_typer(api_key_app, name="api-key")


def _key_rows(keys, json_out: bool) -> None:
    print_rows(
        keys,
        json_out,
        ["id", "user", "name", "prefix", "status", "created", "expires", "last used"],
        lambda k: (
            k.id,
            k.username,
            k.name,
            k.prefix,
            k.status,
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            k.expires_at.strftime("%Y-%m-%d %H:%M") if k.expires_at else "never",
            k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "-",
        ),
        data=[{**k.__dict__, "status": k.status} for k in keys],
    )


@api_key_app.command("create")
def api_key_create(
    name: str = typer.Argument(..., help="what the key is for, e.g. 'ci-pipeline'"),
    expires: str = typer.Option("90d", help="lifetime: 90d, 12h, 30m or 'never'"),
    user: str | None = typer.Option(None, help="for another user (needs users:manage)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Create an API key; it is shown once and only its hash is kept."""
    from core.api_keys import create_api_key

    ctx = context()
    info, key = create_api_key(ctx.engine, ctx.user, name, expires=expires, username=user)
    if json_out:
        print_json({**info.__dict__, "status": info.status, "key": key})
        return
    console.print(f"API key [bold]{info.name}[/bold] (id {info.id}) for {info.username}:")
    console.print(key, markup=False, highlight=False)
    console.print("[yellow]Shown once: store it now. Use it as 'Authorization: Bearer <key>'.[/]")


@api_key_app.command("list")
def api_key_list(
    user: str | None = typer.Option(None, help="another user's keys (needs users:manage)"),
    all_users: bool = typer.Option(False, "--all", help="every user's keys (users:manage)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """List API keys (never the keys themselves)."""
    from core.api_keys import list_api_keys

    ctx = context()
    _key_rows(list_api_keys(ctx.engine, ctx.user, user, every_user=all_users), json_out)


@api_key_app.command("revoke")
def api_key_revoke(key_id: int = typer.Argument(..., help="the key's id (see list)")) -> None:
    """Revoke an API key: refused from the next request on."""
    from core.api_keys import revoke_api_key

    ctx = context()
    info = revoke_api_key(ctx.engine, ctx.user, key_id)
    console.print(f"API key {info.id} ({info.name}, {info.username}) revoked")
