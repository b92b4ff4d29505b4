"""Who sends a request to the chat server: the chat session behind its header or cookie.

Used by the Gradio app (every endpoint asks) and by the HTTP gate in front of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

from sqlalchemy import Engine

from core.config import Settings
from core.permissions import Principal
from core.serving.tokens import SESSION_COOKIE, TOKEN_HEADER
from core.sessions import CHAT, resolve_session, session_id

DEV_PRINCIPAL = Principal(username="dev", role="admin", full_name="Developer (auth off)")


@dataclass(frozen=True)
class Caller:
    """Who sends a request, and from which chat session (None with authentication off)."""

    user: Principal
    session_id: str | None


def _lookup(mapping: Any, name: str) -> str | None:
    if not mapping:
        return None
    for key in (name, name.lower()):
        value = mapping.get(key)
        if value:
            return str(value)
    return None


def session_tokens(request: Any) -> list[str]:
    """Chat session tokens a request carries: the X-Clara-Token header, then the cookie.

    Works on a Starlette request and on gr.Request (live or as the queue keeps it).
    """
    out = []
    header = _lookup(getattr(request, "headers", None), TOKEN_HEADER)
    if header:
        out.append(header)
    cookie = _lookup(getattr(request, "cookies", None), SESSION_COOKIE)
    if not cookie:
        raw = _lookup(getattr(request, "headers", None), "cookie")
        if raw:
            jar = SimpleCookie()
            try:
                jar.load(raw)
            except Exception:  # a malformed Cookie header is no session
                jar = SimpleCookie()
            if SESSION_COOKIE in jar:
                cookie = jar[SESSION_COOKIE].value
    if cookie:
        out.append(cookie)
    return out


def resolve_caller(db: Engine, settings: Settings, request: Any) -> Caller | None:
    """The chat user behind a request: a live chat session whose user holds chat:use."""
    if not settings.auth_enabled:
        return Caller(DEV_PRINCIPAL, None)
    for token in session_tokens(request):
        user = resolve_session(db, token, kind=CHAT)
        if user is not None and user.can("chat:use"):
            return Caller(user, session_id(token))
    return None
