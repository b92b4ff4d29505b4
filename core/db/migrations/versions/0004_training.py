"""Training: jobs, metrics, adapters.

Revision ID: 0004_training
Revises: 0003_datasets

The revision chain is fixed up front (0001 → 0005) so that the areas can be built in
parallel; each area fills in its own file. Dataset versions are referenced by id without a
foreign key: that table belongs to another area's migration, and a job keeps its history
even when a version is deleted later.
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import JSONType, UTCDateTime

revision = "0004_training"
down_revision = "0003_datasets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_jobs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False, server_default="sft"),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("method", sa.String(16), nullable=False, server_default="lora"),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False, server_default=""),
        sa.Column("dataset_version_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="3"),
        sa.Column("fencing_token", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_started_at", sa.Float(), nullable=True),
        sa.Column("worker_host", sa.String(255), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_steps", sa.Integer(), nullable=True),
        sa.Column("checkpoint", sa.Text(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("output_dir", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "state IN ('queued','running','succeeded','failed','cancelled')", name="state"
        ),
    )
    op.create_index("ix_training_jobs_claim", "training_jobs", ["state", "priority", "id"])
    op.create_index("ix_training_jobs_name", "training_jobs", ["name"])
    op.create_table(
        "training_metrics",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            sa.Integer(),
            sa.ForeignKey(
                "training_jobs.id",
                ondelete="CASCADE",
                name="fk_training_metrics_job_id_training_jobs",
            ),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("phase", sa.String(16), nullable=False, server_default="train"),
        sa.Column("step", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("epoch", sa.Float(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("learning_rate", sa.Float(), nullable=True),
        sa.Column("grad_norm", sa.Float(), nullable=True),
        sa.Column("tokens_per_second", sa.Float(), nullable=True),
        sa.Column("eval_loss", sa.Float(), nullable=True),
        sa.Column("eval_perplexity", sa.Float(), nullable=True),
        sa.Column("extra", JSONType, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_training_metrics_job_id", "training_metrics", ["job_id"])
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("base_model_fingerprint", sa.String(64), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("dataset_version_id", sa.Integer(), nullable=True),
        sa.Column("dataset_manifest_sha256", sa.String(64), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("parent_adapter_id", sa.Integer(), nullable=True),
        sa.Column("metrics", JSONType, nullable=False),
        sa.Column("library_versions", JSONType, nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("name", name="uq_adapters_name"),
    )
    op.create_index("ix_adapters_job_id", "adapters", ["job_id"])


def downgrade() -> None:
    op.drop_table("adapters")
    op.drop_table("training_metrics")
    op.drop_index("ix_training_jobs_name", table_name="training_jobs")
    op.drop_index("ix_training_jobs_claim", table_name="training_jobs")
    op.drop_table("training_jobs")
