"""Chat: answers the server issued, so feedback can only reference what it generated.

Revision ID: 0008_chat_answers
Revises: 0007_auth_sessions

The chain 0007 → 0009 is fixed up front so that the areas can be built in parallel; each
area fills in its own file (an area with nothing to migrate leaves its upgrade empty).
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0008_chat_answers"
down_revision = "0007_auth_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
