"""Streamlit entry point: page config, session check, navigation filtered by role.

Signing in happens on ui/server.py's HTML form (it sets the HttpOnly session cookie); this
script only checks the session on every run. Run it through `clara up` (or
`streamlit run ui/server.py`); `streamlit run app.py` alone has no sign-in page.
"""

from __future__ import annotations

import streamlit as st

from core.config import ConfigError
from core.db import DatabaseUnavailable
from core.sessions import end_web_session
from ui import session
from ui.navigation import pages_for

st.set_page_config(page_title="CLARA Workbench", page_icon=":material/hub:", layout="wide")

try:
    cfg = session.settings()
except (DatabaseUnavailable, ConfigError) as err:
    st.error(f"CLARA cannot start: {err}")
    st.stop()


def _signed_out_page() -> None:
    reason = "bye=1" if st.session_state.pop("app_logged_out", False) else "ended=1"
    st.title("CLARA Workbench")
    st.info("Your session has ended or you are not signed in.", icon=":material/lock:")
    st.link_button("Sign in", f"/auth/login?{reason}", type="primary")
    # The sign-in form is served outside Streamlit (it sets the HttpOnly cookie): go there.
    # A constant script, nothing of the user's in it.
    st.html(
        f'<script>window.location.replace("/auth/login?{reason}")</script>',
        unsafe_allow_javascript=True,
    )


def _logout(current) -> None:
    end_web_session(session.engine(), session.session_token(), current)
    st.session_state["app_logged_out"] = True


if cfg.auth_enabled:
    user = session.principal()
    if user is None:
        # Registered so that Streamlit never falls back to discovering pages/; rendered
        # directly, whatever page the browser asked for.
        st.navigation(
            [st.Page(_signed_out_page, title="Sign in", icon=":material/login:")],
            position="hidden",
        ).run()
        st.stop()
    with st.sidebar:
        st.markdown(f"**{user.full_name or user.username}**  \n`{user.username}` · {user.role}")
        st.button("Logout", key="sidebar_logout", on_click=_logout, args=(user,))
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
