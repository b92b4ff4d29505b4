"""Tuned embedding models: the registry of "embed-tune" jobs' models, with lineage.

Revision ID: 0012_embedding_models
Revises: 0011_link_refs

An "embed-tune" job (a new value of `training_jobs.kind`, no schema change) fine-tunes the
embedding model on the corpus; its model is registered here with the base model, the corpus
state (documents, chunks, a sha256 over the documents), the job, the spec, the pair counts
and the validation figures. Which model the corpus uses is recorded next to the models in
the data dir (core.corpus.embedders), with the vector store's own record of what filled it.
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import JSONType, UTCDateTime

revision = "0012_embedding_models"
down_revision = "0011_link_refs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embedding_models",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("base_model_fingerprint", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("corpus_documents", sa.Integer(), nullable=False),
        sa.Column("corpus_chunks", sa.Integer(), nullable=False),
        sa.Column("corpus_sha256", sa.String(64), nullable=False),
        sa.Column("pairs", JSONType, nullable=False),
        sa.Column("metrics", JSONType, nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("library_versions", JSONType, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("name", name="uq_embedding_models_name"),
    )
    op.create_index("ix_embedding_models_job_id", "embedding_models", ["job_id"])


def downgrade() -> None:
    op.drop_table("embedding_models")
