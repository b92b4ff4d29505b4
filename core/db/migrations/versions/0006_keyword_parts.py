"""Corpus keyword index: compound parts column and term statistics.

Revision ID: 0006_keyword_parts
Revises: 0005_chat

The keyword index now also holds the parts of German compounds (weighted below whole words)
and, on SQLite, an fts5vocab table that lets queries skip terms too common to change the
ranking. Existing documents are indexed again from their stored text.
"""

from alembic import op

revision = "0006_keyword_parts"
down_revision = "0005_chat"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from core.corpus.keyword import rebuild_keyword_index

    rebuild_keyword_index(op.get_bind())


def downgrade() -> None:
    # The earlier shape is a subset of this one's columns; rebuilding in the current shape
    # keeps the index consistent with the code that reads it.
    from core.corpus.keyword import rebuild_keyword_index

    rebuild_keyword_index(op.get_bind())
