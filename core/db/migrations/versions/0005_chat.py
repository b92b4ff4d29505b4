"""Chat: feedback.

Revision ID: 0005_chat
Revises: 0004_training

The revision chain is fixed up front (0001 → 0005) so that the areas can be built in
parallel; each area fills in its own file.
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import JSONType, UTCDateTime

revision = "0005_chat"
down_revision = "0004_training"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("adapter_name", sa.String(64), nullable=False),
        sa.Column("adapter_id", sa.String(64), nullable=True),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False, server_default=""),
        sa.Column("conversation", JSONType, nullable=False),
        sa.Column("settings", JSONType, nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=True),
        sa.Column("sample_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("rating IN ('up', 'down')", name="ck_chat_feedback_rating"),
    )
    op.create_index("ix_chat_feedback_created_at", "chat_feedback", ["created_at"])
    op.create_index("ix_chat_feedback_username", "chat_feedback", ["username"])
    op.create_index("ix_chat_feedback_adapter_name", "chat_feedback", ["adapter_name"])


def downgrade() -> None:
    op.drop_table("chat_feedback")
