"""Storage and users on both engines: migrations, WAL, audit, lockout, user management."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError

from core.audit import read_audit_log, record
from core.db import current_revision, head_revision, reading, upgrade, writing
from core.db.base import utcnow
from core.db.models import AuditEntry, LoginThrottle, User
from core.login import AccountLocked, AuthenticationFailed, authenticate
from core.permissions import ROLES, AuthError, PermissionDenied
from core.users import (
    UserError,
    create_user,
    ensure_admin,
    list_users,
    principal_for,
    reset_password,
    set_disabled,
    set_role,
)
from tests.conftest import principal


def test_schema_at_head_and_upgrade_idempotent(db_engine):
    assert current_revision(db_engine) == head_revision()
    assert upgrade(db_engine) == head_revision()
    with reading(db_engine) as s:
        roles = s.execute(text("SELECT name FROM roles ORDER BY name")).scalars().all()
    assert roles == sorted(ROLES)


def test_sqlite_runs_in_wal_with_busy_timeout(db_engine):
    if db_engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    with db_engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_first_admin_created_once(db_engine):
    assert ensure_admin(db_engine, None) is None  # the fixture already made one
    with reading(db_engine) as s:
        assert s.scalar(select(func.count()).select_from(User)) == 1


def test_generated_admin_password_works(settings):
    from core.db import get_engine

    engine = get_engine(settings)
    upgrade(engine)
    pw = ensure_admin(engine, None)
    assert pw and len(pw) >= 12
    assert authenticate(engine, "admin", pw).role == "admin"


def test_user_lifecycle_and_audit(db_engine, admin):
    info = create_user(db_engine, admin, "Alice", "secret123", "analyst", "a@x.de", "Alice A")
    assert info.username == "alice" and info.role == "analyst"
    with reading(db_engine) as s:
        stored = s.scalar(select(User.password_hash).where(User.username == "alice"))
    assert stored.startswith("$2") and "secret123" not in stored

    assert authenticate(db_engine, "alice", "secret123").role == "analyst"
    set_role(db_engine, admin, "alice", "trainer")
    assert authenticate(db_engine, "alice", "secret123").role == "trainer"
    reset_password(db_engine, admin, "alice", "newsecret9")
    with pytest.raises(AuthenticationFailed):
        authenticate(db_engine, "alice", "secret123")
    set_disabled(db_engine, admin, "alice", True)
    with pytest.raises(AuthenticationFailed):
        authenticate(db_engine, "alice", "newsecret9")
    assert principal_for(db_engine, "alice") is None

    actions = read_audit_log(db_engine, admin, limit=100).rows
    done = set(zip(actions.action, actions.outcome, strict=True))
    for expected in [
        ("users.add", "ok"),
        ("users.set_role", "ok"),
        ("users.reset_password", "ok"),
        ("users.disable", "ok"),
        ("auth.login", "ok"),
        ("auth.login", "failed"),
    ]:
        assert expected in done
    row = actions[actions.action == "users.add"].iloc[0]
    assert row.actor == "admin" and row.target == "Alice"


def test_bad_user_input(db_engine, admin):
    with pytest.raises(UserError, match="unknown role"):
        create_user(db_engine, admin, "bob", "secret123", "king")
    with pytest.raises(UserError, match="too short"):
        create_user(db_engine, admin, "bob", "short", "user")
    create_user(db_engine, admin, "bob", "secret123", "user")
    with pytest.raises(UserError, match="already exists"):
        create_user(db_engine, admin, "BOB", "secret123", "user")
    with pytest.raises(UserError, match="no enabled admin"):
        set_role(db_engine, admin, "admin", "user")
    failed = read_audit_log(db_engine, admin, action_prefix="users.add").rows
    assert (failed.outcome == "failed").sum() == 3


def test_non_admin_is_denied_and_audited(db_engine, admin):
    analyst = principal("analyst", "ann")
    with pytest.raises(PermissionDenied):
        create_user(db_engine, analyst, "eve", "secret123", "admin")
    with pytest.raises(PermissionDenied):
        list_users(db_engine, analyst)
    rows = read_audit_log(db_engine, admin, user="ann").rows
    assert list(rows.outcome) == ["denied"]


def test_wrong_password_does_not_reveal_user_existence(db_engine):
    with pytest.raises(AuthenticationFailed) as known:
        authenticate(db_engine, "admin", "nope-nope")
    with pytest.raises(AuthenticationFailed) as unknown:
        authenticate(db_engine, "ghost", "nope-nope")
    assert str(known.value) == str(unknown.value) == "Wrong user name or password."


def test_lockout_after_five_failures(db_engine, admin):
    for _ in range(4):
        with pytest.raises(AuthenticationFailed):
            authenticate(db_engine, "admin", "wrong-password")
    with pytest.raises(AccountLocked):
        authenticate(db_engine, "admin", "wrong-password")
    # Even the right password is refused while locked.
    with pytest.raises(AccountLocked):
        authenticate(db_engine, "admin", "adminpass1")
    # Unknown users lock the same way, so a lockout reveals nothing either.
    for _ in range(5):
        with pytest.raises(AuthError):
            authenticate(db_engine, "ghost", "x")
    with pytest.raises(AccountLocked):
        authenticate(db_engine, "ghost", "x")
    rows = read_audit_log(db_engine, admin, action_prefix="auth.lockout").rows
    assert set(rows.target) == {"admin", "ghost"}
    # After the lockout period the right password works again and clears the counter.
    with writing(db_engine) as s:
        s.execute(update(LoginThrottle).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert authenticate(db_engine, "admin", "adminpass1").username == "admin"
    with reading(db_engine) as s:
        assert s.get(LoginThrottle, ("name", "admin")) is None
        assert s.get(LoginThrottle, ("pair", "admin|unknown")) is None


def test_audit_log_is_append_only(db_engine):
    record(db_engine, "admin", "test.action", "x")
    with pytest.raises(DBAPIError, match="append-only"), writing(db_engine) as s:
        s.execute(text("UPDATE audit_log SET actor = 'mallory'"))
    with pytest.raises(DBAPIError, match="append-only"), writing(db_engine) as s:
        s.execute(text("DELETE FROM audit_log"))
    with reading(db_engine) as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry)) >= 1


def test_audit_read_requires_permission(db_engine):
    with pytest.raises(PermissionDenied):
        read_audit_log(db_engine, principal("trainer"))
    assert read_audit_log(db_engine, principal("auditor")).total >= 1
