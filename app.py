"""Streamlit entry point: page config, login gate, navigation filtered by role."""

from __future__ import annotations

import streamlit as st
import streamlit_authenticator as stauth
from streamlit_authenticator.utilities.exceptions import LoginError

from core.audit import record
from core.config import ConfigError
from core.db import DatabaseUnavailable
from ui import session
from ui.navigation import pages_for

st.set_page_config(page_title="CLARA Workbench", page_icon=":material/hub:", layout="wide")

try:
    cfg = session.settings()
except (DatabaseUnavailable, ConfigError) as err:
    st.error(f"CLARA cannot start: {err}")
    st.stop()


def _login_page() -> None:
    st.title("CLARA Workbench")
    st.caption("From a document corpus to fine-tuned adapters you can talk to.")
    try:
        authenticator.login(
            location="main",
            key="login",
            fields={
                "Form name": "Login",
                "Username": "Username",
                "Password": "Password",
                "Login": "Login",
            },
        )
    except LoginError as err:
        st.error(str(err))
    if st.session_state.get("authentication_status") is False:
        st.error(st.session_state.get("login_error") or "Wrong user name or password.")
    if st.session_state.get("authentication_status"):
        # No st.rerun() here: the cookie component must reach the browser first; it
        # reruns the script itself once the cookie is set.
        st.success("Logged in.")


if cfg.auth_enabled:
    authenticator = stauth.Authenticate(
        session.build_credentials(),
        cookie_name="clara_session",
        cookie_key=cfg.auth_secret.get_secret_value(),
        cookie_expiry_days=cfg.session_expiry_days,
        auto_hash=False,
    )
    # Our core does the password check, so lockout, timing and audit apply to the web login.
    authenticator.authentication_controller.authentication_model.check_credentials = (
        session.check_credentials_with_core
    )
    user = session.principal()
    if user is None:
        if st.session_state.get("authentication_status"):
            # Logged in by cookie but since disabled or deleted: end that session.
            for k in ("authentication_status", "username", "name", "roles"):
                st.session_state.pop(k, None)
        st.navigation(
            [st.Page(_login_page, title="Login", icon=":material/login:")], position="hidden"
        ).run()
        st.stop()
    with st.sidebar:
        st.markdown(f"**{user.full_name or user.username}**  \n`{user.username}` · {user.role}")
        # Not key="logout": the authenticator keeps its own session_state["logout"].
        authenticator.logout(
            "Logout",
            location="sidebar",
            key="sidebar_logout",
            callback=lambda _info: record(
                session.engine(), user.username, "auth.logout", target=user.username
            ),
        )
else:
    user = session.principal()
    st.warning(
        "Authentication is OFF (CLARA_AUTH=off, development only): everyone acts as admin.",
        icon=":material/warning:",
    )

st.session_state.setdefault("selection_documents", [])

sections: dict[str, list] = {}
visible = pages_for(user.can)
# Read by tests and by pages that offer links to other pages.
st.session_state["nav_pages"] = [entry.title for entry in visible]
for entry in visible:
    sections.setdefault(entry.section, []).append(
        st.Page(entry.path, title=entry.title, icon=entry.icon, default=entry.default)
    )
st.navigation(sections).run()
