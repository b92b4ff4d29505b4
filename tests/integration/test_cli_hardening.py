"""`clara` checks the permission before it asks anything (issue 10, item 10).

Real `clara` processes against a real database, acting (CLARA_CLI_USER) as users without the
permission, with stdin closed: the command must end with the permission message and must
not have asked for a password or a confirmation first. The refusal is audited.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from core.db import reading
from core.db.models import AuditEntry
from core.users import create_user
from tests.cli_run import clara

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

PROMPTS = ("Password", "Repeat for confirmation", "delete adapter", "Delete ", "[y/N]")


def assert_refused_without_asking(proc, permission: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out
    assert "permission denied" in proc.stderr and f"'{permission}'" in proc.stderr, out
    assert "Aborted" not in out, out
    for prompt in PROMPTS:
        assert prompt not in out, f"asked {prompt!r} before checking the permission:\n{out}"


def denied_rows(engine, action: str) -> list[tuple[str, str, str]]:
    with reading(engine) as s:
        return [
            (r.actor, r.target, r.detail.get("permission"))
            for r in s.scalars(
                select(AuditEntry).where(
                    AuditEntry.action == action, AuditEntry.outcome == "denied"
                )
            )
        ]


@pytest.fixture
def people(db_engine, admin):
    create_user(db_engine, admin, "ulla", "ulla-pass-1", "user")
    create_user(db_engine, admin, "anna", "anna-pass-1", "analyst")
    create_user(db_engine, admin, "otto", "otto-pass-1", "auditor")
    return db_engine


def test_users_add_and_reset_password_refuse_before_the_password_prompt(people, settings):
    p = clara(settings, "users", "add", "mallory", "--role", "admin", user="ulla")
    assert_refused_without_asking(p, "users:manage")
    assert denied_rows(people, "users.add") == [("ulla", "mallory", "users:manage")]

    p = clara(settings, "users", "reset-password", "admin", user="anna")
    assert_refused_without_asking(p, "users:manage")
    assert denied_rows(people, "users.reset_password") == [("anna", "admin", "users:manage")]

    # Everyone may still change their own password, and is asked for it.
    p = clara(settings, "users", "reset-password", "ulla", user="ulla", stdin="new-pass-22\n" * 2)
    assert p.returncode == 0, p.stderr
    assert "password of ulla changed" in p.stdout
    # An admin is asked for the new user's password, as before.
    p = clara(settings, "users", "add", "neu", "--role", "user", stdin="neu-pass-33\n" * 2)
    assert p.returncode == 0, p.stderr
    assert "Password" in p.stdout + p.stderr and "added user neu" in p.stdout


def test_adapters_and_corpus_delete_refuse_before_the_confirmation(people, settings):
    p = clara(settings, "adapters", "delete", "some-adapter", user="anna")
    assert_refused_without_asking(p, "adapters:activate")
    assert denied_rows(people, "adapters.delete") == [("anna", "some-adapter", "adapters:activate")]

    p = clara(settings, "corpus", "delete", "doc-1", user="otto")
    assert_refused_without_asking(p, "corpus:ingest")
    assert denied_rows(people, "corpus.delete") == [("otto", "doc-1", "corpus:ingest")]

    # Allowed, but there is nothing to delete: said at once, not after a "really?".
    p = clara(settings, "adapters", "delete", "no-such-adapter")
    assert p.returncode == 1 and "no-such-adapter" in p.stderr, p.stderr
    assert "delete adapter" not in p.stdout + p.stderr
    p = clara(settings, "corpus", "delete", "no-such-doc")
    assert p.returncode == 1 and "no-such-doc" in p.stderr, p.stderr
    assert "Delete " not in p.stdout + p.stderr


def test_generate_refuses_before_reading_the_prompt_from_stdin(people, settings):
    p = clara(settings, "generate", "-", user="otto")
    assert_refused_without_asking(p, "chat:use")


def test_status_shows_paths_and_tables_only_to_admins_and_auditors(people, settings):
    # (issue 10, item 9: the same rule as the Home page, decided in core.system)
    for name in ("ulla", "anna"):
        p = clara(settings, "status", "--json", user=name)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["detailed"] is False and out["database_ok"] is True
        assert out["data_dir"] is None and out["database_url"] is None
        assert out["table_counts"] == {}
        assert str(settings.data_path) not in p.stdout
        p = clara(settings, "status", user=name)
        assert str(settings.data_path) not in p.stdout and "users" not in p.stdout
        assert "shown to admins and auditors" in p.stdout
    p = clara(settings, "status", "--json", user="otto")
    out = json.loads(p.stdout)
    assert out["detailed"] and out["data_dir"] == str(settings.data_path)
    assert out["table_counts"]["users"] == 4
