"""The HTTP API's sign-in: short-lived signed access tokens (JWT) and rotating refresh tokens.

`issue_tokens` follows a password check (core.login.authenticate: the same lockout and audit
as the web login). The refresh token is a server-side session (core.sessions, kind "api"):
random, stored as its sha256, revoked by logout, by disabling the user, by a password reset
or a role change. Each refresh replaces it with a new one; presenting a replaced refresh
token again means it was copied, so every token of that sign-in is revoked.

The access token is an HS256 JWT signed with a key derived from the auth secret. It names
the user and its refresh session, never the role: each request reads the role and the
session's state from the database, so a role change, a disabled user or a logout takes
effect at the next request, not when the token expires.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

import jwt
from sqlalchemy import Engine, update

from core.audit import record
from core.db import writing
from core.db.base import utcnow
from core.db.models import AuthSession, User
from core.permissions import AuthError, Principal
from core.sessions import API, open_session, resolve_session_id, session_id

ISSUER = "clara"
AUDIENCE = "clara-api"
# Only this algorithm is accepted on decode: a token declaring "none" or an asymmetric
# algorithm (signed with the secret as a "public key") is refused, never interpreted.
ALGORITHM = "HS256"
_ROTATED = "rotated"


class TokenInvalid(AuthError):
    """Deliberately the same message whatever was wrong: no detail for a guesser."""

    def __init__(self) -> None:
        super().__init__("invalid or expired token")


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int  # seconds the access token lives
    token_type: str = "bearer"


def _signing_key(secret: str) -> bytes:
    # A key of its own, derived from the auth secret: a signature made for the API can never
    # pass as one made elsewhere with the same secret (the web app's signed values).
    return hmac.new(secret.encode("utf-8"), b"clara-api-access-token", hashlib.sha256).digest()


def _access_token(principal: Principal, sid: str, secret: str, ttl: timedelta) -> str:
    now = utcnow()
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": principal.username,
        "sid": sid,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "jti": secrets.token_urlsafe(12),
    }
    return jwt.encode(claims, _signing_key(secret), algorithm=ALGORITHM)


def issue_tokens(
    engine: Engine,
    principal: Principal,
    secret: str,
    *,
    access_ttl: timedelta,
    refresh_ttl: timedelta,
    client_addr: str = "",
    user_agent: str = "",
    family: str | None = None,
) -> TokenPair:
    """A new refresh session and an access token naming it (after a successful login)."""
    refresh = open_session(
        engine,
        principal,
        kind=API,
        client_addr=client_addr,
        user_agent=user_agent,
        ttl_seconds=refresh_ttl.total_seconds(),
        # Every token of one sign-in shares the first session's id: reuse revokes them all.
        purpose=family or "",
    )
    sid = session_id(refresh)
    if family is None:
        with writing(engine) as s:
            s.execute(update(AuthSession).where(AuthSession.id == sid).values(purpose=sid[:32]))
    return TokenPair(
        _access_token(principal, sid, secret, access_ttl),
        refresh,
        int(access_ttl.total_seconds()),
    )


def verify_access_token(engine: Engine, token: str, secret: str) -> tuple[Principal, str] | None:
    """The user of a valid, unexpired access token whose sign-in is still live, with the
    sign-in's session id; else None."""
    if not token or len(token) > 4096:
        return None
    try:
        claims = jwt.decode(
            token,
            _signing_key(secret),
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "sid", "aud", "iss"]},
        )
    except jwt.PyJWTError:
        return None
    sid = claims.get("sid")
    if not isinstance(sid, str) or len(sid) != 64:
        return None
    principal = resolve_session_id(engine, sid, kind=API)
    if principal is None or principal.username != claims.get("sub"):
        return None
    return principal, sid


def refresh_tokens(
    engine: Engine,
    refresh_token: str,
    secret: str,
    *,
    access_ttl: timedelta,
    refresh_ttl: timedelta,
    client_addr: str = "",
    user_agent: str = "",
) -> TokenPair:
    """Exchange a refresh token for a new pair; the old refresh token stops working."""
    if not refresh_token or len(refresh_token) > 200:
        raise TokenInvalid()
    sid = session_id(refresh_token)
    now = utcnow()
    principal = None
    with writing(engine) as s:
        row = s.get(AuthSession, sid)
        if row is None or row.kind != API:
            raise TokenInvalid()
        family, username = row.purpose, row.username
        reused = row.revoked_at is not None and row.revoked_reason == _ROTATED
        if not reused:
            # One UPDATE decides between two concurrent refreshes with the same token.
            won = s.execute(
                update(AuthSession)
                .where(
                    AuthSession.id == sid,
                    AuthSession.revoked_at.is_(None),
                    AuthSession.expires_at > now,
                )
                .values(revoked_at=now, revoked_reason=_ROTATED)
            ).rowcount
            user = s.get(User, row.user_id)
            if won != 1 or user is None or user.disabled:
                raise TokenInvalid()
            principal = Principal(user.username, user.role, user.id, user.full_name)
    if principal is None:
        revoke_family(engine, family, "refresh token reused")
        record(
            engine,
            username,
            "auth.token_reuse",
            target=username,
            outcome="denied",
            detail={"address": client_addr},
        )
        raise TokenInvalid()
    return issue_tokens(
        engine,
        principal,
        secret,
        access_ttl=access_ttl,
        refresh_ttl=refresh_ttl,
        client_addr=client_addr,
        user_agent=user_agent,
        family=family,
    )


def revoke_family(engine: Engine, family: str, reason: str) -> None:
    """End every API session of one sign-in (logout, or a replayed refresh token)."""
    if not family:
        return
    with writing(engine) as s:
        s.execute(
            update(AuthSession)
            .where(
                AuthSession.kind == API,
                AuthSession.purpose == family,
                AuthSession.revoked_at.is_(None),
            )
            .values(revoked_at=utcnow(), revoked_reason=reason[:64])
        )


def logout(engine: Engine, principal: Principal, sid: str) -> None:
    """End the sign-in an access token belongs to (all its refresh tokens) and audit it."""
    with writing(engine) as s:
        row = s.get(AuthSession, sid)
        family = row.purpose if row is not None and row.kind == API else ""
    revoke_family(engine, family, "logout")
    record(
        engine,
        principal.username,
        "auth.logout",
        target=principal.username,
        detail={"channel": "api"},
    )
