"""Server-side sign-in sessions and single-use hand-over tokens.

A session is a random token the client keeps in an HttpOnly cookie (or a header); the
database keeps only its sha256, with who, when, from where, and whether it was revoked.
So logout really ends a session (a copied cookie stops working), and disabling a user,
resetting a password or changing a role ends every session of that user at once.

A hand-over token moves a sign-in from one server to another (the Streamlit page to the
chat server): it is single-use, expires within a minute, and the session it opens is a
child of the web session, so logging out of the web app also ends the chat.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import Engine, select, update

from core.db import reading, writing
from core.db.base import utcnow
from core.db.models import AuthSession, User
from core.errors import ClaraError
from core.permissions import Principal

WEB = "web"
CHAT = "chat"
API = "api"  # the HTTP API's refresh tokens; access tokens name one (core.api_tokens)
HANDOVER = "handover"

# last_seen_at is written at most this often per session: a page rerun must not be a write.
_TOUCH_EVERY = timedelta(seconds=60)


class HandoverInvalid(ClaraError):
    """A hand-over token is unknown, used, expired or meant for something else."""


def session_id(token: str) -> str:
    """The row id of a token: its sha256, so the table never holds a usable token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _default_ttl() -> float:
    from core.config import get_settings

    return get_settings().session_expiry_days * 86400


def open_session(
    engine: Engine,
    principal: Principal,
    *,
    kind: str = WEB,
    client_addr: str = "",
    user_agent: str = "",
    ttl_seconds: float | None = None,
    parent_id: str | None = None,
    purpose: str = "",
) -> str:
    """Start a session for an enabled user and return its token (shown to nobody else)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    ttl = ttl_seconds if ttl_seconds is not None else _default_ttl()
    with writing(engine) as s:
        user = s.scalar(select(User).where(User.username == principal.username))
        if user is None or user.disabled:
            raise HandoverInvalid(f"user {principal.username!r} is unknown or disabled")
        s.add(
            AuthSession(
                id=session_id(token),
                kind=kind,
                purpose=purpose,
                user_id=user.id,
                username=user.username,
                parent_id=parent_id,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl),
                last_seen_at=now,
                client_addr=(client_addr or "")[:64],
                user_agent=(user_agent or "")[:255],
            )
        )
    return token


def _parent_alive(s, parent_id: str | None, now) -> bool:
    if parent_id is None:
        return True
    parent = s.get(AuthSession, parent_id)
    return (
        parent is not None
        and parent.revoked_at is None
        and parent.expires_at > now
        and _parent_alive(s, parent.parent_id, now)
    )


def resolve_session(
    engine: Engine, token: str | None, *, kind: str | None = None
) -> Principal | None:
    """The user of a live session, with the role as it is now; None for anything else."""
    if not token or len(token) > 200:
        return None
    return resolve_session_id(engine, session_id(token), kind=kind)


def resolve_session_id(engine: Engine, sid: str, *, kind: str | None = None) -> Principal | None:
    """As resolve_session, by the session's id (what a signed access token names)."""
    now = utcnow()
    with reading(engine) as s:
        row = s.get(AuthSession, sid)
        if (
            row is None
            or row.kind == HANDOVER
            or (kind is not None and row.kind != kind)
            or row.revoked_at is not None
            or row.expires_at <= now
            or not _parent_alive(s, row.parent_id, now)
        ):
            return None
        user = s.get(User, row.user_id)
        if user is None or user.disabled:
            return None
        principal = Principal(user.username, user.role, user.id, user.full_name)
        stale = row.last_seen_at is None or now - row.last_seen_at > _TOUCH_EVERY
    if stale:
        with writing(engine) as s:
            s.execute(update(AuthSession).where(AuthSession.id == sid).values(last_seen_at=now))
    return principal


def revoke_session(engine: Engine, token: str | None, reason: str = "logout") -> None:
    """End one session and every session opened from it (its chat sessions)."""
    if not token:
        return
    _revoke_tree(engine, [session_id(token)], reason)


def _revoke_tree(engine: Engine, ids: list[str], reason: str) -> None:
    now = utcnow()
    with writing(engine) as s:
        frontier = list(ids)
        while frontier:
            s.execute(
                update(AuthSession)
                .where(AuthSession.id.in_(frontier), AuthSession.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason=reason[:64])
            )
            frontier = list(
                s.scalars(
                    select(AuthSession.id).where(
                        AuthSession.parent_id.in_(frontier), AuthSession.revoked_at.is_(None)
                    )
                )
            )


def revoke_user_sessions(engine: Engine, username: str, reason: str) -> int:
    """End every live session and unused hand-over of a user; returns how many ended."""
    now = utcnow()
    with writing(engine) as s:
        result = s.execute(
            update(AuthSession)
            .where(
                AuthSession.username == username.strip().lower(),
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > now,
            )
            .values(revoked_at=now, revoked_reason=reason[:64])
        )
        return result.rowcount or 0


def issue_handover(
    engine: Engine,
    principal: Principal,
    *,
    purpose: str,
    parent_id: str | None = None,
    ttl_seconds: float = 60,
) -> str:
    """A single-use token that another server of ours exchanges for its own session."""
    return open_session(
        engine,
        principal,
        kind=HANDOVER,
        purpose=purpose,
        parent_id=parent_id,
        ttl_seconds=ttl_seconds,
    )


def redeem_handover(
    engine: Engine, token: str | None, *, purpose: str
) -> tuple[Principal, str | None]:
    """Use a hand-over token once; returns the user and the session it was issued from."""
    if not token or len(token) > 200:
        raise HandoverInvalid("the sign-in link is not valid; reload the page")
    sid = session_id(token)
    now = utcnow()
    with writing(engine) as s:
        # One UPDATE decides: of two concurrent redeems, exactly one changes the row.
        used = s.execute(
            update(AuthSession)
            .where(
                AuthSession.id == sid,
                AuthSession.kind == HANDOVER,
                AuthSession.purpose == purpose,
                AuthSession.used_at.is_(None),
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > now,
            )
            .values(used_at=now)
        ).rowcount
        if used != 1:
            row = s.get(AuthSession, sid)
            if row is not None and row.used_at is not None:
                raise HandoverInvalid("the sign-in link was used already; reload the page")
            if row is not None and row.expires_at <= now:
                raise HandoverInvalid("the sign-in link has expired; reload the page")
            raise HandoverInvalid("the sign-in link is not valid; reload the page")
        row = s.get(AuthSession, sid)
        if not _parent_alive(s, row.parent_id, now):
            raise HandoverInvalid("the session that made this link has ended; sign in again")
        user = s.get(User, row.user_id)
        if user is None or user.disabled:
            raise HandoverInvalid("the sign-in link is not valid; reload the page")
        return Principal(user.username, user.role, user.id, user.full_name), row.parent_id


def handover_owner(engine: Engine, token: str | None, *, purpose: str) -> str | None:
    """The username a hand-over token was issued to, used or not, expired or not.

    Only names the owner, never signs anyone in: the chat server uses it to let a browser
    that already holds that same user's chat session back in with a link it used before.
    None for an unknown or revoked token, or one meant for something else.
    """
    if not token or len(token) > 200:
        return None
    with reading(engine) as s:
        row = s.get(AuthSession, session_id(token))
        if (
            row is None
            or row.kind != HANDOVER
            or row.purpose != purpose
            or row.revoked_at is not None
        ):
            return None
        return row.username


def end_web_session(engine: Engine, token: str | None, user: Principal | None) -> None:
    """Logout: revoke the session (and its chat sessions) and audit it."""
    from core.audit import record

    revoke_session(engine, token, "logout")
    if user is not None:
        record(engine, user.username, "auth.logout", target=user.username)
