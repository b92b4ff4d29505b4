"""Users, roles and permissions. `require(user, permission)` is the one enforcement point.

Every core operation takes the acting `Principal` and calls `require` itself, so the CLI,
the Streamlit pages and the chat server cannot drift apart in what they allow.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import bcrypt
from sqlalchemy import Engine, delete, func, select

from core.audit import audited, record
from core.db import session_scope
from core.db.base import utcnow
from core.db.models import LoginThrottle, User

RoleName = Literal["admin", "trainer", "analyst", "user", "auditor"]
ROLES: tuple[str, ...] = ("admin", "trainer", "analyst", "user", "auditor")

PERMISSIONS: dict[str, str] = {
    "corpus:ingest": "Add, change and delete documents",
    "corpus:ingest_server_path": "Ingest from a folder on the server",
    "corpus:search": "Search and read documents",
    "datasets:read": "See datasets, samples and versions",
    "datasets:create": "Create datasets, import and build samples, freeze versions",
    "datasets:review": "Accept, reject and edit samples",
    "datasets:export": "Export dataset versions",
    "training:create": "Submit training jobs",
    "training:read": "See jobs, metrics and logs",
    "training:cancel": "Cancel and retry jobs",
    "adapters:read": "See adapters and their lineage",
    "adapters:activate": "Activate, merge and delete adapters",
    "chat:use": "Chat with the base model and adapters, give feedback",
    "audit:read": "Read the audit log",
    "users:manage": "Add users, change roles, disable, reset passwords",
    "system:read": "See system status and configuration",
}

_READ_ALL = {
    "corpus:search",
    "datasets:read",
    "training:read",
    "adapters:read",
    "system:read",
}

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset(PERMISSIONS),
    "trainer": frozenset(
        _READ_ALL
        | {
            "corpus:ingest",
            "datasets:create",
            "datasets:review",
            "datasets:export",
            "training:create",
            "training:cancel",
            "adapters:activate",
            "chat:use",
        }
    ),
    "analyst": frozenset(
        _READ_ALL
        | {"corpus:ingest", "datasets:create", "datasets:review", "datasets:export", "chat:use"}
    ),
    "user": frozenset({"chat:use", "adapters:read", "system:read"}),
    "auditor": frozenset(_READ_ALL | {"audit:read"}),
}

MIN_PASSWORD_LENGTH = 8
_USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class AuthError(Exception):
    """Base class of authentication and authorisation errors."""


class PermissionDenied(AuthError):
    def __init__(self, username: str, role: str, permission: str) -> None:
        self.username, self.role, self.permission = username, role, permission
        super().__init__(
            f"{username} ({role}) may not do this: it needs the permission '{permission}'"
        )


class AuthenticationFailed(AuthError):
    """Wrong user name or password. Deliberately says nothing about which."""

    def __init__(self) -> None:
        super().__init__("Wrong user name or password.")


class AccountLocked(AuthError):
    def __init__(self, until: datetime) -> None:
        self.until = until
        super().__init__(
            "Too many failed attempts: login is blocked until "
            f"{until.strftime('%H:%M:%S')} UTC. Try again later."
        )


class UserError(AuthError):
    """Invalid user-management input (unknown role, weak password, duplicate name, ...)."""


@dataclass(frozen=True)
class Principal:
    """The acting user as core sees it."""

    username: str
    role: str
    user_id: int | None = None
    full_name: str = ""

    def can(self, permission: str) -> bool:
        return has_permission(self.role, permission)


# The worker, migrations and first-start bootstrap act as this principal.
SYSTEM = Principal(username="system", role="admin")


def has_permission(role: str, permission: str) -> bool:
    if permission not in PERMISSIONS:
        raise KeyError(f"unknown permission {permission!r}")
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def require(user: Principal | None, permission: str) -> Principal:
    """Raise PermissionDenied unless `user` holds `permission`; returns the user."""
    if user is None:
        raise PermissionDenied("anonymous", "none", permission)
    if not has_permission(user.role, permission):
        raise PermissionDenied(user.username, user.role, permission)
    return user


def permissions_of(role: str) -> list[str]:
    return sorted(ROLE_PERMISSIONS.get(role, frozenset()))


# Passwords ------------------------------------------------------------------------------


def hash_password(password: str, rounds: int | None = None) -> str:
    from core.config import get_settings

    rounds = rounds or get_settings().bcrypt_rounds
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode("utf-8"), password_hash.encode("ascii"))
    except ValueError:
        return False


_dummy_hashes: dict[int, str] = {}


def _dummy_hash() -> str:
    """Checked for unknown user names so that timing does not reveal whether a user exists."""
    from core.config import get_settings

    rounds = get_settings().bcrypt_rounds
    if rounds not in _dummy_hashes:
        _dummy_hashes[rounds] = hash_password(secrets.token_urlsafe(16), rounds)
    return _dummy_hashes[rounds]


def _check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password too short: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(password.encode("utf-8")) > 72:
        raise UserError("password too long: bcrypt uses at most 72 bytes")


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


# Users ----------------------------------------------------------------------------------


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
        with session_scope(engine, immediate=True) as s:
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
    with session_scope(engine) as s:
        return [_info(u) for u in s.scalars(select(User).order_by(User.username))]


def get_user(engine: Engine, username: str) -> UserInfo | None:
    """Internal lookup (no permission): used by login and session restore."""
    with session_scope(engine) as s:
        u = s.scalar(select(User).where(User.username == username.strip().lower()))
        return _info(u) if u else None


def _update_user(engine: Engine, username: str, **changes: object) -> UserInfo:
    with session_scope(engine, immediate=True) as s:
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
    with session_scope(engine) as s:
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
        _clear_failures(engine, info.username)
        _end_sessions(engine, info.username, "password reset")
        return info


# Login ----------------------------------------------------------------------------------
#
# Failures are counted in three scopes. A name is locked only for the address the failures
# came from ("pair"), so an attacker cannot lock `admin` out of another machine. An address
# that fails too often, whatever names it tries, is locked for every name ("addr"). A name
# that fails very often from many addresses is locked everywhere ("name"): a distributed
# guess at one password; its limit is far above what one address may reach alone.


@dataclass(frozen=True)
class LoginLimits:
    per_name_and_address: int = 5
    per_address: int = 20
    per_name: int = 100
    lockout_seconds: int = 300

    @classmethod
    def from_settings(cls) -> LoginLimits:
        from core.config import get_settings

        cfg = get_settings()
        return cls(
            cfg.login_max_failures,
            cfg.login_max_failures_per_address,
            cfg.login_max_failures_per_name,
            cfg.login_lockout_seconds,
        )


def _throttle_keys(name: str, client_addr: str) -> list[tuple[str, str]]:
    addr = (client_addr or "unknown")[:64]
    return [("pair", f"{name}|{addr}"[:200]), ("addr", addr), ("name", name[:200])]


def _limit(limits: LoginLimits, scope: str) -> int:
    return {
        "pair": limits.per_name_and_address,
        "addr": limits.per_address,
        "name": limits.per_name,
    }[scope]


def _clear_failures(engine: Engine, username: str, client_addr: str = "") -> None:
    """A successful login or a password reset clears the name's counters (not the address's)."""
    name = username.strip().lower()[:64]
    with session_scope(engine, immediate=True) as s:
        s.execute(
            delete(LoginThrottle).where(
                (LoginThrottle.scope == "name") & (LoginThrottle.key == name)
                | (LoginThrottle.scope == "pair") & LoginThrottle.key.startswith(name + "|")
            )
        )


def lockout_until(engine: Engine, username: str, client_addr: str = "") -> datetime | None:
    """When the lock that applies to this name from this address ends (None: not locked)."""
    name = username.strip().lower()[:64]
    now = utcnow()
    until = None
    with session_scope(engine) as s:
        for scope, key in _throttle_keys(name, client_addr):
            row = s.get(LoginThrottle, (scope, key))
            if row and row.locked_until and row.locked_until > now:
                until = max(until, row.locked_until) if until else row.locked_until
    return until


def record_login_failure(
    engine: Engine, username: str, client_addr: str = "", limits: LoginLimits | None = None
) -> datetime | None:
    """Count a failure for this name (existing or not) and address; lock at a limit."""
    limits = limits or LoginLimits.from_settings()
    name = username.strip().lower()[:64] or "(empty)"
    locked: list[tuple[str, datetime]] = []
    now = utcnow()
    with session_scope(engine, immediate=True) as s:
        for scope, key in _throttle_keys(name, client_addr):
            row = s.get(LoginThrottle, (scope, key))
            if row is None:
                row = LoginThrottle(scope=scope, key=key, failures=0)
                s.add(row)
            if row.locked_until and row.locked_until <= now:
                row.failures = 0  # the previous lockout is over: start counting afresh
                row.locked_until = None
            row.failures += 1
            row.last_failure_at = now
            if row.failures >= _limit(limits, scope) and row.locked_until is None:
                row.locked_until = now + timedelta(seconds=limits.lockout_seconds)
                locked.append((scope, row.locked_until))
    record(
        engine, name, "auth.login", target=name, outcome="failed", detail={"address": client_addr}
    )
    for scope, until in locked:
        record(
            engine,
            "system",
            "auth.lockout",
            target=name if scope != "addr" else client_addr,
            outcome="ok",
            detail={
                "scope": {"pair": "name from address", "addr": "address", "name": "name"}[scope],
                "name": name,
                "address": client_addr,
                "until": until.isoformat(),
                "failures": _limit(limits, scope),
            },
        )
    return max((u for _, u in locked), default=None)


def authenticate(
    engine: Engine,
    username: str,
    password: str,
    client_addr: str = "",
    limits: LoginLimits | None = None,
) -> Principal:
    """Check a login. Raises AccountLocked or AuthenticationFailed (never says which part)."""
    limits = limits or LoginLimits.from_settings()
    name = username.strip().lower()
    until = lockout_until(engine, name, client_addr)
    if until is not None:
        record(
            engine,
            name[:64] or "(empty)",
            "auth.login",
            target=name[:255],
            outcome="denied",
            detail={"reason": "locked", "address": client_addr},
        )
        raise AccountLocked(until)
    with session_scope(engine) as s:
        user = s.scalar(select(User).where(User.username == name))
        ok = (
            verify_password(password, user.password_hash)
            if user is not None
            else verify_password(password, _dummy_hash()) and False
        )
        if ok and not user.disabled:
            user.last_login_at = utcnow()
            principal = Principal(user.username, user.role, user.id, user.full_name)
        else:
            principal = None
    if principal is None:
        locked = record_login_failure(engine, name, client_addr, limits)
        if locked is not None:
            raise AccountLocked(locked)
        raise AuthenticationFailed()
    _clear_failures(engine, name, client_addr)
    record(engine, name, "auth.login", target=name, outcome="ok", detail={"address": client_addr})
    return principal


def principal_for(engine: Engine, username: str) -> Principal | None:
    """The principal of an enabled user (session restore, signed tokens); None otherwise."""
    info = get_user(engine, username)
    if info is None or info.disabled:
        return None
    return Principal(info.username, info.role, info.id, info.full_name)


def ensure_admin(engine: Engine, admin_password: str | None = None) -> str | None:
    """On first start create user `admin`. Returns the generated password, if one was made."""
    with session_scope(engine) as s:
        if s.scalar(select(func.count()).select_from(User)):
            return None
    generated = None
    password = admin_password
    if not password:
        password = generated = secrets.token_urlsafe(12)
    _check_password_policy(password)
    with session_scope(engine) as s:
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
