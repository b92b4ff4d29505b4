"""Signed, short-lived tokens that let the Streamlit page hand its login to the chat server.

The page signs the user name with CLARA_AUTH_SECRET; the chat server checks the signature and
age, then sets its own session cookie (signed the same way, with another salt, so an embed
token can never be replayed as a session and vice versa). Nothing is stored server-side:
the user is re-read from the database on every request, so disabling a user ends their chat.
"""

from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from core.config import Settings, get_settings

EMBED_SALT = "clara-chat-embed"
SESSION_SALT = "clara-chat-session"
EMBED_MAX_AGE_S = 300
SESSION_COOKIE = "clara_chat_session"
TOKEN_HEADER = "X-Clara-Token"


class TokenInvalid(Exception):
    pass


def _serializer(settings: Settings | None, salt: str) -> URLSafeTimedSerializer:
    secret = (settings or get_settings()).auth_secret.get_secret_value()
    return URLSafeTimedSerializer(secret, salt=salt)


def sign_embed_token(username: str, settings: Settings | None = None) -> str:
    """A token for the chat iframe URL, valid for EMBED_MAX_AGE_S seconds."""
    return _serializer(settings, EMBED_SALT).dumps({"u": username})


def sign_session(username: str, settings: Settings | None = None) -> str:
    return _serializer(settings, SESSION_SALT).dumps({"u": username})


def _load(token: str, salt: str, max_age: float, settings: Settings | None) -> str:
    try:
        data = _serializer(settings, salt).loads(token, max_age=max_age)
    except SignatureExpired:
        raise TokenInvalid("the sign-in link has expired; reload the page") from None
    except BadSignature:
        raise TokenInvalid("the sign-in token is not valid") from None
    name = data.get("u") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise TokenInvalid("the sign-in token names no user")
    return name


def verify_embed_token(token: str, settings: Settings | None = None) -> str:
    return _load(token, EMBED_SALT, EMBED_MAX_AGE_S, settings)


def verify_session(token: str, settings: Settings | None = None) -> str:
    s = settings or get_settings()
    return _load(token, SESSION_SALT, s.session_expiry_days * 86400, s)
