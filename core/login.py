"""Signing in: the password check, and failures counted per name and address."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select

from core.audit import record
from core.db import reading, writing
from core.db.base import utcnow
from core.db.models import LoginThrottle, User
from core.passwords import dummy_hash, verify_password
from core.permissions import AuthError, Principal


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


# # Failures are counted in three scopes. A name is locked only for the address the failures
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


def clear_failures(engine: Engine, username: str, client_addr: str = "") -> None:
    """A successful login or a password reset clears the name's counters (not the address's)."""
    name = username.strip().lower()[:64]
    with writing(engine) as s:
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
    with reading(engine) as s:
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
    with writing(engine) as s:
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
    with writing(engine) as s:
        user = s.scalar(select(User).where(User.username == name))
        ok = (
            verify_password(password, user.password_hash)
            if user is not None
            else verify_password(password, dummy_hash()) and False
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
    clear_failures(engine, name, client_addr)
    record(engine, name, "auth.login", target=name, outcome="ok", detail={"address": client_addr})
    return principal
