"""`clara chat`: the Gradio chat server (embedded by the Streamlit "Chat" page).

The parts:

- workers.chat_app: `build_app(engine)` makes the gr.Blocks, one function per tab and panel
  (chat, generation settings, feedback, compare; every endpoint has an explicit api_name);
- workers.chat_server: `create_server(engine)` mounts it behind our own sign-in (/login,
  /logout, the /clara/enter hand-over, the SessionGate in front of every route);
- workers.chat_callers: who a request comes from (the chat session in its header or cookie).

Every answer is stored with an id (core.serving.answers); feedback names that id and can
only rate answers given in the caller's own session. Prompts and answers are shown as literal
text (core.serving.render): no image or HTML in a conversation makes the browser fetch
anything.
"""

from __future__ import annotations

from core.config import Settings, get_settings
from core.serving.chat import engine_from_settings
from workers.chat_server import create_server


def serve(
    host: str | None = None,
    port: int | None = None,
    settings: Settings | None = None,
    quantization: str | None = None,
) -> None:
    """Run the chat server until stopped (what `clara chat` and `clara up` start)."""
    import uvicorn

    from core.ops.heartbeats import ProcessHeartbeat
    from core.system import prepare

    settings = settings or get_settings()
    st = prepare(settings)
    inference = engine_from_settings(settings, quantization)
    inference.load()  # fail at start, with the model's own error, not at the first question
    app = create_server(st.engine, inference, settings)
    host, port = host or settings.chat_host, port or settings.chat_port
    url = settings.chat_public_url or f"http://{host}:{port}"

    def describe() -> dict:
        return {"url": url, "base_model": inference.base_model}

    presence = ProcessHeartbeat(st.engine, "chat", describe, every=settings.heartbeat_seconds)
    with presence.running():
        # Open streams (a chat client's event stream) must not hold a stop up for ever.
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
