"""The web app's server: Streamlit (app.py) behind our sign-in, as one ASGI app.

`clara up` runs `streamlit run ui/server.py`. Signing in happens here, on a plain HTML form,
not inside the Streamlit script, because only a server response can set an HttpOnly cookie:
the session token never reaches JavaScript, so a script injected into a page cannot steal it.
Every request but the sign-in routes, health and static assets needs a live session (the
Streamlit websocket included), and app.py checks the session again on every run, so logout,
disable, password reset and role change take effect at the next click.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote, urlsplit

import streamlit as st
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from core.config import Settings
from core.login import AccountLocked, AuthenticationFailed, authenticate
from core.sessions import WEB, end_web_session, open_session, resolve_session
from core.system import Startup
from ui import session

APP_PATH = Path(__file__).resolve().parent.parent / "app.py"
SESSION_COOKIE = session.SESSION_COOKIE
CSRF_COOKIE = "clara_login_csrf"
CSRF_MAX_AGE_S = 3600

# Reachable without a session: the sign-in itself, health probes, the frontend's bundles.
_OPEN_PREFIXES = ("/auth/", "/_stcore/health", "/_stcore/script-health-check", "/static/")
_OPEN_PATHS = {"/favicon.png", "/favicon.ico", "/manifest.json", "/robots.txt"}


def _startup() -> Startup:
    """The same prepared storage the app's script uses (one engine, one migration check)."""
    return session.startup()


def client_address(request_or_scope, settings: Settings) -> str:
    """The caller's address; behind a proxy, its X-Forwarded-For only when trusted."""
    scope = request_or_scope.scope if isinstance(request_or_scope, Request) else request_or_scope
    if settings.trust_proxy_headers:
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                return value.decode("latin-1").split(",")[0].strip()[:64]
    client = scope.get("client")
    return (client[0] if client else "")[:64]


def _is_https(scope, settings: Settings) -> bool:
    if scope.get("scheme") in ("https", "wss"):
        return True
    if settings.trust_proxy_headers:
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-proto":
                return value.decode("latin-1").strip().lower() == "https"
    return False


def _csrf_serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.auth_secret_value(), salt="clara-login-form")


def _safe_next(value: str | None) -> str:
    """Only a path on this server: never an absolute URL or a //host open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path.startswith("/auth/"):
        return "/"
    return value


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CLARA Workbench: sign in</title>
<style>
body{{font-family:system-ui,sans-serif;background:#f0f4f7;color:#1b2631;margin:0}}
main{{max-width:360px;margin:10vh auto;background:#fff;padding:2rem;border-radius:8px;
box-shadow:0 1px 4px rgba(0,0,0,.12)}}
h1{{font-size:1.4rem;margin:0 0 .3rem}} p.lead{{color:#566573;margin:0 0 1.5rem}}
label{{display:block;margin:.8rem 0 .3rem;font-weight:600}}
input{{width:100%;box-sizing:border-box;padding:.55rem;border:1px solid #aab7c4;
border-radius:4px;font-size:1rem}}
button{{margin-top:1.4rem;width:100%;padding:.6rem;background:#1f6f8b;color:#fff;border:0;
border-radius:4px;font-size:1rem;cursor:pointer}}
.error{{background:#fdecea;color:#922b21;padding:.6rem;border-radius:4px;margin-bottom:1rem}}
.info{{background:#eaf4fb;color:#1f4e79;padding:.6rem;border-radius:4px;margin-bottom:1rem}}
</style></head>
<body><main>
<h1>CLARA Workbench</h1>
<p class="lead">From a document corpus to fine-tuned adapters you can talk to.</p>
{message}
<form method="post" action="/auth/login">
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="next" value="{next}">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" required autofocus value="{username}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Login</button>
</form>
</main></body></html>
"""

_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "same-origin",
}


def _login_page(
    request: Request, settings: Settings, *, error: str = "", info: str = "", username: str = ""
) -> Response:
    token = _csrf_serializer(settings).dumps("login")
    message = ""
    if error:
        message = f'<div class="error" role="alert">{html.escape(error)}</div>'
    elif info:
        message = f'<div class="info" role="status">{html.escape(info)}</div>'
    body = _PAGE.format(
        message=message,
        csrf=html.escape(token),
        next=html.escape(_safe_next(request.query_params.get("next"))),
        username=html.escape(username),
    )
    response = HTMLResponse(body, status_code=401 if error else 200, headers=_SECURITY_HEADERS)
    # Double submit: a cross-site form post carries the field but never this cookie.
    response.set_cookie(
        CSRF_COOKIE,
        token,
        max_age=CSRF_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=_is_https(request.scope, settings),
        path="/auth/",
    )
    return response


def login_form(request: Request) -> Response:
    settings = _startup().settings
    info = "You are logged out." if request.query_params.get("bye") else ""
    if request.query_params.get("ended"):
        info = "Your session has ended. Please sign in again."
    return _login_page(request, settings, info=info)


async def login_submit(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool

    form = await request.form()
    return await run_in_threadpool(_login_submit, request, dict(form))


def _login_submit(request: Request, form: dict) -> Response:
    startup = _startup()
    settings, engine = startup.settings, startup.engine
    username = str(form.get("username") or "")[:200]
    password = str(form.get("password") or "")
    token = str(form.get("csrf") or "")
    try:
        if not token or token != request.cookies.get(CSRF_COOKIE):
            raise BadSignature("cookie mismatch")
        _csrf_serializer(settings).loads(token, max_age=CSRF_MAX_AGE_S)
    except BadSignature:
        return _login_page(
            request, settings, error="The form expired. Please try again.", username=username
        )
    addr = client_address(request, settings)
    try:
        principal = authenticate(engine, username, password, client_addr=addr)
    except (AccountLocked, AuthenticationFailed) as err:
        return _login_page(request, settings, error=str(err), username=username)
    session_token = open_session(
        engine,
        principal,
        kind=WEB,
        client_addr=addr,
        user_agent=request.headers.get("user-agent", ""),
    )
    response = RedirectResponse(_safe_next(str(form.get("next") or "/")), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_token,
        max_age=int(settings.session_expiry_days * 86400),
        httponly=True,
        samesite="lax",
        secure=_is_https(request.scope, settings),
        path="/",
    )
    response.delete_cookie(CSRF_COOKIE, path="/auth/")
    return response


def logout(request: Request) -> Response:
    """POST ends the session server-side; the cookie is cleared as well."""
    startup = _startup()
    token = request.cookies.get(SESSION_COOKIE)
    end_web_session(startup.engine, token, resolve_session(startup.engine, token, kind=WEB))
    response = RedirectResponse("/auth/login?bye=1", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


class SessionGate:
    """Pure ASGI middleware: no session, no Streamlit (pages, websocket, uploads, media)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or self._open(scope["path"]):
            await self.app(scope, receive, send)
            return
        startup = _startup()
        if not startup.settings.auth_enabled:
            await self.app(scope, receive, send)
            return
        request = HTTPConnection(scope)  # a websocket handshake is no Request
        from starlette.concurrency import run_in_threadpool

        user = await run_in_threadpool(
            resolve_session, startup.engine, request.cookies.get(SESSION_COOKIE), kind=WEB
        )
        if user is not None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # Closing before accept answers the upgrade with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope.get("method") == "GET" and "text/html" in request.headers.get("accept", ""):
            target = scope["path"] + (("?" + request.url.query) if request.url.query else "")
            response: Response = RedirectResponse(
                "/auth/login?next=" + quote(_safe_next(target), safe="/"), status_code=303
            )
        else:
            response = PlainTextResponse("sign in first: /auth/login", status_code=401)
        await response(scope, receive, send)

    @staticmethod
    def _open(path: str) -> bool:
        return path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES)


app = st.App(
    APP_PATH,
    routes=[
        Route("/auth/login", login_form, methods=["GET"]),
        Route("/auth/login", login_submit, methods=["POST"]),
        Route("/auth/logout", logout, methods=["POST"]),
    ],
    middleware=[Middleware(SessionGate)],
)
