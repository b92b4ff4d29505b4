"""`clara up` as the README starts it, a real login form in Chromium, the Home page."""

import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_login_and_home_page(workbench, page):
    login(page, workbench, "admin", workbench.admin_password)
    page.get_by_role("heading", name="CLARA Workbench").wait_for()
    page.get_by_text("System status").wait_for()
    page.get_by_text("reachable", exact=True).wait_for()
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("admin").first.wait_for()
    # Admin sees the admin pages in the navigation.
    sidebar.get_by_text("Users").wait_for()
    sidebar.get_by_text("Audit log").wait_for()
    # Logout returns to the login form.
    sidebar.get_by_role("button", name="Logout").click()
    page.get_by_role("textbox", name="Username").wait_for()


def test_wrong_password_is_refused_without_detail(workbench, page):
    page.goto(workbench.url)
    page.get_by_role("textbox", name="Username").fill("admin")
    page.get_by_role("textbox", name="Password").fill("definitely-wrong")
    page.get_by_role("button", name="Login").click()
    page.get_by_text("Wrong user name or password.").wait_for()
    assert page.get_by_text("System status").count() == 0


def test_user_role_sees_only_its_pages(workbench, page):
    r = workbench.cli("users", "add", "uma", "--role", "user", "--password", "uma-pass-1")
    assert r.returncode == 0, r.stderr
    login(page, workbench, "uma", "uma-pass-1")
    page.get_by_text("System status").wait_for()
    sidebar = page.get_by_test_id("stSidebar")
    assert sidebar.get_by_text("Audit log").count() == 0
    assert sidebar.get_by_text("Users", exact=True).count() == 0
