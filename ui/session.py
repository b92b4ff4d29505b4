"""Per-session state: the shared engine, settings and the logged-in principal."""

from __future__ import annotations

import streamlit as st

from core.config import Settings, get_settings
from core.permissions import SYSTEM, Principal
from core.sessions import WEB, resolve_session, session_id
from core.system import Startup, prepare

# The cookie ui/server.py sets (HttpOnly: the browser's scripts never see it). Tests under
# AppTest, which has no cookies, put a session token at this session_state key instead; no
# widget uses the key, so a browser cannot set it.
SESSION_COOKIE = "clara_session"

DEV_PRINCIPAL = Principal(username="dev", role="admin", full_name="Developer (auth off)")


@st.cache_resource(show_spinner=False)
def startup() -> Startup:
    """Migrate and bootstrap once per server process; the engine is thread-safe to share."""
    return prepare(get_settings())


def settings() -> Settings:
    return startup().settings


def engine():
    return startup().engine


def session_token() -> str | None:
    """The web session token of this browser session (cookie), if any."""
    token = st.context.cookies.get(SESSION_COOKIE)
    if not isinstance(token, str) or not token:  # AppTest's context has no real cookies
        token = st.session_state.get(SESSION_COOKIE)
    return token if isinstance(token, str) and token else None


def current_session_id() -> str | None:
    """The id (not the token) of this browser's web session, for hand-overs to the chat."""
    token = session_token()
    return session_id(token) if token else None


def principal() -> Principal | None:
    """The signed-in user, re-read from the database on every run: a revoked session, a
    disabled user or a changed role takes effect at the next click."""
    if not settings().auth_enabled:
        return DEV_PRINCIPAL
    return resolve_session(engine(), session_token(), kind=WEB)


def require_principal() -> Principal:
    p = principal()
    if p is None:
        st.error("Please log in.")
        st.stop()
    return p


__all__ = [
    "SYSTEM",
    "current_session_id",
    "engine",
    "principal",
    "require_principal",
    "session_token",
    "settings",
    "startup",
]
