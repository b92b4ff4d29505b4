"""`clara chat`: the Gradio chat server (embedded by the Streamlit "Chat" page).

`build_app(engine)` makes the gr.Blocks (a chat tab and a compare tab; every endpoint has an
explicit api_name). `create_server(engine)` mounts it on a FastAPI app that does our own
authentication with server-side sessions (core.sessions), so the chat port is never an open
door behind an authenticated page:

- `/login` (GET form, POST) checks our user store (lockout and audit included) and opens a
  chat session; its token goes into an HttpOnly, SameSite=Lax cookie (Secure over https).
  gradio_client's `Client(url, auth=(user, password))` posts to the same route, so scripts
  authenticate the same way people do. `/logout` revokes the session.
- `/clara/enter?token=...` redeems the single-use hand-over token the Streamlit page issues
  and opens a chat session as a child of the page's web session (logging out there ends the
  chat too), so a user already signed in there is not asked again inside the iframe.
- `X-Clara-Token: <chat session token>` authenticates API clients.
- `SessionGate` (ASGI middleware) refuses every route without a live chat session except
  health, sign-in and static assets; Gradio's monitoring routes need an admin.
- every answer is stored with an id (core.serving.answers); feedback names that id and can
  only rate answers given in the caller's own session.
- prompts and answers are shown as literal text (core.serving.render): no image or HTML in
  a conversation makes the browser fetch anything.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from core.auth import AccountLocked, AuthenticationFailed, Principal, authenticate
from core.config import Settings, get_settings
from core.serving.chat import ChatService, engine_from_settings
from core.serving.engine import BASE, GenerationSettings, InferenceEngine, ServingError
from core.serving.feedback import FeedbackIn, record_feedback
from core.serving.render import answer_markdown, literal_markdown
from core.serving.tokens import HANDOVER_PURPOSE, SESSION_COOKIE, TOKEN_HEADER
from core.sessions import (
    CHAT,
    HandoverInvalid,
    end_web_session,
    open_session,
    redeem_handover,
    resolve_session,
    revoke_session,
    session_id,
)

log = logging.getLogger("clara.chat")

DEV_PRINCIPAL = Principal(username="dev", role="admin", full_name="Developer (auth off)")
NONE_CHOICE = "(none)"
# Gradio's monitoring pages show every user's traffic: only admins hold this permission.
MONITORING_PERMISSION = "system:monitor"


@dataclass(frozen=True)
class Caller:
    """Who sends a request, and from which chat session (None with authentication off)."""

    user: Principal
    session_id: str | None


def _lookup(mapping: Any, name: str) -> str | None:
    if not mapping:
        return None
    for key in (name, name.lower()):
        value = mapping.get(key)
        if value:
            return str(value)
    return None


def session_tokens(request: Any) -> list[str]:
    """Chat session tokens a request carries: the X-Clara-Token header, then the cookie.

    Works on a Starlette request and on gr.Request (live or as the queue keeps it).
    """
    out = []
    header = _lookup(getattr(request, "headers", None), TOKEN_HEADER)
    if header:
        out.append(header)
    cookie = _lookup(getattr(request, "cookies", None), SESSION_COOKIE)
    if not cookie:
        raw = _lookup(getattr(request, "headers", None), "cookie")
        if raw:
            jar = SimpleCookie()
            try:
                jar.load(raw)
            except Exception:  # a malformed Cookie header is no session
                jar = SimpleCookie()
            if SESSION_COOKIE in jar:
                cookie = jar[SESSION_COOKIE].value
    if cookie:
        out.append(cookie)
    return out


def resolve_caller(db: Engine, settings: Settings, request: Any) -> Caller | None:
    """The chat user behind a request: a live chat session whose user holds chat:use."""
    if not settings.auth_enabled:
        return Caller(DEV_PRINCIPAL, None)
    for token in session_tokens(request):
        user = resolve_session(db, token, kind=CHAT)
        if user is not None and user.can("chat:use"):
            return Caller(user, session_id(token))
    return None


def _principal(db: Engine, settings: Settings, request: gr.Request | None) -> Caller:
    caller = resolve_caller(db, settings, request) if request is not None else None
    if caller is None:
        raise gr.Error("You are not signed in to the chat (or may not use it).")
    return caller


def _settings(system: str, temperature: float, top_p: float, max_new: float,
              rep: float) -> GenerationSettings:
    try:
        return GenerationSettings(
            system_prompt=system or "", temperature=float(temperature), top_p=float(top_p),
            max_new_tokens=int(max_new), repetition_penalty=float(rep),
        )
    except ValueError as err:
        first = err.errors()[0] if hasattr(err, "errors") else {}
        field = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        raise gr.Error(f"generation setting {field}: {first.get('msg', err)}") from None


def _plain(content: Any) -> str:
    if isinstance(content, list):  # gradio 6 may hand back [{"type": "text", "text": ...}]
        content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content or "")


def _history_messages(history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """API history (role/content, optionally answer_id) as the service takes it."""
    out = []
    for m in history or []:
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError("every message needs 'role' and 'content'")
        msg = {"role": str(m["role"]), "content": _plain(m.get("content"))}
        if m.get("answer_id"):
            msg["answer_id"] = str(m["answer_id"])
        out.append(msg)
    return out


def _short_note(dropped: int) -> str:
    if not dropped:
        return ""
    return f"{dropped} earlier message(s) left out to fit the context"


def conversation_view(turns: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The Chatbot's messages: literal text, each answer labelled with its model."""
    view = []
    for t in turns:
        if t["role"] == "assistant":
            view.append({"role": "assistant", "content": answer_markdown(
                t["content"], t.get("adapter") or BASE, t.get("note", ""))})
        else:
            view.append({"role": t["role"], "content": literal_markdown(t["content"])})
    return view


def build_app(
    engine: Engine,
    inference: InferenceEngine | None = None,
    settings: Settings | None = None,
) -> gr.Blocks:
    """The chat UI and API over one ChatService (one base model for the whole process)."""
    settings = settings or get_settings()
    service = ChatService(engine, inference or engine_from_settings(settings))

    def who(request: gr.Request | None) -> Caller:
        return _principal(engine, settings, request)

    def start_reply(caller: Caller, messages: list[dict[str, str]], adapter: str,
                    gen: GenerationSettings):
        try:
            return service.reply(caller.user, messages, adapter or BASE, gen,
                                 session_id=caller.session_id)
        except ServingError as err:
            raise gr.Error(str(err)) from None

    # API-only endpoints ------------------------------------------------------------------

    def adapters(request: gr.Request) -> list[str]:
        """Names that can be chosen: 'base' first, then every compatible registered adapter."""
        return service.adapter_names(who(request).user)

    def generate(
        message: str,
        adapter: str = BASE,
        history_json: str = "[]",
        system_prompt: str = "",
        temperature: float = 0.7,
        top_p: float = 0.95,
        max_new_tokens: int = 256,
        repetition_penalty: float = 1.1,
        request: gr.Request = None,
    ) -> Iterator[tuple[str, str, str]]:
        """Stream one answer: yields (answer so far, note about shortened context, answer id).

        history_json: earlier messages [{"role", "content", "answer_id"?}]; give each earlier
        answer its answer_id so that feedback samples can keep the rated model's own turns.
        The answer id is what /feedback rates, from this session only.
        """
        caller = who(request)
        try:
            history = json.loads(history_json or "[]")
            if not isinstance(history, list):
                raise ValueError("not a list")
            history = _history_messages(history)
        except ValueError as err:
            raise gr.Error(f"history_json must be a JSON list of messages ({err})") from None
        gen = _settings(system_prompt, temperature, top_p, max_new_tokens, repetition_penalty)
        reply = start_reply(caller, [*history, {"role": "user", "content": message}], adapter,
                            gen)
        text = ""
        yield text, reply.note, reply.answer_id
        for piece in reply:
            text += piece
            yield text, reply.note, reply.answer_id

    def feedback(
        answer_id: str,
        rating: str,
        correction: str = "",
        comment: str = "",
        request: gr.Request = None,
    ) -> dict:
        """Rate an answer this session was given (its id from /generate): 'up' or 'down',
        optionally with a corrected answer and a comment."""
        caller = who(request)
        try:
            fb = FeedbackIn(answer_id=answer_id or "", rating=rating,
                            correction=correction or None, comment=comment or "")
        except ValueError as err:
            raise gr.Error(f"feedback not recorded: {err}") from None
        return _record(caller, fb)

    def _record(caller: Caller, fb: FeedbackIn) -> dict:
        try:
            info = record_feedback(engine, caller.user, fb, session_id=caller.session_id)
        except ServingError as err:
            raise gr.Error(str(err)) from None
        return {"feedback_id": info.id, "dataset_id": info.dataset_id,
                "sample_id": info.sample_id, "rating": info.rating, "answer_id": info.answer_id}

    def health(request: gr.Request) -> dict:
        who(request)
        return service.health()

    # UI ------------------------------------------------------------------------------------

    with gr.Blocks(title="CLARA Chat", analytics_enabled=False) as demo:
        gr.api(adapters, api_name="adapters")
        gr.api(generate, api_name="generate")
        gr.api(feedback, api_name="feedback")
        gr.api(health, api_name="health")

        # The conversation as the server knows it (server-side state, never sent to the
        # browser): role, text, and for answers the model and the stored answer's id.
        turns_state = gr.State([])
        pending = gr.State(None)  # the answer being rated

        signed_in_as = gr.Markdown("", elem_id="chat-user")
        with gr.Tab("Chat", id="chat"):
            with gr.Row():
                adapter_dd = gr.Dropdown([BASE], value=BASE, label="Adapter", scale=3,
                                         elem_id="chat-adapter", allow_custom_value=True)
                refresh_btn = gr.Button("Refresh adapters", scale=1, size="sm")
            with gr.Accordion("Generation settings", open=False):
                system = gr.Textbox(label="System prompt", lines=2, elem_id="chat-system")
                with gr.Row():
                    temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature",
                                            elem_id="chat-temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p")
                    max_new = gr.Slider(1, 1024, value=256, step=1, label="Max new tokens",
                                        elem_id="chat-max-new-tokens")
                    rep = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
            note = gr.Markdown("", elem_id="chat-note")
            # Literal text only (see conversation_view): no LaTeX, no custom tags, no HTML.
            chatbot = gr.Chatbot(label="Conversation", elem_id="chat-conversation", height=420,
                                 feedback_options=("Like", "Dislike"), sanitize_html=True,
                                 render_markdown=True, latex_delimiters=[], allow_tags=False)
            with gr.Row():
                msg = gr.Textbox(placeholder="Ask something…", show_label=False, scale=6,
                                 elem_id="chat-input", submit_btn=False)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
            with gr.Row():
                retry = gr.Button("Retry last answer", size="sm", elem_id="chat-retry")
                clear = gr.Button("Clear conversation", size="sm", elem_id="chat-clear")
            with gr.Group(visible=False, elem_id="chat-feedback") as fb_box:
                fb_title = gr.Markdown("")
                fb_correction = gr.Textbox(label="Corrected answer (optional)", lines=3,
                                           elem_id="chat-correction")
                fb_comment = gr.Textbox(label="Comment (optional)", elem_id="chat-comment")
                with gr.Row():
                    fb_send = gr.Button("Send feedback", variant="primary",
                                        elem_id="chat-feedback-send")
                    fb_cancel = gr.Button("Cancel", elem_id="chat-feedback-cancel")
            fb_status = gr.Markdown("", elem_id="chat-feedback-status")

        with gr.Tab("Compare", id="compare"):
            gr.Markdown("One prompt, answered by the base model and up to two adapters.")
            cmp_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="compare-prompt")
            with gr.Row():
                cmp_a = gr.Dropdown([NONE_CHOICE], value=NONE_CHOICE, label="Adapter A",
                                  allow_custom_value=True, elem_id="compare-a")
                cmp_b = gr.Dropdown([NONE_CHOICE], value=NONE_CHOICE, label="Adapter B",
                                  allow_custom_value=True, elem_id="compare-b")
            cmp_btn = gr.Button("Compare", variant="primary", elem_id="compare-run")
            cmp_note = gr.Markdown("", elem_id="compare-note")
            # Plain text boxes that grow with the answer (up to max_lines, then they scroll):
            # a long answer is never cut off. Each is labelled with the model that wrote it.
            with gr.Row(equal_height=False):
                outs = [
                    gr.Textbox(label=label, lines=6, max_lines=60, interactive=False,
                               autoscroll=False, elem_id=f"compare-out-{slot}",
                               buttons=["copy"])
                    for slot, label in (("base", "base"), ("a", "Adapter A: none chosen"),
                                        ("b", "Adapter B: none chosen"))
                ]

        gen_inputs = [system, temperature, top_p, max_new, rep]

        def refresh(current: str, a: str, b: str, request: gr.Request):
            names = service.adapter_names(who(request).user)
            others = [NONE_CHOICE] + [n for n in names if n != BASE]
            keep = current if current in names else BASE
            return (
                gr.Dropdown(choices=names, value=keep),
                gr.Dropdown(choices=others, value=a if a in others else NONE_CHOICE),
                gr.Dropdown(choices=others, value=b if b in others else NONE_CHOICE),
            )

        def whoami(request: gr.Request) -> str:
            user = who(request).user
            if not settings.auth_enabled:
                return "Authentication is off (development): everyone acts as admin."
            return (f"Signed in as **{literal_markdown(user.username)}** "
                    f"({literal_markdown(user.role)}) · [sign out](logout)")

        demo.load(whoami, None, signed_in_as, api_name="whoami", queue=False)
        for trigger, name in ((demo.load, "refresh_on_load"), (refresh_btn.click, "refresh")):
            trigger(refresh, [adapter_dd, cmp_a, cmp_b], [adapter_dd, cmp_a, cmp_b],
                    api_name=name)

        def add_message(message: str, turns: list, request: gr.Request):
            who(request)
            if not (message or "").strip():
                raise gr.Error("Type a message first.")
            turns = [*(turns or []), {"role": "user", "content": message}]
            return "", turns, conversation_view(turns)

        def respond(turns: list, adapter: str, system: str, temperature: float,
                    top_p: float, max_new: float, rep: float, request: gr.Request):
            caller = who(request)
            gen = _settings(system, temperature, top_p, max_new, rep)
            turns = list(turns or [])
            if not turns or turns[-1]["role"] != "user":
                raise gr.Error("Nothing to answer: send a message first.")
            messages = [{"role": t["role"], "content": t["content"],
                         **({"answer_id": t["answer_id"]} if t.get("answer_id") else {})}
                        for t in turns]
            reply = start_reply(caller, messages, adapter, gen)
            answer = {"role": "assistant", "content": "", "adapter": reply.adapter,
                      "answer_id": reply.answer_id, "note": _short_note(reply.dropped_turns)}
            turns = [*turns, answer]
            shown = f"*{literal_markdown(reply.note)}*" if reply.note else ""
            yield turns, conversation_view(turns), shown
            text = ""
            for piece in reply:
                text += piece
                turns[-1] = {**answer, "content": text}
                yield turns, conversation_view(turns), shown

        resp_io = ([turns_state, adapter_dd, *gen_inputs], [turns_state, chatbot, note])
        for trigger, name in ((msg.submit, "chat_submit"), (send.click, "chat_send")):
            trigger(add_message, [msg, turns_state], [msg, turns_state, chatbot], api_name=name,
                    queue=False).then(respond, *resp_io, api_name=f"{name}_respond")

        def drop_last_answer(turns: list, request: gr.Request):
            who(request)
            turns = list(turns or [])
            while turns and turns[-1]["role"] == "assistant":
                turns.pop()
            if not turns:
                raise gr.Error("Nothing to retry yet.")
            return turns, conversation_view(turns)

        retry.click(drop_last_answer, [turns_state], [turns_state, chatbot], api_name="chat_retry",
                    queue=False).then(respond, *resp_io, api_name="chat_retry_respond")
        clear.click(lambda: ([], [], "", gr.Group(visible=False), ""), None,
                    [turns_state, chatbot, note, fb_box, fb_status], api_name="chat_clear",
                    queue=False)

        def on_like(turns: list, like: gr.LikeData, request: gr.Request):
            who(request)
            index = like.index if isinstance(like.index, int) else like.index[0]
            if like.liked is None or like.liked == "":  # the thumb was clicked off again
                return None, gr.Group(visible=False), ""
            turns = turns or []
            if index >= len(turns) or not turns[index].get("answer_id"):
                raise gr.Error("That answer is no longer in the conversation.")
            liked = like.liked is True or like.liked == "Like"
            rating = "up" if liked else "down"
            label = "👍 helpful" if liked else "👎 not helpful"
            model = literal_markdown(turns[index].get("adapter") or BASE)
            title = (f"**Feedback on answer {index // 2 + 1} ({model}): {label}.** Add a "
                     "corrected answer and a comment if you like, then send.")
            return ({"answer_id": turns[index]["answer_id"], "rating": rating},
                    gr.Group(visible=True), title)

        chatbot.like(on_like, [turns_state], [pending, fb_box, fb_title], api_name="chat_like",
                     queue=False)

        def send_feedback(pend: dict | None, correction: str, comment: str,
                          request: gr.Request):
            caller = who(request)
            if not pend:
                raise gr.Error("Click 👍 or 👎 on an answer first.")
            fb = FeedbackIn(answer_id=pend["answer_id"], rating=pend["rating"],
                            correction=correction or None, comment=comment or "")
            out = _record(caller, fb)
            return (None, gr.Group(visible=False), "", "",
                    f"Thanks — feedback #{out['feedback_id']} saved for review.")

        fb_send.click(send_feedback, [pending, fb_correction, fb_comment],
                      [pending, fb_box, fb_correction, fb_comment, fb_status],
                      api_name="chat_feedback")
        fb_cancel.click(lambda: (None, gr.Group(visible=False)), None, [pending, fb_box],
                        api_name="chat_feedback_cancel", queue=False)

        def compare(prompt: str, a: str, b: str, system: str, temperature: float, top_p: float,
                    max_new: float, rep: float, request: gr.Request):
            caller = who(request)
            if not (prompt or "").strip():
                raise gr.Error("Type a prompt to compare.")
            gen = _settings(system, temperature, top_p, max_new, rep)
            chosen = [BASE] + [x if x and x != NONE_CHOICE else None for x in (a, b)]
            texts = ["", "", ""]
            notes = ""
            for slot, adapter in enumerate(chosen):
                if adapter is None:
                    texts[slot] = "(no adapter chosen)"
                    yield (*texts, notes)
                    continue
                reply = start_reply(caller, [{"role": "user", "content": prompt}], adapter, gen)
                notes = notes or (f"*{literal_markdown(reply.note)}*" if reply.note else "")
                for piece in reply:
                    texts[slot] += piece
                    yield (*texts, notes)
                yield (*texts, notes)

        def answer_label(slot: str):  # noqa: ANN202
            def label(choice: str) -> gr.Textbox:
                name = choice if choice and choice != NONE_CHOICE else "none chosen"
                return gr.Textbox(label=f"Adapter {slot}: {name}")

            return label

        # Each answer box names the model that writes into it.
        cmp_a.change(answer_label("A"), [cmp_a], [outs[1]], queue=False, api_visibility="private")
        cmp_b.change(answer_label("B"), [cmp_b], [outs[2]], queue=False, api_visibility="private")

        cmp_btn.click(compare, [cmp_prompt, cmp_a, cmp_b, *gen_inputs], [*outs, cmp_note],
                      api_name="compare")
    return demo


# Server ------------------------------------------------------------------------------------

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
PUBLIC_PATHS = frozenset({
    "/clara/health", "/login", "/login/", "/logout", "/clara/enter", "/favicon.ico",
    "/robots.txt", "/manifest.json", "/theme.css", "/gradio_api/theme.css",
})
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
            path = path[len(root):] or "/"
        if is_public(path):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        caller = await run_in_threadpool(resolve_caller, self.db, self.settings, conn)
        if caller is not None and not (path.startswith(ADMIN_PREFIXES)
                                       and not caller.user.can(MONITORING_PERMISSION)):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if caller is not None:
            response: Response = JSONResponse(
                {"detail": "monitoring is for administrators only"}, status_code=403)
        elif (scope["method"] == "GET" and path == "/"
              and "text/html" in conn.headers.get("accept", "")):
            # A person opening the chat without a session gets our login page, not a 401.
            response = RedirectResponse("login", status_code=303)
        else:
            response = JSONResponse(
                {"detail": "not signed in to the chat: sign in at /login"}, status_code=401)
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
        return (request.url.scheme == "https"
                or (settings.chat_public_url or "").lower().startswith("https://"))

    def client_of(request: Request) -> tuple[str, str]:
        addr = request.client.host if request.client else ""
        return addr, request.headers.get("user-agent", "")

    def signed_in(request: Request, response: Response, user: Principal,
                  parent_id: str | None = None) -> Response:
        for old in session_tokens(request):  # a new sign-in replaces this browser's session
            revoke_session(engine, old, "replaced")
        addr, agent = client_of(request)
        token = open_session(engine, user, kind=CHAT, parent_id=parent_id, client_addr=addr,
                             user_agent=agent)
        response.set_cookie(SESSION_COOKIE, token, max_age=max_age, httponly=True,
                            samesite="lax", secure=secure(request), path="/")
        return response

    @app.get("/clara/health")
    def health() -> dict:
        return {"status": "ok", "auth": settings.auth_enabled,
                "base_loads": inference.stats.base_loads,
                "base_loaded": inference._model is not None}

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
            problem = None if user.can("chat:use") else (
                f"{user.username} ({user.role}) may not use the chat (needs chat:use)")
        except (AccountLocked, AuthenticationFailed) as err:
            problem = str(err)
        if problem:
            if _wants_html(request):
                return HTMLResponse(_LOGIN_PAGE.format(
                    error=f'<p class="err">{html.escape(problem)}</p>'), status_code=401)
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
        resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=secure(request))
        return resp

    @app.get("/clara/enter")
    def enter(request: Request, token: str = "") -> Response:
        """The Streamlit page's hand-over: a single-use token becomes a chat session, a child
        of the page's web session."""
        try:
            user, parent = redeem_handover(engine, token, purpose=HANDOVER_PURPOSE)
        except HandoverInvalid as err:
            return HTMLResponse(
                f"<p>{html.escape(str(err))}. <a href='../login'>Sign in</a></p>", 401)
        if not user.can("chat:use"):
            return HTMLResponse("<p>This account may not use the chat.</p>", 403)
        return signed_in(request, RedirectResponse("../", status_code=303), user, parent)

    blocks.queue(default_concurrency_limit=4)
    app = gr.mount_gradio_app(
        app, blocks, path="",
        auth_dependency=current_user if settings.auth_enabled else None,
        footer_links=["api"], show_error=True,
    )
    app.add_middleware(SessionGate, db=engine, settings=settings)
    return app


def serve(host: str | None = None, port: int | None = None,
          settings: Settings | None = None, quantization: str | None = None) -> None:
    """Run the chat server until stopped (what `clara chat` and `clara up` start)."""
    import uvicorn

    from core.system import prepare

    settings = settings or get_settings()
    st = prepare(settings)
    inference = engine_from_settings(settings, quantization)
    inference.load()  # fail at start, with the model's own error, not at the first question
    app = create_server(st.engine, inference, settings)
    uvicorn.run(app, host=host or settings.chat_host, port=port or settings.chat_port,
                log_level="warning")
