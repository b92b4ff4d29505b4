"""The Streamlit shell under AppTest: sessions per role, pages per role, logout, auth off.

The sign-in form itself is served by ui/server.py and tested over HTTP and in the browser
(tests/e2e/test_foundation_login.py)."""

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core import sessions
from core.permissions import ROLES
from core.users import create_user, principal_for, set_disabled
from tests.conftest import ROOT

FOUNDATION_PAGES = {"Home", "Audit log", "Users"}
EXPECTED = {
    "admin": {"Home", "Audit log", "Users"},
    "auditor": {"Home", "Audit log"},
    "trainer": {"Home"},
    "analyst": {"Home"},
    "user": {"Home"},
}


@pytest.fixture
def db_url(data_dir):
    # The shell's behaviour does not depend on the engine (storage tests cover both), and
    # each AppTest login costs seconds, so these run on SQLite only.
    return f"sqlite:///{data_dir / 'clara.db'}"


@pytest.fixture
def app_env(db_engine, admin):
    st.cache_resource.clear()
    for role in ROLES:
        if role != "admin":
            create_user(db_engine, admin, f"{role}1", "password-1", role)
    yield db_engine
    st.cache_resource.clear()


def _login(engine, username: str) -> AppTest:
    """AppTest has no cookies: hand the app a real session token the way ui/session reads it."""
    token = sessions.open_session(engine, principal_for(engine, username))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["clara_session"] = token
    at.run()
    assert not at.exception, at.exception
    return at


def _signed_out(at: AppTest) -> bool:
    """What a signed-out run shows: the sign-in link (app.py) or, where AppTest reruns only
    the current page, that page's refusal; never the page's content."""
    assert not at.exception, at.exception
    shown = [i.value for i in at.info] + [e.value for e in at.error]
    return any("not signed in" in m or m == "Please log in." for m in shown) and not any(
        t.value == "CLARA Workbench" and "System status" in str(at.main) for t in at.title
    )


@pytest.mark.parametrize("role", list(EXPECTED))
def test_each_role_sees_its_pages(app_env, role):
    username = "admin" if role == "admin" else f"{role}1"
    at = _login(app_env, username)
    visible = set(at.session_state["nav_pages"]) & FOUNDATION_PAGES
    assert visible == EXPECTED[role]
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert username in sidebar and role in sidebar
    assert any(t.value == "CLARA Workbench" for t in at.title)  # Home renders


def test_pages_render_for_admin(app_env):
    at = _login(app_env, "admin")
    for path, title in [("pages/audit.py", "Audit log"), ("pages/admin.py", "Users")]:
        at.switch_page(path).run()
        assert not at.exception, at.exception
        assert any(t.value == title for t in at.title)


def test_hidden_page_is_not_reachable(app_env):
    at = _login(app_env, "user1")
    # The page is not even registered for this role, so it cannot be navigated to.
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/admin.py")


def test_no_session_shows_only_the_sign_in_link(app_env):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert "nav_pages" not in at.session_state
    assert any("not signed in" in i.value for i in at.info)
    at.session_state["clara_session"] = "forged-" + "a" * 40
    at.run()
    assert "nav_pages" not in at.session_state


def test_logout_button_revokes_the_session(app_env):
    at = _login(app_env, "analyst1")
    token = at.session_state["clara_session"]
    at.sidebar.button(key="sidebar_logout").click().run()
    assert not at.exception, at.exception
    assert sessions.resolve_session(app_env, token) is None
    assert _signed_out(at)


def test_disabling_a_user_ends_their_open_page_at_the_next_click(app_env, admin):
    at = _login(app_env, "trainer1")
    set_disabled(app_env, admin, "trainer1")
    at.run()
    assert _signed_out(at)


def test_auth_off_shows_banner(app_env, monkeypatch):
    from core.config import get_settings

    monkeypatch.setenv("CLARA_AUTH", "off")
    get_settings.cache_clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("Authentication is OFF" in w.value for w in at.warning)
    assert set(at.session_state["nav_pages"]) >= FOUNDATION_PAGES
