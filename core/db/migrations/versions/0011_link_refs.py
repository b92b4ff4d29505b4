"""Corpus links: declared links that name no document are kept as written and resolved later.

Revision ID: 0011_link_refs
Revises: 0010_keyword_postings

Links used to become edges to whatever id the link value looked like; a value of another
form (`mv(1)` for the document `mv.1`) made an edge to nothing, silently. Links are now
matched by id, file name, title or alias at ingest (core.corpus.linking.resolve_links), and
one that matches nothing waits in corpus_link_refs until its target arrives. The dangling
declared edges of earlier ingests move there too (their evidence is the link as written),
so the next ingest resolves them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_link_refs"
down_revision = "0010_keyword_postings"
branch_labels = None
depends_on = None

# Edges found by name in the text (not declared links) are never dangling by construction.
_DANGLING_DECLARED = (
    "FROM corpus_edges WHERE origin <> 'mention' "
    "AND dst NOT IN (SELECT doc_id FROM corpus_documents)"
)


def upgrade() -> None:
    op.create_table(
        "corpus_link_refs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "src",
            sa.String(255),
            sa.ForeignKey(
                "corpus_documents.doc_id",
                ondelete="CASCADE",
                name="fk_corpus_link_refs_src_corpus_documents",
            ),
            nullable=False,
        ),
        sa.Column("ref", sa.String(500), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("origin", sa.String(32), nullable=False, server_default=""),
        sa.Column("link_key", sa.String(16), nullable=False, server_default="auto"),
        sa.UniqueConstraint("src", "ref", "type", name="uq_corpus_link_refs_src_ref_type"),
    )
    op.execute(
        "INSERT INTO corpus_link_refs (src, ref, type, origin, link_key) "
        "SELECT src, CASE WHEN evidence = '' THEN dst ELSE SUBSTR(evidence, 1, 500) END, "
        "type, origin, 'auto' "
        + _DANGLING_DECLARED
        # two dangling edges of one document may carry the same link value
        + " AND id IN (SELECT MIN(id) "
        + _DANGLING_DECLARED
        + " GROUP BY src, CASE WHEN evidence = '' THEN dst ELSE evidence END, type)"
    )
    op.execute("DELETE " + _DANGLING_DECLARED)


def downgrade() -> None:
    # Waiting links become the dangling edges they were before.
    op.execute(
        "INSERT INTO corpus_edges (src, dst, type, origin, evidence) "
        "SELECT src, SUBSTR(ref, 1, 255), type, origin, ref FROM corpus_link_refs r "
        "WHERE NOT EXISTS (SELECT 1 FROM corpus_edges e WHERE e.src = r.src "
        "AND e.dst = SUBSTR(r.ref, 1, 255) AND e.type = r.type)"
    )
    op.drop_table("corpus_link_refs")
