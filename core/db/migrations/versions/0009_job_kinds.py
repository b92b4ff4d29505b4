"""Jobs: scoring and embedding join training in the one jobs table; a typed failure reason.

Revision ID: 0009_job_kinds
Revises: 0008_chat_answers

`training_jobs.kind` already names what a job does ("sft", "sleep"); "score" and "embed" are
new values, no schema change. A running job now reports its own failure through its lease,
with a reason from a fixed list (`failure_reason`: exception, killed, exit, lease_expired,
...) next to the message in `error`, instead of a marker line in its log.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_job_kinds"
down_revision = "0008_chat_answers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: no table rebuild on SQLite.
    op.add_column("training_jobs", sa.Column("failure_reason", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("failure_reason")
