"""Training: what a cancel saved (step and checkpoint).

Revision ID: 0009_training_cancel
Revises: 0008_chat_answers

The chain 0007 → 0009 is fixed up front so that the areas can be built in parallel; each
area fills in its own file (an area with nothing to migrate leaves its upgrade empty).
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0009_training_cancel"
down_revision = "0008_chat_answers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
