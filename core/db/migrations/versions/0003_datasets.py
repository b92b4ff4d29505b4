"""Datasets: datasets, samples, reviews, versions.

Revision ID: 0003_datasets
Revises: 0002_corpus

The revision chain is fixed up front (0001 → 0005) so that the areas can be built in
parallel; each area fills in its own file.
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import JSONType, UTCDateTime

revision = "0003_datasets"
down_revision = "0002_corpus"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("kind", sa.String(16), nullable=False, server_default="standard"),
        sa.Column("thresholds", JSONType, nullable=True),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("name", name="uq_datasets_name"),
    )
    op.create_table(
        "dataset_samples",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "dataset_id",
            sa.Integer(),
            sa.ForeignKey(
                "datasets.id", ondelete="CASCADE", name="fk_dataset_samples_dataset_id_datasets"
            ),
            nullable=False,
        ),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("messages", JSONType, nullable=True),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("provenance", JSONType, nullable=False),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("source", sa.String(32), nullable=False, server_default="manual"),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("char_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("token_count", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("signals", JSONType, nullable=True),
        sa.Column("reasons", JSONType, nullable=True),
        sa.Column("reason_codes", sa.Text(), nullable=False, server_default=""),
        sa.Column("flagged_spans", JSONType, nullable=True),
        sa.Column("duplicate_of", sa.String(64), nullable=True),
        sa.Column("minhash", sa.LargeBinary(), nullable=True),
        sa.Column("scored_at", UTCDateTime(), nullable=True),
        sa.Column("row_version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("original", JSONType, nullable=True),
        sa.Column("edited_by", sa.String(64), nullable=True),
        sa.Column("edited_at", UTCDateTime(), nullable=True),
        sa.Column("reviewed_by", sa.String(64), nullable=True),
        sa.Column("reviewed_at", UTCDateTime(), nullable=True),
        sa.Column("review_note", sa.Text(), nullable=False, server_default=""),
        sa.Column("changed_by", sa.String(64), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_dataset_samples_dataset_id", "dataset_samples", ["dataset_id"])
    op.create_index("ix_dataset_samples_status", "dataset_samples", ["dataset_id", "status"])
    op.create_index("ix_dataset_samples_score", "dataset_samples", ["dataset_id", "score"])
    op.create_index("ix_dataset_samples_source", "dataset_samples", ["dataset_id", "source"])
    op.create_index("ix_dataset_samples_content_sha256", "dataset_samples", ["content_sha256"])

    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "dataset_id",
            sa.Integer(),
            sa.ForeignKey(
                "datasets.id", ondelete="RESTRICT", name="fk_dataset_versions_dataset_id_datasets"
            ),
            nullable=False,
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("manifest", JSONType, nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("counts", JSONType, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("dataset_id", "number", name="uq_dataset_versions_number"),
    )
    op.create_index("ix_dataset_versions_dataset_id", "dataset_versions", ["dataset_id"])

    op.create_table(
        "dataset_scoring_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "dataset_id",
            sa.Integer(),
            sa.ForeignKey(
                "datasets.id",
                ondelete="CASCADE",
                name="fk_dataset_scoring_runs_dataset_id_datasets",
            ),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("total", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("thresholds", JSONType, nullable=True),
        sa.Column("stats", JSONType, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_dataset_scoring_runs_dataset_id", "dataset_scoring_runs", ["dataset_id"])

    # A frozen version is immutable at the database level too (its files are read-only).
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER dataset_versions_immutable BEFORE UPDATE ON dataset_versions "
            "BEGIN SELECT RAISE(ABORT, 'dataset_versions are immutable: freeze a new version'); "
            "END"
        )
    else:
        op.execute(
            "CREATE FUNCTION dataset_versions_immutable() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'dataset_versions are immutable: freeze a new version'; "
            "END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER dataset_versions_immutable BEFORE UPDATE ON dataset_versions "
            "FOR EACH ROW EXECUTE FUNCTION dataset_versions_immutable()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER IF EXISTS dataset_versions_immutable ON dataset_versions")
        op.execute("DROP FUNCTION IF EXISTS dataset_versions_immutable()")
    op.drop_table("dataset_scoring_runs")
    op.drop_table("dataset_versions")
    op.drop_table("dataset_samples")
    op.drop_table("datasets")
