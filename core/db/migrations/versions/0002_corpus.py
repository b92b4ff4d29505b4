"""Corpus: documents, revisions, chunks, keyword index, graph edges.

Revision ID: 0002_corpus
Revises: 0001_foundation

The revision chain is fixed up front (0001 → 0005) so that the areas can be built in
parallel; each area fills in its own file.
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0002_corpus"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
