"""The head revision read from the migration scripts is Alembic's own head."""

from __future__ import annotations

from core.db.migrate import _alembic_head, head_revision


def test_head_read_from_the_scripts_is_alembics_head():
    assert head_revision() == _alembic_head() != ""
