"""The Streamlit shell under AppTest: login per role, pages per role, auth off banner."""

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core import auth
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
    for role in auth.ROLES:
        if role != "admin":
            auth.create_user(db_engine, admin, f"{role}1", "password-1", role)
    yield db_engine
    st.cache_resource.clear()


def _login(username: str, password: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    at.text_input[0].input(username)
    at.text_input[1].input(password)
    at.button[0].click().run()
    assert not at.exception, at.exception
    if at.session_state["authentication_status"]:
        # In a browser the cookie component reruns the script once the cookie is set.
        at.run()
        assert not at.exception, at.exception
    return at


@pytest.mark.parametrize("role", list(EXPECTED))
def test_each_role_sees_its_pages(app_env, role):
    username = "admin" if role == "admin" else f"{role}1"
    at = _login(username, "adminpass1" if role == "admin" else "password-1")
    assert at.session_state["authentication_status"] is True
    visible = set(at.session_state["nav_pages"]) & FOUNDATION_PAGES
    assert visible == EXPECTED[role]
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert username in sidebar and role in sidebar
    assert any(t.value == "CLARA Workbench" for t in at.title)  # Home renders


def test_pages_render_for_admin(app_env):
    at = _login("admin", "adminpass1")
    for path, title in [("pages/audit.py", "Audit log"), ("pages/admin.py", "Users")]:
        at.switch_page(path).run()
        assert not at.exception, at.exception
        assert any(t.value == title for t in at.title)


def test_hidden_page_is_not_reachable(app_env):
    at = _login("user1", "password-1")
    # The page is not even registered for this role, so it cannot be navigated to.
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/admin.py")


def test_wrong_password_shows_generic_error(app_env):
    at = _login("admin", "not-the-password")
    assert at.session_state["authentication_status"] is False
    assert [e.value for e in at.error] == ["Wrong user name or password."]
    at = _login("nobody", "not-the-password")
    assert [e.value for e in at.error] == ["Wrong user name or password."]


def test_lockout_message_after_five_failures(app_env):
    for _ in range(5):
        at = _login("analyst1", "wrong-password")
    assert "Too many failed attempts" in at.error[0].value
    at = _login("analyst1", "password-1")
    assert at.session_state["authentication_status"] is not True


def test_auth_off_shows_banner(app_env, monkeypatch):
    from core.config import get_settings

    monkeypatch.setenv("CLARA_AUTH", "off")
    get_settings.cache_clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("Authentication is OFF" in w.value for w in at.warning)
    assert set(at.session_state["nav_pages"]) >= FOUNDATION_PAGES
