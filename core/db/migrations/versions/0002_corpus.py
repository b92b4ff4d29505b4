"""Corpus: documents, revisions, chunks, keyword index, graph edges.

Revision ID: 0002_corpus
Revises: 0001_foundation

The revision chain is fixed up front (0001 → 0005) so that the areas can be built in
parallel; each area fills in its own file. The keyword index differs per engine; its DDL
lives in core.corpus.keyword next to the queries that use it.
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import JSONType, UTCDateTime

revision = "0002_corpus"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "corpus_documents",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("doc_id", sa.String(255), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False, server_default=""),
        sa.Column("text", sa.Text(), nullable=False, server_default=""),
        sa.Column("document_type", sa.String(64), nullable=True),
        sa.Column("domain", sa.String(64), nullable=True),
        sa.Column("date", sa.Date(), nullable=True),
        sa.Column("metadata", JSONType, nullable=True),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("ingested_at", UTCDateTime(), nullable=False),
        sa.Column("language", sa.String(16), nullable=False, server_default="de"),
        sa.UniqueConstraint("doc_id", name="uq_corpus_documents_doc_id"),
    )
    op.create_index("ix_corpus_documents_document_type", "corpus_documents", ["document_type"])
    op.create_index("ix_corpus_documents_domain", "corpus_documents", ["domain"])
    op.create_index("ix_corpus_documents_date", "corpus_documents", ["date"])
    op.create_table(
        "corpus_revisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("doc_id", sa.String(255), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column("ingested_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("doc_id", "revision", name="uq_corpus_revisions_doc_rev"),
    )
    op.create_index("ix_corpus_revisions_doc_id", "corpus_revisions", ["doc_id"])
    op.create_table(
        "corpus_chunks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "doc_id",
            sa.String(255),
            sa.ForeignKey(
                "corpus_documents.doc_id",
                ondelete="CASCADE",
                name="fk_corpus_chunks_doc_id_corpus_documents",
            ),
            nullable=False,
        ),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("start_char", sa.Integer(), nullable=False),
        sa.Column("end_char", sa.Integer(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("embedded", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_corpus_chunks_doc", "corpus_chunks", ["doc_id", "chunk_index"])
    op.create_index("ix_corpus_chunks_pending", "corpus_chunks", ["embedded"])
    op.create_table(
        "corpus_edges",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "src",
            sa.String(255),
            sa.ForeignKey(
                "corpus_documents.doc_id",
                ondelete="CASCADE",
                name="fk_corpus_edges_src_corpus_documents",
            ),
            nullable=False,
        ),
        sa.Column("dst", sa.String(255), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("origin", sa.String(32), nullable=False, server_default=""),
        sa.Column("evidence", sa.Text(), nullable=False, server_default=""),
        sa.UniqueConstraint("src", "dst", "type", name="uq_corpus_edges_src_dst_type"),
    )
    op.create_index("ix_corpus_edges_dst", "corpus_edges", ["dst"])
    op.create_index("ix_corpus_edges_src", "corpus_edges", ["src"])
    op.create_table(
        "corpus_saved_searches",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("query", sa.Text(), nullable=False, server_default=""),
        sa.Column("mode", sa.String(16), nullable=False, server_default="hybrid"),
        sa.Column("k", sa.Integer(), nullable=False, server_default="20"),
        sa.Column("weights", JSONType, nullable=True),
        sa.Column("filters", JSONType, nullable=True),
        sa.Column("options", JSONType, nullable=True),
        sa.Column("created_by", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("name", name="uq_corpus_saved_searches_name"),
    )
    from core.corpus.keyword import create_keyword_index

    create_keyword_index(op.get_bind())


def downgrade() -> None:
    from core.corpus.keyword import drop_keyword_index

    drop_keyword_index(op.get_bind())
    op.drop_table("corpus_saved_searches")
    op.drop_table("corpus_edges")
    op.drop_table("corpus_chunks")
    op.drop_table("corpus_revisions")
    op.drop_table("corpus_documents")
