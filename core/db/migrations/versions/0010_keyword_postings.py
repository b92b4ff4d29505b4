"""Corpus keyword index: BM25F over a postings table, the same on SQLite and Postgres.

Revision ID: 0010_keyword_postings
Revises: 0009_job_kinds

The FTS5 table (SQLite) and the tsvector column (Postgres) give way to corpus_terms and
corpus_term_docs (see core.corpus.keyword for why). Existing documents are indexed again
from their stored text.
"""

from alembic import op

revision = "0010_keyword_postings"
down_revision = "0009_job_kinds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from core.corpus.keyword import rebuild_keyword_index

    rebuild_keyword_index(op.get_bind())


def downgrade() -> None:
    # The code that reads the index knows only the current shape; rebuilding keeps them
    # consistent.
    from core.corpus.keyword import rebuild_keyword_index

    rebuild_keyword_index(op.get_bind())
