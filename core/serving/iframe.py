"""Where the Streamlit Chat page points its iframe: the chat server's address, whether it
answers, and (with authentication on) a single-use hand-over token for the signed-in user."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from core.config import Settings, get_settings
from core.permissions import Principal, require


@dataclass(frozen=True)
class ChatEmbed:
    """Where the page points its iframe, and whether the chat server answers there."""

    url: str  # with auth on: includes a single-use sign-in token ("" while the server is down)
    base_url: str
    server_up: bool
    problem: str = ""


def chat_base_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if settings.chat_public_url:
        return settings.chat_public_url.rstrip("/")
    host = settings.chat_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind is not an address a browser can open
    return f"http://{host}:{settings.chat_port}"


def chat_embed(
    actor: Principal,
    settings: Settings | None = None,
    *,
    db: Engine | None = None,
    parent_id: str | None = None,
    known_url: str = "",
) -> ChatEmbed:
    """The iframe URL for `actor`, and whether the chat server answers.

    With authentication on, the URL carries a single-use hand-over token (core.sessions)
    that the chat server redeems for a chat session; `parent_id` is the web session it is
    issued from, so that logging out of the web app also ends the chat. The token is issued
    only when the server answers (nothing would redeem it otherwise).

    `known_url` is the URL given to this page before: while it points at this server it is
    returned again instead of a new token, so that a rerun of the page keeps the same iframe
    (a new URL would reload it and lose the conversation). The chat server lets a used link
    in again only for a browser that holds a chat session of the link's owner.
    """
    import httpx

    require(actor, "chat:use")
    settings = settings or get_settings()
    base = chat_base_url(settings)
    problem = ""
    try:
        health = httpx.get(f"{base}/clara/health", timeout=3).json()
        up = health.get("status") == "ok"
    except (httpx.HTTPError, ValueError) as err:
        up = False
        problem = (
            f"The chat server does not answer at {base} ({type(err).__name__}). Right after "
            "`clara up` it may still be loading the base model (the first start builds the "
            "demo model: a few minutes on a CPU; see "
            f"{settings.data_path / 'logs' / 'chat.log'}). Otherwise start it with "
            "`clara chat` (or `clara up` with CLARA_START_CHAT=true). Then reload this page."
        )
    url = f"{base}/"
    if settings.auth_enabled:
        url = ""
        if up and known_url.startswith(f"{base}/clara/enter?token="):
            url = known_url
        elif up:
            from core.serving.tokens import HANDOVER_PURPOSE
            from core.sessions import issue_handover

            if db is None:
                raise ValueError("chat_embed needs the database to issue a sign-in token")
            token = issue_handover(db, actor, purpose=HANDOVER_PURPOSE, parent_id=parent_id)
            url = f"{base}/clara/enter?token={token}"
    return ChatEmbed(url=url, base_url=base, server_up=up, problem=problem)
