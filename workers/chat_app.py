"""The Gradio chat app: one function per part, composed by `build_app`.

- `api_endpoints`: the API-only endpoints (/adapters, /generate, /feedback, /health);
- `chat_tab` with `settings_panel` (generation settings) and `feedback_panel` (👍/👎, a
  correction and a comment on one answer);
- `compare_tab`: one prompt, answered by the base model and up to two adapters;
- `adapter_pickers` and `signed_in_banner`: what every page load fills in.

Every endpoint has an explicit api_name. Each asks `ChatContext.who` for the caller (a live
chat session, see workers.chat_callers); the conversation is kept server-side in gr.State.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from sqlalchemy import Engine

from core.config import Settings, get_settings
from core.serving.chat import ChatService, Reply, engine_from_settings
from core.serving.engine import BASE, GenerationSettings, InferenceEngine, ServingError
from core.serving.feedback import FeedbackIn, record_feedback
from core.serving.render import answer_markdown, literal_markdown
from workers.chat_callers import Caller, resolve_caller

NONE_CHOICE = "(none)"


@dataclass(frozen=True)
class ChatContext:
    """What every part of the app works with: the database, the settings, one ChatService."""

    db: Engine
    settings: Settings
    service: ChatService

    def who(self, request: gr.Request | None) -> Caller:
        caller = resolve_caller(self.db, self.settings, request) if request is not None else None
        if caller is None:
            raise gr.Error("You are not signed in to the chat (or may not use it).")
        return caller

    def start_reply(
        self,
        caller: Caller,
        messages: list[dict[str, str]],
        adapter: str,
        gen: GenerationSettings,
    ) -> Reply:
        try:
            return self.service.reply(
                caller.user, messages, adapter or BASE, gen, session_id=caller.session_id
            )
        except ServingError as err:
            raise gr.Error(str(err)) from None

    def record(self, caller: Caller, fb: FeedbackIn) -> dict:
        try:
            info = record_feedback(self.db, caller.user, fb, session_id=caller.session_id)
        except ServingError as err:
            raise gr.Error(str(err)) from None
        return {
            "feedback_id": info.id,
            "dataset_id": info.dataset_id,
            "sample_id": info.sample_id,
            "rating": info.rating,
            "answer_id": info.answer_id,
        }


def generation_settings(
    system: str, temperature: float, top_p: float, max_new: float, rep: float
) -> GenerationSettings:
    try:
        return GenerationSettings(
            system_prompt=system or "",
            temperature=float(temperature),
            top_p=float(top_p),
            max_new_tokens=int(max_new),
            repetition_penalty=float(rep),
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
            view.append(
                {
                    "role": "assistant",
                    "content": answer_markdown(
                        t["content"], t.get("adapter") or BASE, t.get("note", "")
                    ),
                }
            )
        else:
            view.append({"role": t["role"], "content": literal_markdown(t["content"])})
    return view


# API-only endpoints ------------------------------------------------------------------------


def api_endpoints(ctx: ChatContext) -> None:
    """/adapters, /generate, /feedback and /health for API clients (gradio_client)."""

    def adapters(request: gr.Request) -> list[str]:
        """Names that can be chosen: 'base' first, then every compatible registered adapter."""
        return ctx.service.adapter_names(ctx.who(request).user)

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
        caller = ctx.who(request)
        try:
            history = json.loads(history_json or "[]")
            if not isinstance(history, list):
                raise ValueError("not a list")
            history = _history_messages(history)
        except ValueError as err:
            raise gr.Error(f"history_json must be a JSON list of messages ({err})") from None
        gen = generation_settings(
            system_prompt, temperature, top_p, max_new_tokens, repetition_penalty
        )
        reply = ctx.start_reply(
            caller, [*history, {"role": "user", "content": message}], adapter, gen
        )
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
        caller = ctx.who(request)
        try:
            fb = FeedbackIn(
                answer_id=answer_id or "",
                rating=rating,
                correction=correction or None,
                comment=comment or "",
            )
        except ValueError as err:
            raise gr.Error(f"feedback not recorded: {err}") from None
        return ctx.record(caller, fb)

    def health(request: gr.Request) -> dict:
        ctx.who(request)
        return ctx.service.health()

    gr.api(adapters, api_name="adapters")
    gr.api(generate, api_name="generate")
    gr.api(feedback, api_name="feedback")
    gr.api(health, api_name="health")


# Chat tab ------------------------------------------------------------------------------------


def settings_panel() -> list[gr.components.Component]:
    """Generation settings, shared by the chat and the compare tab: system prompt,
    temperature, top-p, max new tokens, repetition penalty (in this order)."""
    with gr.Accordion("Generation settings", open=False):
        system = gr.Textbox(label="System prompt", lines=2, elem_id="chat-system")
        with gr.Row():
            temperature = gr.Slider(
                0.0, 2.0, value=0.7, step=0.05, label="Temperature", elem_id="chat-temperature"
            )
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p")
            max_new = gr.Slider(
                1, 1024, value=256, step=1, label="Max new tokens", elem_id="chat-max-new-tokens"
            )
            rep = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
    return [system, temperature, top_p, max_new, rep]


@dataclass(frozen=True)
class ChatTab:
    adapter: gr.Dropdown
    refresh: gr.Button
    gen_inputs: list[gr.components.Component]
    note: gr.Markdown
    chatbot: gr.Chatbot
    clear: gr.Button


def chat_tab(ctx: ChatContext, turns_state: gr.State) -> ChatTab:
    """The conversation: adapter picker, settings, the chat itself, send / retry / clear."""
    with gr.Row():
        adapter_dd = gr.Dropdown(
            [BASE],
            value=BASE,
            label="Adapter",
            scale=3,
            elem_id="chat-adapter",
            allow_custom_value=True,
        )
        refresh_btn = gr.Button("Refresh adapters", scale=1, size="sm")
    gen_inputs = settings_panel()
    note = gr.Markdown("", elem_id="chat-note")
    # Literal text only (see conversation_view): no LaTeX, no custom tags, no HTML.
    chatbot = gr.Chatbot(
        label="Conversation",
        elem_id="chat-conversation",
        height=420,
        feedback_options=("Like", "Dislike"),
        sanitize_html=True,
        render_markdown=True,
        latex_delimiters=[],
        allow_tags=False,
    )
    with gr.Row():
        msg = gr.Textbox(
            placeholder="Ask something…",
            show_label=False,
            scale=6,
            elem_id="chat-input",
            submit_btn=False,
        )
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
    with gr.Row():
        retry = gr.Button("Retry last answer", size="sm", elem_id="chat-retry")
        clear = gr.Button("Clear conversation", size="sm", elem_id="chat-clear")

    def add_message(message: str, turns: list, request: gr.Request):
        ctx.who(request)
        if not (message or "").strip():
            raise gr.Error("Type a message first.")
        turns = [*(turns or []), {"role": "user", "content": message}]
        return "", turns, conversation_view(turns)

    def respond(
        turns: list,
        adapter: str,
        system: str,
        temperature: float,
        top_p: float,
        max_new: float,
        rep: float,
        request: gr.Request,
    ):
        caller = ctx.who(request)
        gen = generation_settings(system, temperature, top_p, max_new, rep)
        turns = list(turns or [])
        if not turns or turns[-1]["role"] != "user":
            raise gr.Error("Nothing to answer: send a message first.")
        messages = [
            {
                "role": t["role"],
                "content": t["content"],
                **({"answer_id": t["answer_id"]} if t.get("answer_id") else {}),
            }
            for t in turns
        ]
        reply = ctx.start_reply(caller, messages, adapter, gen)
        answer = {
            "role": "assistant",
            "content": "",
            "adapter": reply.adapter,
            "answer_id": reply.answer_id,
            "note": _short_note(reply.dropped_turns),
        }
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
        trigger(
            add_message, [msg, turns_state], [msg, turns_state, chatbot], api_name=name, queue=False
        ).then(respond, *resp_io, api_name=f"{name}_respond")

    def drop_last_answer(turns: list, request: gr.Request):
        ctx.who(request)
        turns = list(turns or [])
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()
        if not turns:
            raise gr.Error("Nothing to retry yet.")
        return turns, conversation_view(turns)

    retry.click(
        drop_last_answer, [turns_state], [turns_state, chatbot], api_name="chat_retry", queue=False
    ).then(respond, *resp_io, api_name="chat_retry_respond")
    return ChatTab(adapter_dd, refresh_btn, gen_inputs, note, chatbot, clear)


@dataclass(frozen=True)
class FeedbackPanel:
    box: gr.Group
    status: gr.Markdown


def feedback_panel(ctx: ChatContext, chatbot: gr.Chatbot, turns_state: gr.State) -> FeedbackPanel:
    """👍 / 👎 on an answer opens this panel; sending it rates the stored answer."""
    pending = gr.State(None)  # the answer being rated
    with gr.Group(visible=False, elem_id="chat-feedback") as fb_box:
        fb_title = gr.Markdown("")
        fb_correction = gr.Textbox(
            label="Corrected answer (optional)", lines=3, elem_id="chat-correction"
        )
        fb_comment = gr.Textbox(label="Comment (optional)", elem_id="chat-comment")
        with gr.Row():
            fb_send = gr.Button("Send feedback", variant="primary", elem_id="chat-feedback-send")
            fb_cancel = gr.Button("Cancel", elem_id="chat-feedback-cancel")
    fb_status = gr.Markdown("", elem_id="chat-feedback-status")

    def on_like(turns: list, like: gr.LikeData, request: gr.Request):
        ctx.who(request)
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
        title = (
            f"**Feedback on answer {index // 2 + 1} ({model}): {label}.** Add a "
            "corrected answer and a comment if you like, then send."
        )
        return (
            {"answer_id": turns[index]["answer_id"], "rating": rating},
            gr.Group(visible=True),
            title,
        )

    chatbot.like(
        on_like, [turns_state], [pending, fb_box, fb_title], api_name="chat_like", queue=False
    )

    def send_feedback(pend: dict | None, correction: str, comment: str, request: gr.Request):
        caller = ctx.who(request)
        if not pend:
            raise gr.Error("Click 👍 or 👎 on an answer first.")
        fb = FeedbackIn(
            answer_id=pend["answer_id"],
            rating=pend["rating"],
            correction=correction or None,
            comment=comment or "",
        )
        out = ctx.record(caller, fb)
        return (
            None,
            gr.Group(visible=False),
            "",
            "",
            f"Thanks — feedback #{out['feedback_id']} saved for review.",
        )

    fb_send.click(
        send_feedback,
        [pending, fb_correction, fb_comment],
        [pending, fb_box, fb_correction, fb_comment, fb_status],
        api_name="chat_feedback",
    )
    fb_cancel.click(
        lambda: (None, gr.Group(visible=False)),
        None,
        [pending, fb_box],
        api_name="chat_feedback_cancel",
        queue=False,
    )
    return FeedbackPanel(fb_box, fb_status)


def clear_conversation(chat: ChatTab, feedback: FeedbackPanel, turns_state: gr.State) -> None:
    """The Clear button empties the conversation and closes the feedback panel."""
    chat.clear.click(
        lambda: ([], [], "", gr.Group(visible=False), ""),
        None,
        [turns_state, chat.chatbot, chat.note, feedback.box, feedback.status],
        api_name="chat_clear",
        queue=False,
    )


# Compare tab ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareTab:
    a: gr.Dropdown
    b: gr.Dropdown


def compare_tab(ctx: ChatContext, gen_inputs: list[gr.components.Component]) -> CompareTab:
    """One prompt, answered by the base model and up to two adapters (the chat tab's
    generation settings apply)."""
    gr.Markdown("One prompt, answered by the base model and up to two adapters.")
    cmp_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="compare-prompt")
    with gr.Row():
        cmp_a = gr.Dropdown(
            [NONE_CHOICE],
            value=NONE_CHOICE,
            label="Adapter A",
            allow_custom_value=True,
            elem_id="compare-a",
        )
        cmp_b = gr.Dropdown(
            [NONE_CHOICE],
            value=NONE_CHOICE,
            label="Adapter B",
            allow_custom_value=True,
            elem_id="compare-b",
        )
    cmp_btn = gr.Button("Compare", variant="primary", elem_id="compare-run")
    cmp_note = gr.Markdown("", elem_id="compare-note")
    # Plain text boxes that grow with the answer (up to max_lines, then they scroll):
    # a long answer is never cut off. Each is labelled with the model that wrote it.
    with gr.Row(equal_height=False):
        outs = [
            gr.Textbox(
                label=label,
                lines=6,
                max_lines=60,
                interactive=False,
                autoscroll=False,
                elem_id=f"compare-out-{slot}",
                buttons=["copy"],
            )
            for slot, label in (
                ("base", "base"),
                ("a", "Adapter A: none chosen"),
                ("b", "Adapter B: none chosen"),
            )
        ]

    def compare(
        prompt: str,
        a: str,
        b: str,
        system: str,
        temperature: float,
        top_p: float,
        max_new: float,
        rep: float,
        request: gr.Request,
    ):
        caller = ctx.who(request)
        if not (prompt or "").strip():
            raise gr.Error("Type a prompt to compare.")
        gen = generation_settings(system, temperature, top_p, max_new, rep)
        chosen = [BASE] + [x if x and x != NONE_CHOICE else None for x in (a, b)]
        texts = ["", "", ""]
        notes = ""
        for slot, adapter in enumerate(chosen):
            if adapter is None:
                texts[slot] = "(no adapter chosen)"
                yield (*texts, notes)
                continue
            reply = ctx.start_reply(caller, [{"role": "user", "content": prompt}], adapter, gen)
            notes = notes or (f"*{literal_markdown(reply.note)}*" if reply.note else "")
            for piece in reply:
                texts[slot] += piece
                yield (*texts, notes)
            yield (*texts, notes)

    def answer_label(slot: str):
        def label(choice: str) -> gr.Textbox:
            name = choice if choice and choice != NONE_CHOICE else "none chosen"
            return gr.Textbox(label=f"Adapter {slot}: {name}")

        return label

    # Each answer box names the model that writes into it.
    cmp_a.change(answer_label("A"), [cmp_a], [outs[1]], queue=False, api_visibility="private")
    cmp_b.change(answer_label("B"), [cmp_b], [outs[2]], queue=False, api_visibility="private")

    cmp_btn.click(
        compare, [cmp_prompt, cmp_a, cmp_b, *gen_inputs], [*outs, cmp_note], api_name="compare"
    )
    return CompareTab(cmp_a, cmp_b)


# On every page load --------------------------------------------------------------------------


def adapter_pickers(ctx: ChatContext, demo: gr.Blocks, chat: ChatTab, cmp: CompareTab) -> None:
    """Fill the adapter pickers of both tabs on load and on "Refresh adapters"."""

    def refresh(current: str, a: str, b: str, request: gr.Request):
        names = ctx.service.adapter_names(ctx.who(request).user)
        others = [NONE_CHOICE] + [n for n in names if n != BASE]
        keep = current if current in names else BASE
        return (
            gr.Dropdown(choices=names, value=keep),
            gr.Dropdown(choices=others, value=a if a in others else NONE_CHOICE),
            gr.Dropdown(choices=others, value=b if b in others else NONE_CHOICE),
        )

    pickers = [chat.adapter, cmp.a, cmp.b]
    for trigger, name in ((demo.load, "refresh_on_load"), (chat.refresh.click, "refresh")):
        trigger(refresh, pickers, pickers, api_name=name)


def signed_in_banner(ctx: ChatContext, demo: gr.Blocks, banner: gr.Markdown) -> None:
    """Who is signed in, with a sign-out link (or that authentication is off)."""

    def whoami(request: gr.Request) -> str:
        user = ctx.who(request).user
        if not ctx.settings.auth_enabled:
            return "Authentication is off (development): everyone acts as admin."
        return (
            f"Signed in as **{literal_markdown(user.username)}** "
            f"({literal_markdown(user.role)}) · [sign out](logout)"
        )

    demo.load(whoami, None, banner, api_name="whoami", queue=False)


# The app -------------------------------------------------------------------------------------


def build_app(
    engine: Engine,
    inference: InferenceEngine | None = None,
    settings: Settings | None = None,
) -> gr.Blocks:
    """The chat UI and API over one ChatService (one base model for the whole process)."""
    settings = settings or get_settings()
    ctx = ChatContext(
        engine, settings, ChatService(engine, inference or engine_from_settings(settings))
    )
    with gr.Blocks(title="CLARA Chat", analytics_enabled=False) as demo:
        api_endpoints(ctx)
        # The conversation as the server knows it (server-side state, never sent to the
        # browser): role, text, and for answers the model and the stored answer's id.
        turns_state = gr.State([])
        banner = gr.Markdown("", elem_id="chat-user")
        with gr.Tab("Chat", id="chat"):
            chat = chat_tab(ctx, turns_state)
            feedback = feedback_panel(ctx, chat.chatbot, turns_state)
        clear_conversation(chat, feedback, turns_state)
        with gr.Tab("Compare", id="compare"):
            cmp = compare_tab(ctx, chat.gen_inputs)
        signed_in_banner(ctx, demo, banner)
        adapter_pickers(ctx, demo, chat, cmp)
    return demo
