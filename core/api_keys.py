"""Personal API keys: created for a user, shown once, stored hashed, listed, revoked.

A key is `clara_<prefix>_<secret>`: the prefix (public, in listings) tells a person which key
is which; the database holds only the sha256 of the whole key, so a copy of the table opens
nothing. A key acts as its user with the role the user has at each request; a revoked or
expired key, or one of a disabled user, is refused at the next request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update

from core.audit import audited
from core.db import reading, writing
from core.db.base import utcnow
from core.db.models import ApiKey, User
from core.errors import ClaraError, NotFound
from core.permissions import Principal, require

KEY_PREFIX = "clara_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
_EXPIRES_RE = re.compile(r"^(\d{1,5})([dhm])$")
# last_used_at is written at most this often per key: a request must not be a write.
_TOUCH_EVERY = timedelta(seconds=60)
MAX_EXPIRY_DAYS = 3650


class ApiKeyError(ClaraError, ValueError):
    """Invalid key-management input (name, expiry)."""


class ApiKeyNotFound(NotFound):
    def __init__(self, key_id: int) -> None:
        super().__init__(
            f"API key {key_id} does not exist or is not yours; `clara users api-key list` "
            "shows the keys you may manage"
        )


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    username: str
    name: str
    prefix: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        return "active"


def parse_expiry(text: str | None) -> timedelta | None:
    """`90d`, `12h`, `30m`; "never" or empty for a key that does not expire."""
    if text is None or text.strip().lower() in ("", "never", "none"):
        return None
    m = _EXPIRES_RE.match(text.strip().lower())
    if not m:
        raise ApiKeyError(
            f"expiry {text!r}: write a number with d (days), h (hours) or m (minutes), "
            "e.g. 90d, or 'never'"
        )
    n, unit = int(m.group(1)), m.group(2)
    delta = {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]
    if delta <= timedelta(0) or delta > timedelta(days=MAX_EXPIRY_DAYS):
        raise ApiKeyError(f"expiry {text!r}: must be between 1m and {MAX_EXPIRY_DAYS}d")
    return delta


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _info(row: ApiKey, username: str) -> ApiKeyInfo:
    return ApiKeyInfo(
        row.id,
        username,
        row.name,
        row.prefix,
        row.created_by,
        row.created_at,
        row.expires_at,
        row.last_used_at,
        row.revoked_at,
    )


def _may_manage(actor: Principal, username: str) -> None:
    """Everyone manages their own keys; other people's only with users:manage."""
    if actor.username != username:
        require(actor, "users:manage")


def create_api_key(
    engine: Engine,
    actor: Principal,
    name: str,
    *,
    expires: str | None = "90d",
    username: str | None = None,
) -> tuple[ApiKeyInfo, str]:
    """A new key for `username` (default: the actor); returns its info and the key itself,
    which is never shown again."""
    owner = (username or actor.username).strip().lower()
    with audited(engine, actor, "users.api_key_create", target=owner, detail={"name": name}) as a:
        _may_manage(actor, owner)
        if not _NAME_RE.match(name or ""):
            raise ApiKeyError(
                f"key name {name!r}: 1-64 characters of letters, digits, space, '.', '_' or "
                "'-', starting with a letter or digit"
            )
        ttl = parse_expiry(expires)
        prefix = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        with writing(engine) as s:
            user = s.scalar(select(User).where(User.username == owner))
            if user is None:
                raise ApiKeyError(f"user {owner!r} does not exist")
            if user.disabled:
                raise ApiKeyError(f"user {owner!r} is disabled; enable the user first")
            row = ApiKey(
                user_id=user.id,
                name=name,
                prefix=prefix,
                key_hash=key_hash(key),
                created_by=actor.username,
                created_at=now,
                expires_at=now + ttl if ttl else None,
            )
            s.add(row)
            s.flush()
            info = _info(row, owner)
        a.detail.update(key_id=info.id, prefix=prefix, expires_at=str(info.expires_at or "never"))
    return info, key


def list_api_keys(
    engine: Engine, actor: Principal, username: str | None = None, *, every_user: bool = False
) -> list[ApiKeyInfo]:
    """The actor's keys, another user's (users:manage), or everyone's (users:manage)."""
    if every_user or (username and username.strip().lower() != actor.username):
        require(actor, "users:manage")
    stmt = select(ApiKey, User.username).join(User, User.id == ApiKey.user_id)
    if not every_user:
        stmt = stmt.where(User.username == (username or actor.username).strip().lower())
    with reading(engine) as s:
        return [_info(k, u) for k, u in s.execute(stmt.order_by(ApiKey.id))]


def revoke_api_key(engine: Engine, actor: Principal, key_id: int) -> ApiKeyInfo:
    """Revoke a key (own, or anyone's with users:manage); revoking twice is harmless."""
    with audited(engine, actor, "users.api_key_revoke", target=str(key_id)) as a:
        with writing(engine) as s:
            found = s.execute(
                select(ApiKey, User.username)
                .join(User, User.id == ApiKey.user_id)
                .where(ApiKey.id == key_id)
            ).first()
            if found is None or (found[1] != actor.username and not actor.can("users:manage")):
                # Another user's key looks exactly like a missing one: ids reveal nothing.
                raise ApiKeyNotFound(key_id)
            row, owner = found
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            info = _info(row, owner)
        a.detail.update(owner=owner, prefix=info.prefix)
    return info


def resolve_api_key(engine: Engine, key: str | None) -> Principal | None:
    """The user a live key acts as, with the role as it is now; None for anything else."""
    if not key or not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    now = utcnow()
    with reading(engine) as s:
        found = s.execute(
            select(ApiKey, User)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.key_hash == key_hash(key))
        ).first()
        if found is None:
            return None
        row, user = found
        if (
            row.revoked_at is not None
            or (row.expires_at is not None and row.expires_at <= now)
            or user.disabled
        ):
            return None
        principal = Principal(user.username, user.role, user.id, user.full_name)
        stale = row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY
        key_id = row.id
    if stale:
        with writing(engine) as s:
            s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
    return principal
