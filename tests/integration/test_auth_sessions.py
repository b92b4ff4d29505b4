"""Server-side sessions, hand-overs and login throttling on both engines (issue 10, items 3, 8).

Each test fails on the old code: sessions there were stateless signed cookies (nothing to
revoke), the chat sign-in token could be replayed until it expired, and failures were
counted per name only, so one address could lock a user out everywhere.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core import sessions
from core.audit import read_audit_log
from core.db import reading, writing
from core.db.base import utcnow
from core.db.models import AuthSession, User
from core.login import AccountLocked, LoginLimits, authenticate
from core.permissions import SYSTEM, AuthError
from core.users import create_user, principal_for, reset_password, set_disabled, set_role

LIMITS = LoginLimits(per_name_and_address=5, per_address=20, per_name=30, lockout_seconds=300)


@pytest.fixture
def alice(db_engine, admin):
    create_user(db_engine, admin, "alice", "alice-pass-1", "trainer")
    return principal_for(db_engine, "alice")


def test_session_token_is_stored_only_as_hash_and_resolves(db_engine, alice):
    token = sessions.open_session(db_engine, alice, client_addr="127.0.0.1", user_agent="ua")
    with reading(db_engine) as s:
        ids = list(s.scalars(select(AuthSession.id)))
    assert token not in ids and sessions.session_id(token) in ids
    assert sessions.resolve_session(db_engine, token).username == "alice"
    assert sessions.resolve_session(db_engine, token, kind="chat") is None
    assert sessions.resolve_session(db_engine, token + "x") is None
    assert sessions.resolve_session(db_engine, "") is None


def test_logout_revokes_a_copied_token(db_engine, alice):
    token = sessions.open_session(db_engine, alice)
    copied = str(token)
    sessions.end_web_session(db_engine, token, alice)
    assert sessions.resolve_session(db_engine, copied) is None
    rows = read_audit_log(db_engine, SYSTEM, action_prefix="auth.logout").rows
    assert list(rows.actor) == ["alice"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e, a: set_disabled(e, a, "alice"), "user disabled"),
        (lambda e, a: reset_password(e, a, "alice", "another-pass-2"), "password reset"),
        (lambda e, a: set_role(e, a, "alice", "user"), "role changed"),
    ],
)
def test_disable_reset_and_role_change_end_every_session(db_engine, admin, alice, change, reason):
    web = sessions.open_session(db_engine, alice)
    chat = sessions.open_session(db_engine, alice, kind="chat")
    other = sessions.open_session(db_engine, admin)
    change(db_engine, admin)
    assert sessions.resolve_session(db_engine, web) is None
    assert sessions.resolve_session(db_engine, chat) is None
    assert sessions.resolve_session(db_engine, other).username == "admin"
    with reading(db_engine) as s:
        row = s.get(AuthSession, sessions.session_id(web))
        assert row.revoked_reason == reason


def test_expired_session_is_refused(db_engine, alice):
    token = sessions.open_session(db_engine, alice, ttl_seconds=60)
    with writing(db_engine) as s:
        s.execute(update(AuthSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert sessions.resolve_session(db_engine, token) is None


def test_role_is_read_per_request(db_engine, admin, alice):
    token = sessions.open_session(db_engine, alice)
    assert sessions.resolve_session(db_engine, token).role == "trainer"
    set_role(db_engine, admin, "alice", "analyst")  # revokes: sign in again
    token = sessions.open_session(db_engine, alice)
    with writing(db_engine) as s:
        s.execute(update(User).where(User.username == "alice").values(role="user"))
    assert sessions.resolve_session(db_engine, token).role == "user"


def test_handover_is_single_use_and_child_of_the_web_session(db_engine, alice):
    web = sessions.open_session(db_engine, alice)
    parent = sessions.session_id(web)
    hand = sessions.issue_handover(db_engine, alice, purpose="chat", parent_id=parent)
    # A hand-over is no session by itself.
    assert sessions.resolve_session(db_engine, hand) is None
    with pytest.raises(sessions.HandoverInvalid, match="not valid"):
        sessions.redeem_handover(db_engine, hand, purpose="api")
    who, got_parent = sessions.redeem_handover(db_engine, hand, purpose="chat")
    assert who.username == "alice" and got_parent == parent
    with pytest.raises(sessions.HandoverInvalid, match="used already"):
        sessions.redeem_handover(db_engine, hand, purpose="chat")
    chat = sessions.open_session(db_engine, who, kind="chat", parent_id=got_parent)
    assert sessions.resolve_session(db_engine, chat, kind="chat").username == "alice"
    # Logging out of the web app ends the chat opened from it.
    sessions.revoke_session(db_engine, web)
    assert sessions.resolve_session(db_engine, chat, kind="chat") is None


def test_handover_redeemed_concurrently_succeeds_once(db_engine, alice):
    hand = sessions.issue_handover(db_engine, alice, purpose="chat")
    results: list[str] = []

    def redeem() -> None:
        try:
            sessions.redeem_handover(db_engine, hand, purpose="chat")
            results.append("ok")
        except sessions.HandoverInvalid:
            results.append("refused")

    threads = [threading.Thread(target=redeem) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok", "refused", "refused", "refused"]


def test_expired_handover_is_refused(db_engine, alice):
    hand = sessions.issue_handover(db_engine, alice, purpose="chat", ttl_seconds=60)
    with writing(db_engine) as s:
        s.execute(update(AuthSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(sessions.HandoverInvalid, match="expired"):
        sessions.redeem_handover(db_engine, hand, purpose="chat")


def _fail(engine, name: str, addr: str, times: int) -> None:
    for _ in range(times):
        with pytest.raises(AuthError):
            authenticate(engine, name, "wrong-password", client_addr=addr, limits=LIMITS)


def test_attacker_address_cannot_lock_the_user_out_elsewhere(db_engine, admin):
    _fail(db_engine, "admin", "203.0.113.9", 5)
    with pytest.raises(AccountLocked):
        authenticate(db_engine, "admin", "adminpass1", "203.0.113.9", LIMITS)
    # The real admin, from another address, still gets in.
    ok = authenticate(db_engine, "admin", "adminpass1", "192.0.2.10", LIMITS)
    assert ok.username == "admin"
    rows = read_audit_log(db_engine, admin, action_prefix="auth.lockout").rows
    assert rows.iloc[0].detail["scope"] == "name from address"


def test_one_address_spraying_names_is_locked_for_every_name(db_engine, admin, alice):
    for i in range(4):
        _fail(db_engine, f"user{i}", "203.0.113.7", 5)  # 4 x 5 = 20 failures
    with pytest.raises(AccountLocked):
        authenticate(db_engine, "alice", "alice-pass-1", "203.0.113.7", LIMITS)
    assert authenticate(db_engine, "alice", "alice-pass-1", "192.0.2.1", LIMITS)


def test_many_addresses_guessing_one_name_lock_it_everywhere(db_engine, admin):
    for i in range(10):
        _fail(db_engine, "admin", f"198.51.100.{i}", 3)  # 30 failures, none locks a pair
    with pytest.raises(AccountLocked):
        authenticate(db_engine, "admin", "adminpass1", "192.0.2.99", LIMITS)
