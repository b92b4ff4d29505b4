"""The machines of a distributed training job, and the GPUs a job needs.

Revision ID: 0015_job_nodes
Revises: 0014_service_heartbeats

A job trained over several machines is claimed by one worker like any other; the others
join it. The database is their coordinator: the job's process publishes node 0 with the
address its ranks meet at, and each joining worker takes the next node rank with one
insert, which the primary key (job, attempt token, node rank) lets only one worker make.
`training_jobs.gpus` is what each machine of a job must have: a worker claims only jobs
that fit on it (`clara worker --gpus N`).
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import UTCDateTime

revision = "0015_job_nodes"
down_revision = "0014_service_heartbeats"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "training_jobs", sa.Column("gpus", sa.Integer(), nullable=False, server_default="0")
    )
    op.create_table(
        "job_nodes",
        sa.Column(
            "job_id",
            sa.Integer(),
            sa.ForeignKey(
                "training_jobs.id", ondelete="CASCADE", name="fk_job_nodes_job_id_training_jobs"
            ),
            primary_key=True,
        ),
        sa.Column("token", sa.Integer(), primary_key=True),
        sa.Column("node_rank", sa.Integer(), primary_key=True),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("address", sa.String(255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("joined_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_nodes")
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("gpus")
