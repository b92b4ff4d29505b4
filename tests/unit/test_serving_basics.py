"""Pure parts of chat serving: signed tokens, generation settings, notes, URLs."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from core.config import load_settings
from core.serving.engine import GenerationSettings, PreparedPrompt
from core.serving.service import chat_base_url, feedback_dataset_name
from core.serving.tokens import (
    TokenInvalid,
    sign_embed_token,
    sign_session,
    verify_embed_token,
    verify_session,
)

CFG = load_settings(auth_secret="unit-test-secret-" + "y" * 20)


def test_tokens_round_trip_and_are_not_interchangeable() -> None:
    embed = sign_embed_token("alice", CFG)
    session = sign_session("alice", CFG)
    assert verify_embed_token(embed, CFG) == "alice"
    assert verify_session(session, CFG) == "alice"
    with pytest.raises(TokenInvalid):
        verify_session(embed, CFG)  # an iframe token is no session cookie
    with pytest.raises(TokenInvalid):
        verify_embed_token(session, CFG)


def test_tokens_signed_with_another_secret_or_tampered_are_refused() -> None:
    other = load_settings(auth_secret="another-secret-" + "z" * 20)
    with pytest.raises(TokenInvalid, match="not valid"):
        verify_embed_token(sign_embed_token("alice", other), CFG)
    token = sign_session("alice", CFG)
    with pytest.raises(TokenInvalid):
        verify_session(token[:-2] + ("AA" if not token.endswith("AA") else "BB"), CFG)


def test_an_old_embed_token_has_expired(monkeypatch) -> None:
    import itsdangerous.timed

    real = time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() - 3600)
    old = sign_embed_token("alice", CFG)
    monkeypatch.setattr(itsdangerous.timed.time, "time", real)
    with pytest.raises(TokenInvalid, match="expired"):
        verify_embed_token(old, CFG)
    # A session lives for CLARA_SESSION_EXPIRY_DAYS, so the same age is fine there.
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() - 3600)
    session = sign_session("alice", CFG)
    monkeypatch.setattr(itsdangerous.timed.time, "time", real)
    assert verify_session(session, CFG) == "alice"


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.1), ("temperature", 2.5), ("top_p", 0.0), ("max_new_tokens", 0),
     ("repetition_penalty", 0.5)],
)
def test_generation_settings_refuse_out_of_range_values(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        GenerationSettings(**{field: value})


def test_truncation_note_says_what_was_cut() -> None:
    assert PreparedPrompt(None, [], 0, 0, 256).note == ""
    note = PreparedPrompt(None, [], 4, 0, 256).note
    assert "4 earliest message(s) were left out" in note and "256 tokens" in note
    assert "cut by 30 tokens" in PreparedPrompt(None, [], 0, 30, 512).note


def test_chat_url_for_the_browser() -> None:
    assert chat_base_url(load_settings(chat_port=7999)) == "http://127.0.0.1:7999"
    assert chat_base_url(load_settings(chat_host="0.0.0.0", chat_port=80)) == "http://127.0.0.1:80"
    assert chat_base_url(load_settings(chat_public_url="https://chat.example.org/")) == (
        "https://chat.example.org"
    )
    assert feedback_dataset_name("a b") == "feedback-a-b"
