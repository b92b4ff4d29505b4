"""Datasets: datasets, samples, reviews, versions.

Revision ID: 0003_datasets
Revises: 0002_corpus

The revision chain is fixed up front (0001 → 0005) so that the areas can be built in
parallel; each area fills in its own file.
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0003_datasets"
down_revision = "0002_corpus"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
