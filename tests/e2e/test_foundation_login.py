"""`clara up` as the README starts it: the sign-in form in Chromium, and the attacks of
issue 10 (items 1, 3, 8) sent as an outsider would send them, over HTTP and websocket.

The workbench here trusts X-Forwarded-For / -Proto (CLARA_TRUST_PROXY_HEADERS), so one test
can sign in "from" several addresses and "over https"; no traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The secret that development mode used to sign sessions with, as published in the repo.
PUBLISHED_SECRET = "change-me-clara-development-secret"


@pytest.fixture(scope="module")
def workbench(make_workbench):
    return make_workbench(CLARA_TRUST_PROXY_HEADERS="true", CLARA_LOGIN_MAX_FAILURES="3")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_admin_jwt(secret: str = PUBLISHED_SECRET) -> str:
    """What streamlit-authenticator's cookie held: an HS256 token naming the user."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"username": "admin", "exp_date": time.time() + 86400}
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


def http_login(
    wb, username: str = "admin", password: str | None = None, **headers: str
) -> httpx.Client:
    client = httpx.Client(base_url=wb.url, headers=headers, timeout=30)
    form = client.get("/auth/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    r = client.post(
        "/auth/login",
        data={
            "username": username,
            "password": password or wb.admin_password,
            "csrf": csrf,
            "next": "/",
        },
    )
    client.last_login = r  # type: ignore[attr-defined]
    return client


def ws_status(wb, cookie: str | None) -> int | str:
    """Open Streamlit's websocket as the browser does; the handshake status or 'open'."""
    url = wb.url.replace("http://", "ws://") + "/_stcore/stream"
    headers = {"Cookie": cookie} if cookie else {}
    try:
        with ws_connect(
            url, additional_headers=headers, subprotocols=["streamlit"], open_timeout=10
        ):
            return "open"
    except InvalidStatus as err:
        return err.response.status_code


def html_get(wb, path: str, cookie: str | None = None) -> httpx.Response:
    headers = {"Accept": "text/html"}
    if cookie:
        headers["Cookie"] = cookie
    return httpx.get(wb.url + path, headers=headers, follow_redirects=False, timeout=30)


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
    # The session cookie is out of reach of the page's scripts.
    cookie = next(c for c in page.context.cookies() if c["name"] == "clara_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"]
    assert "clara_session" not in page.evaluate("document.cookie")
    # Logout ends the session and goes back to the sign-in form.
    sidebar.get_by_role("button", name="Logout").click()
    page.get_by_text("You are logged out.").wait_for()
    page.get_by_role("textbox", name="Username").wait_for()
    # A reload with the old cookie does not bring the session back.
    page.goto(workbench.url)
    page.get_by_role("textbox", name="Username").wait_for()
    assert page.get_by_text("System status").count() == 0


def test_wrong_password_is_refused_without_detail(workbench, page):
    page.goto(workbench.url)
    page.get_by_role("textbox", name="Username").fill("nobody")
    page.get_by_role("textbox", name="Password").fill("definitely-wrong")
    page.get_by_role("button", name="Login").click()
    page.get_by_text("Wrong user name or password.").wait_for()
    assert page.get_by_text("System status").count() == 0


def test_user_role_sees_only_its_pages(workbench, page):
    r = workbench.cli("users", "add", "uma", "--role", "user", "--password", "uma-pass-1")
    assert r.returncode == 0, r.stderr
    login(page, workbench, "uma", "uma-pass-1")
    page.get_by_role("heading", name="CLARA Workbench").wait_for()
    sidebar = page.get_by_test_id("stSidebar")
    assert sidebar.get_by_text("Audit log").count() == 0
    assert sidebar.get_by_text("Users", exact=True).count() == 0


def test_forged_admin_cookie_is_refused(workbench):
    # Item 1: the old default mode accepted this cookie as an admin session.
    for value in (forged_admin_jwt(), forged_admin_jwt("any-guess"), "A" * 43):
        r = html_get(workbench, "/", f"clara_session={value}")
        assert r.status_code == 303 and r.headers["location"].startswith("/auth/login")
        assert ws_status(workbench, f"clara_session={value}") == 403


def test_every_route_needs_a_session(workbench):
    for path in ("/", "/training", "/admin", "/?embed=true"):
        r = html_get(workbench, path)
        assert r.status_code == 303, path
    plain = httpx.Client(base_url=workbench.url, timeout=30)
    for method, path in [
        ("GET", "/_stcore/host-config"),
        ("GET", "/_stcore/metrics"),
        ("PUT", "/_stcore/upload_file/some-session/some-file"),
        ("DELETE", "/_stcore/upload_file/some-session/some-file"),
        ("GET", "/media/0123456789abcdef.png"),
        ("GET", "/component/x/index.html"),
        ("GET", "/app/static/x.png"),
        ("POST", "/"),
    ]:
        r = plain.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
    assert ws_status(workbench, None) == 403
    # Open: health probes, the sign-in form, the frontend's bundles.
    assert plain.get("/_stcore/health").status_code == 200
    assert plain.get("/auth/login").status_code == 200


def test_copied_cookie_is_dead_after_logout(workbench):
    # Item 3: the old cookie kept working for a day after Logout.
    client = http_login(workbench)
    assert client.last_login.status_code == 303
    set_cookie = client.last_login.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie
    copied = f"clara_session={client.cookies['clara_session']}"
    assert html_get(workbench, "/", copied).status_code == 200
    assert ws_status(workbench, copied) == "open"
    assert client.post("/auth/logout").status_code == 303
    assert html_get(workbench, "/", copied).status_code == 303
    assert ws_status(workbench, copied) == 403


def test_disable_and_password_reset_end_open_sessions(workbench):
    r = workbench.cli("users", "add", "vera", "--role", "analyst", "--password", "vera-pass-1")
    assert r.returncode == 0, r.stderr
    client = http_login(workbench, "vera", "vera-pass-1")
    cookie = f"clara_session={client.cookies['clara_session']}"
    assert html_get(workbench, "/", cookie).status_code == 200
    r = workbench.cli("users", "reset-password", "vera", "--password", "vera-pass-2")
    assert r.returncode == 0, r.stderr
    assert html_get(workbench, "/", cookie).status_code == 303
    client = http_login(workbench, "vera", "vera-pass-2")
    cookie = f"clara_session={client.cookies['clara_session']}"
    assert workbench.cli("users", "disable", "vera").returncode == 0
    assert html_get(workbench, "/", cookie).status_code == 303


def test_secure_cookie_over_https_and_no_open_redirect(workbench):
    client = http_login(workbench, **{"X-Forwarded-Proto": "https"})
    assert "Secure" in client.last_login.headers["set-cookie"]
    form = httpx.get(workbench.url + "/auth/login?next=//evil.example/x")
    assert "//evil.example" not in form.text
    # A form posted from another site carries no CSRF cookie: refused.
    r = httpx.post(
        workbench.url + "/auth/login",
        data={"username": "admin", "password": workbench.admin_password, "csrf": "x"},
    )
    assert r.status_code == 401 and "clara_session" not in r.headers.get("set-cookie", "")


def test_attacker_cannot_lock_admin_out_from_another_address(workbench):
    # Item 8: failures from one address lock the name only for that address.
    attacker = {"X-Forwarded-For": "203.0.113.66"}
    for _ in range(3):
        r = http_login(workbench, "admin", "wrong-guess", **attacker).last_login
        assert r.status_code == 401
    r = http_login(workbench, "admin", None, **attacker).last_login
    assert r.status_code == 401 and "Too many failed attempts" in r.text
    r = http_login(workbench, "admin", None, **{"X-Forwarded-For": "192.0.2.5"}).last_login
    assert r.status_code == 303 and "clara_session=" in r.headers["set-cookie"]


def test_clara_up_serves_the_api_and_it_is_closed_by_default(workbench):
    # The default mode (`make run`) starts the API too; a forged token with what the repo
    # publishes (the derivation of the signing key, an old published secret) gets nothing.
    from tests.waiting import wait_until_http

    wait_until_http(workbench.api_url + "/api/v1/health", limit=120)
    api = httpx.Client(base_url=workbench.api_url, timeout=30)
    assert api.get("/api/v1/auth/me").status_code == 401
    claims = {
        "iss": "clara",
        "aud": "clara-api",
        "sub": "admin",
        "sid": "0" * 64,
        "iat": int(time.time()),
        "exp": int(time.time()) + 600,
    }
    for secret in (PUBLISHED_SECRET, "any-guess"):
        key = hmac.new(secret.encode(), b"clara-api-access-token", hashlib.sha256).digest()
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims).encode())
        mac = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
        forged = f"{header}.{body}.{_b64(mac)}"
        r = api.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401
    pair = api.post(
        "/api/v1/auth/token",
        json={"username": "admin", "password": workbench.admin_password},
    ).json()
    me = api.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.json()["role"] == "admin"
