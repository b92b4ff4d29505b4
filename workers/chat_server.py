"""The chat server's HTTP side: our own sign-in in front of the Gradio app.

`create_server(engine)` mounts the app of workers.chat_app on a FastAPI app that does our own
authentication with server-side sessions (core.sessions), so the chat port is never an open
door behind an authenticated page:

- `/login` (GET form, POST) checks our user store (lockout and audit included) and opens a
  chat session; its token goes into an HttpOnly, SameSite=Lax cookie (Secure over https).
  gradio_client's `Client(url, auth=(user, password))` posts to the same route, so scripts
  authenticate the same way people do. `/logout` revokes the session.
- `/clara/enter?token=...` redeems the single-use hand-over token the Streamlit page issues
  and opens a chat session as a child of the page's web session (logging out there ends the
  chat too), so a user already signed in there is not asked again inside the iframe. A link
  used before lets in only a browser that already holds a chat session of the link's owner
  (the page re-mounting its iframe); anyone else is refused.
- `X-Clara-Token: <chat session token>` authenticates API clients.
- `SessionGate` (ASGI middleware) refuses every route without a live chat session except
  health, sign-in and static assets; Gradio's monitoring routes need an admin.
- `/clara/metrics` (Prometheus) answers the scrape token CLARA_METRICS_TOKEN or a chat
  session holding system:monitor.
"""

from __future__ import annotations

import html

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import Settings, get_settings
from core.login import AccountLocked, AuthenticationFailed, authenticate
from core.ops.metrics import exposition, is_scrape_token, metrics_registry
from core.permissions import Principal
from core.serving.chat import engine_from_settings
from core.serving.engine import InferenceEngine
from core.serving.tokens import HANDOVER_PURPOSE, SESSION_COOKIE
from core.sessions import (
    CHAT,
    HandoverInvalid,
    end_web_session,
    handover_owner,
    open_session,
    redeem_handover,
    resolve_session,
    revoke_session,
)
from workers.chat_app import build_app
from workers.chat_callers import resolve_caller, session_tokens

# Gradio's monitoring pages show every user's traffic: only admins hold this permission.
MONITORING_PERMISSION = "system:monitor"

_LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<title>CLARA Chat — sign in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto}}
input{{display:block;width:100%;margin:.3rem 0 .8rem;padding:.4rem}}
.err{{color:#b00020}}</style></head><body>
<h2>CLARA Chat</h2><p>Sign in with your CLARA Workbench account.</p>
{error}<form method="post" action="login">
<label>Username<input name="username" autocomplete="username" required></label>
<label>Password<input name="password" type="password" autocomplete="current-password" required>
</label><button type="submit">Sign in</button></form></body></html>"""


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


# Reachable without a chat session: health, the sign-in routes and static assets (the login
# page itself is plain HTML and needs none of Gradio's files).
PUBLIC_PATHS = frozenset(
    {
        "/clara/health",
        "/clara/metrics",  # checks the scrape token or system:monitor itself
        "/login",
        "/login/",
        "/logout",
        "/clara/enter",
        "/favicon.ico",
        "/robots.txt",
        "/manifest.json",
        "/theme.css",
        "/gradio_api/theme.css",
    }
)
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
ADMIN_PREFIXES = ("/monitoring",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class SessionGate:
    """Refuse every request without a live chat session, except the public paths above.

    Gradio protects only some of its routes with `auth_dependency` (not /gradio_api/reset,
    /gradio_api/cancel, /monitoring, the stream routes, ...), so the check sits in front of
    all of them, for HTTP and WebSocket alike. Monitoring needs an admin as well.
    """

    def __init__(self, app: ASGIApp, db: Engine, settings: Settings) -> None:
        self.app, self.db, self.settings = app, db, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.settings.auth_enabled:
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "") or ""
        path = scope["path"]
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if is_public(path):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        caller = await run_in_threadpool(resolve_caller, self.db, self.settings, conn)
        if caller is not None and not (
            path.startswith(ADMIN_PREFIXES) and not caller.user.can(MONITORING_PERMISSION)
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if caller is not None:
            response: Response = JSONResponse(
                {"detail": "monitoring is for administrators only"}, status_code=403
            )
        elif (
            scope["method"] == "GET"
            and path == "/"
            and "text/html" in conn.headers.get("accept", "")
        ):
            # A person opening the chat without a session gets our login page, not a 401.
            response = RedirectResponse("login", status_code=303)
        else:
            response = JSONResponse(
                {"detail": "not signed in to the chat: sign in at /login"}, status_code=401
            )
        await response(scope, receive, send)


def create_server(
    engine: Engine,
    inference: InferenceEngine | None = None,
    settings: Settings | None = None,
) -> FastAPI:
    """FastAPI app: our login, the embed hand-over, and the Gradio app behind our auth."""
    settings = settings or get_settings()
    inference = inference or engine_from_settings(settings)
    blocks = build_app(engine, inference, settings)
    app = FastAPI(title="CLARA Chat", docs_url=None, redoc_url=None, openapi_url=None)
    max_age = int(settings.session_expiry_days * 86400)

    def current_user(request: Request) -> str | None:
        caller = resolve_caller(engine, settings, request)
        return caller.user.username if caller is not None else None

    def secure(request: Request) -> bool:
        return request.url.scheme == "https" or (settings.chat_public_url or "").lower().startswith(
            "https://"
        )

    def client_of(request: Request) -> tuple[str, str]:
        addr = request.client.host if request.client else ""
        return addr, request.headers.get("user-agent", "")

    def signed_in(
        request: Request, response: Response, user: Principal, parent_id: str | None = None
    ) -> Response:
        for old in session_tokens(request):  # a new sign-in replaces this browser's session
            revoke_session(engine, old, "replaced")
        addr, agent = client_of(request)
        token = open_session(
            engine, user, kind=CHAT, parent_id=parent_id, client_addr=addr, user_agent=agent
        )
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=max_age,
            httponly=True,
            samesite="lax",
            secure=secure(request),
            path="/",
        )
        return response

    @app.get("/clara/health")
    def health() -> dict:
        return {
            "status": "ok",
            "auth": settings.auth_enabled,
            "base_loads": inference.stats.base_loads,
            "base_loaded": inference._model is not None,
        }

    registry = metrics_registry()

    @app.get("/clara/metrics")
    def metrics(request: Request) -> Response:
        """Prometheus: the scrape token, or a chat session holding system:monitor."""
        if not is_scrape_token(settings, request.headers.get("authorization")):
            caller = resolve_caller(engine, settings, request)
            if caller is None:
                return JSONResponse({"detail": "not signed in"}, status_code=401)
            if not caller.user.can(MONITORING_PERMISSION):
                return JSONResponse(
                    {"detail": f"metrics need {MONITORING_PERMISSION}"}, status_code=403
                )
        body, content_type = exposition(registry)
        return Response(body, media_type=content_type)

    @app.get("/login")
    def login_form(request: Request, error: str = "") -> Response:
        if current_user(request):
            return RedirectResponse("./", status_code=303)
        shown = f'<p class="err">{html.escape(error)}</p>' if error else ""
        return HTMLResponse(_LOGIN_PAGE.format(error=shown))

    @app.post("/login")
    @app.post("/login/")
    async def login(request: Request) -> Response:
        form = await request.form()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        addr, _agent = client_of(request)
        try:
            user = await run_in_threadpool(authenticate, engine, username, password, addr)
            problem = (
                None
                if user.can("chat:use")
                else (f"{user.username} ({user.role}) may not use the chat (needs chat:use)")
            )
        except (AccountLocked, AuthenticationFailed) as err:
            problem = str(err)
        if problem:
            if _wants_html(request):
                return HTMLResponse(
                    _LOGIN_PAGE.format(error=f'<p class="err">{html.escape(problem)}</p>'),
                    status_code=401,
                )
            return JSONResponse({"detail": problem}, status_code=401)
        if _wants_html(request):
            return signed_in(request, RedirectResponse("./", status_code=303), user)
        return signed_in(request, JSONResponse({"success": True}), user)

    @app.get("/logout")
    def logout(request: Request) -> Response:
        for token in session_tokens(request):
            user = resolve_session(engine, token, kind=CHAT)
            end_web_session(engine, token, user)  # revoke (with its children) and audit
        resp = RedirectResponse("login", status_code=303)
        resp.delete_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=secure(request)
        )
        return resp

    @app.get("/clara/enter")
    def enter(request: Request, token: str = "") -> Response:
        """The Streamlit page's hand-over: a single-use token becomes a chat session, a child
        of the page's web session.

        A token used (or expired) already still lets in a browser that holds a live chat
        session of the token's owner: the page re-mounts its iframe with the link it keeps,
        and the conversation lives on in that session. Anyone else is refused.
        """
        try:
            user, parent = redeem_handover(engine, token, purpose=HANDOVER_PURPOSE)
        except HandoverInvalid as err:
            caller = resolve_caller(engine, settings, request)
            owner = handover_owner(engine, token, purpose=HANDOVER_PURPOSE)
            if caller is not None and owner is not None and owner == caller.user.username:
                return RedirectResponse("../", status_code=303)
            return HTMLResponse(
                f"<p>{html.escape(str(err))}. <a href='../login'>Sign in</a></p>", 401
            )
        if not user.can("chat:use"):
            return HTMLResponse("<p>This account may not use the chat.</p>", 403)
        return signed_in(request, RedirectResponse("../", status_code=303), user, parent)

    blocks.queue(default_concurrency_limit=4)
    app = gr.mount_gradio_app(
        app,
        blocks,
        path="",
        auth_dependency=current_user if settings.auth_enabled else None,
        footer_links=["api"],
        show_error=True,
    )
    app.add_middleware(SessionGate, db=engine, settings=settings)
    return app
