"""Training: jobs, metrics, adapters.

Revision ID: 0004_training
Revises: 0003_datasets

The revision chain is fixed up front (0001 → 0005) so that the areas can be built in
parallel; each area fills in its own file.
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0004_training"
down_revision = "0003_datasets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
