"""Names shared by the chat server and its clients for signing in.

The tokens themselves are server-side sessions (core.sessions): the Streamlit page issues a
single-use hand-over token (purpose HANDOVER_PURPOSE) for the iframe URL; the chat server
redeems it at /clara/enter and keeps its own chat session in the SESSION_COOKIE cookie. API
clients may send a chat session token in the TOKEN_HEADER header instead.
"""

from __future__ import annotations

SESSION_COOKIE = "clara_chat_session"
TOKEN_HEADER = "X-Clara-Token"
HANDOVER_PURPOSE = "chat"
