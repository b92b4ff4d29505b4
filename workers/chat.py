"""`clara chat`: the Gradio chat server (embedded by the Streamlit "Chat" page).

`build_app(engine)` makes the gr.Blocks (a chat tab and a compare tab; every endpoint has an
explicit api_name). `create_server(engine)` mounts it on a FastAPI app that does our own
authentication, so the chat port is never an open door behind an authenticated page:

- `/login` (GET form, POST) checks our user store (lockout and audit included) and sets a
  signed session cookie. gradio_client's `Client(url, auth=(user, password))` posts to the
  same route, so scripts authenticate the same way people do.
- `/clara/enter?token=...` accepts the short-lived token the Streamlit page signs, so a user
  already logged in there is not asked again inside the iframe.
- `X-Clara-Token: <session token>` authenticates API clients that hold a signed token.
- every Gradio route (config, queue, API) goes through `auth_dependency`, which re-reads the
  user on each request and requires chat:use.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Engine

from core.auth import AccountLocked, AuthenticationFailed, Principal, authenticate, principal_for
from core.config import Settings, get_settings
from core.serving.engine import BASE, GenerationSettings, InferenceEngine, ServingError
from core.serving.service import ChatService, FeedbackIn, engine_from_settings, record_feedback
from core.serving.tokens import (
    SESSION_COOKIE,
    TOKEN_HEADER,
    TokenInvalid,
    sign_session,
    verify_embed_token,
    verify_session,
)

log = logging.getLogger("clara.chat")

DEV_PRINCIPAL = Principal(username="dev", role="admin", full_name="Developer (auth off)")
NONE_CHOICE = "(none)"


def _principal(db: Engine, settings: Settings, request: gr.Request | None) -> Principal:
    if not settings.auth_enabled:
        return DEV_PRINCIPAL
    name = getattr(request, "username", None) if request is not None else None
    user = principal_for(db, name) if name else None
    if user is None or not user.can("chat:use"):
        raise gr.Error("You are not signed in to the chat (or may not use it).")
    return user


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


def _history_messages(history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Chatbot history (messages format) as plain role/content pairs."""
    out = []
    for m in history or []:
        content = m.get("content")
        if isinstance(content, list):  # gradio 6 may hand back [{"type": "text", "text": ...}]
            content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        out.append({"role": m["role"], "content": str(content or "")})
    return out


def build_app(
    engine: Engine,
    inference: InferenceEngine | None = None,
    settings: Settings | None = None,
) -> gr.Blocks:
    """The chat UI and API over one ChatService (one base model for the whole process)."""
    settings = settings or get_settings()
    service = ChatService(engine, inference or engine_from_settings(settings))

    def who(request: gr.Request | None) -> Principal:
        return _principal(engine, settings, request)

    def stream_text(user: Principal, messages: list[dict[str, str]], adapter: str,
                    gen: GenerationSettings) -> tuple[str, Iterator[str]]:
        try:
            reply = service.reply(user, messages, adapter or BASE, gen)
        except ServingError as err:
            raise gr.Error(str(err)) from None
        return reply.note, iter(reply)

    # API-only endpoints ------------------------------------------------------------------

    def adapters(request: gr.Request) -> list[str]:
        """Names that can be chosen: 'base' first, then every compatible registered adapter."""
        return service.adapter_names(who(request))

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
    ) -> Iterator[tuple[str, str]]:
        """Stream one answer: yields (answer so far, note about shortened context)."""
        user = who(request)
        try:
            history = json.loads(history_json or "[]")
            if not isinstance(history, list):
                raise ValueError("not a list")
        except ValueError as err:
            raise gr.Error(f"history_json must be a JSON list of messages ({err})") from None
        gen = _settings(system_prompt, temperature, top_p, max_new_tokens, repetition_penalty)
        note, pieces = stream_text(
            user, [*history, {"role": "user", "content": message}], adapter, gen
        )
        text = ""
        yield text, note
        for piece in pieces:
            text += piece
            yield text, note

    def feedback(
        rating: str,
        answer: str,
        conversation_json: str,
        adapter: str = BASE,
        correction: str = "",
        comment: str = "",
        settings_json: str = "{}",
        request: gr.Request = None,
    ) -> dict:
        """Record thumbs up/down (optionally a corrected answer and a comment)."""
        user = who(request)
        try:
            fb = FeedbackIn(
                rating=rating, adapter=adapter or BASE, answer=answer,
                conversation=json.loads(conversation_json or "[]"),
                correction=correction or None, comment=comment or "",
                settings=json.loads(settings_json or "{}"),
            )
        except ValueError as err:
            raise gr.Error(f"feedback not recorded: {err}") from None
        return _record(user, fb)

    def _record(user: Principal, fb: FeedbackIn) -> dict:
        ids = {a.name: a.id for a in service.adapters(user)}
        try:
            info = record_feedback(engine, user, fb, adapter_id=ids.get(fb.adapter))
        except ServingError as err:
            raise gr.Error(str(err)) from None
        return {"feedback_id": info.id, "dataset_id": info.dataset_id,
                "sample_id": info.sample_id, "rating": info.rating}

    def health(request: gr.Request) -> dict:
        who(request)
        return service.health()

    # UI ------------------------------------------------------------------------------------

    with gr.Blocks(title="CLARA Chat", analytics_enabled=False) as demo:
        gr.api(adapters, api_name="adapters")
        gr.api(generate, api_name="generate")
        gr.api(feedback, api_name="feedback")
        gr.api(health, api_name="health")

        answers_meta = gr.State({})  # answer index -> adapter and settings that produced it
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
            chatbot = gr.Chatbot(label="Conversation", elem_id="chat-conversation", height=420,
                                 feedback_options=("Like", "Dislike"))
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
            cmp_note = gr.Markdown("")
            with gr.Row():
                out_base = gr.Textbox(label="base", lines=10, interactive=False)
                out_a = gr.Textbox(label="Adapter A", lines=10, interactive=False)
                out_b = gr.Textbox(label="Adapter B", lines=10, interactive=False)

        gen_inputs = [system, temperature, top_p, max_new, rep]

        def refresh(current: str, a: str, b: str, request: gr.Request):
            names = service.adapter_names(who(request))
            others = [NONE_CHOICE] + [n for n in names if n != BASE]
            keep = current if current in names else BASE
            return (
                gr.Dropdown(choices=names, value=keep),
                gr.Dropdown(choices=others, value=a if a in others else NONE_CHOICE),
                gr.Dropdown(choices=others, value=b if b in others else NONE_CHOICE),
            )

        def whoami(request: gr.Request) -> str:
            user = who(request)
            if not settings.auth_enabled:
                return "Authentication is off (development): everyone acts as admin."
            return f"Signed in as **{user.username}** ({user.role}) · [sign out](logout)"

        demo.load(whoami, None, signed_in_as, api_name="whoami", queue=False)
        for trigger, name in ((demo.load, "refresh_on_load"), (refresh_btn.click, "refresh")):
            trigger(refresh, [adapter_dd, cmp_a, cmp_b], [adapter_dd, cmp_a, cmp_b],
                    api_name=name)

        def add_message(message: str, history: list, request: gr.Request):
            who(request)
            if not (message or "").strip():
                raise gr.Error("Type a message first.")
            return "", [*(history or []), {"role": "user", "content": message}]

        def respond(history: list, meta: dict, adapter: str, system: str, temperature: float,
                    top_p: float, max_new: float, rep: float, request: gr.Request):
            user = who(request)
            gen = _settings(system, temperature, top_p, max_new, rep)
            messages = _history_messages(history)
            if not messages or messages[-1]["role"] != "user":
                raise gr.Error("Nothing to answer: send a message first.")
            note_text, pieces = stream_text(user, messages, adapter, gen)
            history = [*history, {"role": "assistant", "content": ""}]
            meta = {**(meta or {}), str(len(history) - 1): {
                "adapter": adapter or BASE, "settings": gen.model_dump()}}
            shown = f"*{note_text}*" if note_text else ""
            yield history, meta, shown
            text = ""
            for piece in pieces:
                text += piece
                history[-1] = {"role": "assistant", "content": text}
                yield history, meta, shown

        resp_io = ([chatbot, answers_meta, adapter_dd, *gen_inputs], [chatbot, answers_meta, note])
        for trigger, name in ((msg.submit, "chat_submit"), (send.click, "chat_send")):
            trigger(add_message, [msg, chatbot], [msg, chatbot], api_name=name,
                    queue=False).then(respond, *resp_io, api_name=f"{name}_respond")

        def drop_last_answer(history: list, request: gr.Request):
            who(request)
            history = list(history or [])
            while history and history[-1]["role"] == "assistant":
                history.pop()
            if not history:
                raise gr.Error("Nothing to retry yet.")
            return history

        retry.click(drop_last_answer, [chatbot], [chatbot], api_name="chat_retry",
                    queue=False).then(respond, *resp_io, api_name="chat_retry_respond")
        clear.click(lambda: ([], {}, "", gr.Group(visible=False), ""), None,
                    [chatbot, answers_meta, note, fb_box, fb_status], api_name="chat_clear",
                    queue=False)

        def on_like(history: list, like: gr.LikeData, request: gr.Request):
            who(request)
            index = like.index if isinstance(like.index, int) else like.index[0]
            if like.liked is None or like.liked == "":  # the thumb was clicked off again
                return None, gr.Group(visible=False), ""
            liked = like.liked is True or like.liked == "Like"
            rating = "up" if liked else "down"
            label = "👍 helpful" if liked else "👎 not helpful"
            title = (f"**Feedback on answer {index // 2 + 1}: {label}.** Add a corrected "
                     "answer and a comment if you like, then send.")
            return ({"index": index, "rating": rating}, gr.Group(visible=True), title)

        chatbot.like(on_like, [chatbot], [pending, fb_box, fb_title], api_name="chat_like",
                     queue=False)

        def send_feedback(pend: dict | None, history: list, meta: dict, correction: str,
                          comment: str, request: gr.Request):
            user = who(request)
            if not pend:
                raise gr.Error("Click 👍 or 👎 on an answer first.")
            messages = _history_messages(history)
            i = int(pend["index"])
            if i >= len(messages) or messages[i]["role"] != "assistant":
                raise gr.Error("That answer is no longer in the conversation.")
            used = (meta or {}).get(str(i), {})
            fb = FeedbackIn(
                rating=pend["rating"], adapter=used.get("adapter", BASE),
                conversation=messages[:i], answer=messages[i]["content"],
                correction=correction or None, comment=comment or "",
                settings=used.get("settings", {}),
            )
            out = _record(user, fb)
            return (None, gr.Group(visible=False), "", "",
                    f"Thanks — feedback #{out['feedback_id']} saved for review.")

        fb_send.click(send_feedback,
                      [pending, chatbot, answers_meta, fb_correction, fb_comment],
                      [pending, fb_box, fb_correction, fb_comment, fb_status],
                      api_name="chat_feedback")
        fb_cancel.click(lambda: (None, gr.Group(visible=False)), None, [pending, fb_box],
                        api_name="chat_feedback_cancel", queue=False)

        def compare(prompt: str, a: str, b: str, system: str, temperature: float, top_p: float,
                    max_new: float, rep: float, request: gr.Request):
            user = who(request)
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
                note_text, pieces = stream_text(
                    user, [{"role": "user", "content": prompt}], adapter, gen)
                notes = notes or (f"*{note_text}*" if note_text else "")
                for piece in pieces:
                    texts[slot] += piece
                    yield (*texts, notes)
                yield (*texts, notes)

        cmp_btn.click(compare, [cmp_prompt, cmp_a, cmp_b, *gen_inputs],
                      [out_base, out_a, out_b, cmp_note], api_name="compare")
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
        if not settings.auth_enabled:
            return DEV_PRINCIPAL.username
        for token, check in ((request.cookies.get(SESSION_COOKIE), verify_session),
                             (request.headers.get(TOKEN_HEADER), verify_session)):
            if not token:
                continue
            try:
                name = check(token, settings)
            except TokenInvalid:
                continue
            user = principal_for(engine, name)
            if user is not None and user.can("chat:use"):
                return user.username
        return None

    def signed_in(response: Response, username: str) -> Response:
        response.set_cookie(SESSION_COOKIE, sign_session(username, settings), max_age=max_age,
                            httponly=True, samesite="lax", path="/")
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
    async def login(request: Request) -> Response:
        form = await request.form()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        try:
            user = authenticate(engine, username, password, settings.login_max_failures,
                                settings.login_lockout_seconds)
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
            return signed_in(RedirectResponse("./", status_code=303), user.username)
        return signed_in(JSONResponse({"success": True}), user.username)

    @app.get("/logout")
    def logout() -> Response:
        resp = RedirectResponse("login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.get("/clara/enter")
    def enter(token: str = "") -> Response:
        """The Streamlit page's hand-over: a signed, short-lived token becomes a session."""
        try:
            name = verify_embed_token(token, settings)
        except TokenInvalid as err:
            return HTMLResponse(
                f"<p>{html.escape(str(err))}. <a href='../login'>Sign in</a></p>", 401)
        user = principal_for(engine, name)
        if user is None or not user.can("chat:use"):
            return HTMLResponse("<p>This account may not use the chat.</p>", 403)
        return signed_in(RedirectResponse("../", status_code=303), user.username)

    @app.middleware("http")
    async def login_redirect(request: Request, call_next):  # noqa: ANN001, ANN202
        # A person opening the chat without a session gets our login page, not a bare 401.
        if (settings.auth_enabled and request.method == "GET" and request.url.path == "/"
                and _wants_html(request) and current_user(request) is None):
            return RedirectResponse("login", status_code=303)
        return await call_next(request)

    blocks.queue(default_concurrency_limit=4)
    return gr.mount_gradio_app(
        app, blocks, path="",
        auth_dependency=current_user if settings.auth_enabled else None,
        footer_links=["api"], show_error=True,
    )


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
