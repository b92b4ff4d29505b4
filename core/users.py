"""User accounts: create, list, change role, disable, reset password, the first admin.

Every change is audited and checks `users:manage` itself. Disabling a user, resetting a
password or changing a role ends that user's sessions at once.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select

from core.audit import audited, record
from core.db import reading, writing
from core.db.models import User
from core.login import clear_failures
from core.passwords import PasswordPolicyError, check_password_policy, hash_password
from core.permissions import ROLES, AuthError, Principal, require

_USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class UserError(AuthError):
    """Invalid user-management input (unknown role, weak password, duplicate name, ...)."""


def _check_password_policy(password: str) -> None:
    try:
        check_password_policy(password)
    except PasswordPolicyError as err:
        raise UserError(str(err)) from None


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")


def _normalise_username(username: str) -> str:
    name = username.strip().lower()
    if not _USERNAME_RE.match(name):
        raise UserError(
            "user name must be 2-64 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    email: str
    full_name: str
    role: str
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None


def _info(u: User) -> UserInfo:
    return UserInfo(
        u.id, u.username, u.email, u.full_name, u.role, u.disabled, u.created_at, u.last_login_at
    )


def create_user(
    engine: Engine,
    actor: Principal,
    username: str,
    password: str,
    role: str,
    email: str = "",
    full_name: str = "",
) -> UserInfo:
    with audited(engine, actor, "users.add", target=username, detail={"role": role}):
        require(actor, "users:manage")
        name = _normalise_username(username)
        _check_role(role)
        _check_password_policy(password)
        with writing(engine) as s:
            if s.scalar(select(User).where(User.username == name)) is not None:
                raise UserError(f"user {name!r} already exists")
            user = User(
                username=name,
                password_hash=hash_password(password),
                role=role,
                email=email,
                full_name=full_name or name,
            )
            s.add(user)
            s.flush()
            return _info(user)


def list_users(engine: Engine, actor: Principal) -> list[UserInfo]:
    require(actor, "users:manage")
    with reading(engine) as s:
        return [_info(u) for u in s.scalars(select(User).order_by(User.username))]


def get_user(engine: Engine, username: str) -> UserInfo | None:
    """Internal lookup (no permission): used by login and session restore."""
    with reading(engine) as s:
        u = s.scalar(select(User).where(User.username == username.strip().lower()))
        return _info(u) if u else None


def _update_user(engine: Engine, username: str, **changes: object) -> UserInfo:
    with writing(engine) as s:
        u = s.scalar(select(User).where(User.username == username.strip().lower()))
        if u is None:
            raise UserError(f"no user named {username!r}")
        for k, v in changes.items():
            setattr(u, k, v)
        s.flush()
        return _info(u)


def _end_sessions(engine: Engine, username: str, reason: str) -> None:
    from core.sessions import revoke_user_sessions  # sessions builds on this module

    revoke_user_sessions(engine, username, reason)


def _admins_left(engine: Engine, excluding: str) -> int:
    with reading(engine) as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(User)
                .where(User.role == "admin", User.disabled.is_(False), User.username != excluding)
            )
            or 0
        )


def set_role(engine: Engine, actor: Principal, username: str, role: str) -> UserInfo:
    with audited(engine, actor, "users.set_role", target=username, detail={"role": role}):
        require(actor, "users:manage")
        _check_role(role)
        if role != "admin" and _admins_left(engine, username.strip().lower()) == 0:
            raise UserError("refused: this would leave no enabled admin")
        info = _update_user(engine, username, role=role)
        _end_sessions(engine, info.username, "role changed")
        return info


def set_disabled(
    engine: Engine, actor: Principal, username: str, disabled: bool = True
) -> UserInfo:
    action = "users.disable" if disabled else "users.enable"
    with audited(engine, actor, action, target=username):
        require(actor, "users:manage")
        if disabled and _admins_left(engine, username.strip().lower()) == 0:
            raise UserError("refused: this would leave no enabled admin")
        info = _update_user(engine, username, disabled=disabled)
        if disabled:
            _end_sessions(engine, info.username, "user disabled")
        return info


def reset_password(engine: Engine, actor: Principal, username: str, new_password: str) -> UserInfo:
    with audited(engine, actor, "users.reset_password", target=username):
        if actor.username != username.strip().lower():
            require(actor, "users:manage")
        _check_password_policy(new_password)
        info = _update_user(engine, username, password_hash=hash_password(new_password))
        clear_failures(engine, info.username)
        _end_sessions(engine, info.username, "password reset")
        return info


def principal_for(engine: Engine, username: str) -> Principal | None:
    """The principal of an enabled user (session restore, signed tokens); None otherwise."""
    info = get_user(engine, username)
    if info is None or info.disabled:
        return None
    return Principal(info.username, info.role, info.id, info.full_name)


def ensure_admin(engine: Engine, admin_password: str | None = None) -> str | None:
    """On first start create user `admin`. Returns the generated password, if one was made."""
    with reading(engine) as s:
        if s.scalar(select(func.count()).select_from(User)):
            return None
    generated = None
    password = admin_password
    if not password:
        password = generated = secrets.token_urlsafe(12)
    _check_password_policy(password)
    with writing(engine) as s:
        s.add(
            User(
                username="admin",
                password_hash=hash_password(password),
                role="admin",
                full_name="Administrator",
            )
        )
    record(
        engine,
        "system",
        "users.bootstrap_admin",
        target="admin",
        outcome="ok",
        detail={"password": "generated" if generated else "CLARA_ADMIN_PASSWORD"},
    )
    return generated
