"""Auth: server-side sessions, single-use hand-over tokens, login throttling by name and address.

Revision ID: 0007_auth_sessions
Revises: 0006_keyword_parts

The chain 0007 → 0009 is fixed up front so that the areas can be built in parallel; each
area fills in its own file (an area with nothing to migrate leaves its upgrade empty).
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0007_auth_sessions"
down_revision = "0006_keyword_parts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
