"""Per-session state: the shared engine, settings and the logged-in principal."""

from __future__ import annotations

import streamlit as st

from core.auth import SYSTEM, AccountLocked, AuthenticationFailed, Principal, authenticate
from core.auth import principal_for as _principal_for
from core.config import Settings, get_settings
from core.db import session_scope
from core.db.models import User
from core.system import Startup, prepare

DEV_PRINCIPAL = Principal(username="dev", role="admin", full_name="Developer (auth off)")


@st.cache_resource(show_spinner=False)
def startup() -> Startup:
    """Migrate and bootstrap once per server process; the engine is thread-safe to share."""
    return prepare(get_settings())


def settings() -> Settings:
    return startup().settings


def engine():  # noqa: ANN201
    return startup().engine


def principal() -> Principal | None:
    """The logged-in user, re-read from the database on every run (role changes, disable)."""
    if not settings().auth_enabled:
        return DEV_PRINCIPAL
    if not st.session_state.get("authentication_status"):
        return None
    return _principal_for(engine(), st.session_state.get("username") or "")


def require_principal() -> Principal:
    p = principal()
    if p is None:
        st.error("Please log in.")
        st.stop()
    return p


def build_credentials() -> dict:
    """streamlit-authenticator's credentials dict, built from our user table (enabled only)."""
    users = {}
    with session_scope(engine()) as s:
        for u in s.query(User).filter(User.disabled.is_(False)):
            users[u.username] = {
                "email": u.email or f"{u.username}@localhost",
                "first_name": u.full_name or u.username,
                "last_name": "",
                "password": u.password_hash,
                "roles": [u.role],
            }
    return {"usernames": users}


def check_credentials_with_core(username: str, password: str) -> bool:
    """Replaces the authenticator's own password check so lockout and audit apply."""
    cfg = settings()
    st.session_state.pop("login_error", None)
    try:
        authenticate(
            engine(), username, password, cfg.login_max_failures, cfg.login_lockout_seconds
        )
        return True
    except AccountLocked as err:
        st.session_state["login_error"] = str(err)
    except AuthenticationFailed as err:
        st.session_state["login_error"] = str(err)
    return False


__all__ = ["SYSTEM", "principal", "require_principal", "settings", "engine", "startup"]
