"""Chat: answers the server issued, so feedback can only reference what it generated.

Revision ID: 0008_chat_answers
Revises: 0007_auth_sessions

Feedback used to carry its own answer and conversation, so anyone could file any text as a
"rated answer". Now every generated answer is stored (`chat_answers`) and feedback names one
of them (`chat_feedback.answer_id`, unique: one rating per answer).
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import JSONType, UTCDateTime

revision = "0008_chat_answers"
down_revision = "0007_auth_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_answers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("adapter_name", sa.String(64), nullable=False),
        sa.Column("adapter_id", sa.String(64), nullable=True),
        sa.Column("context", JSONType, nullable=False),
        sa.Column("answer", sa.Text(), nullable=False, server_default=""),
        sa.Column("settings", JSONType, nullable=False),
        sa.Column("dropped_turns", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("complete", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_chat_answers_created_at", "chat_answers", ["created_at"])
    op.create_index("ix_chat_answers_username", "chat_answers", ["username"])
    op.create_index("ix_chat_answers_session_id", "chat_answers", ["session_id"])
    # A plain ADD COLUMN and a unique index: no table rebuild on SQLite.
    op.add_column("chat_feedback", sa.Column("answer_id", sa.String(32), nullable=True))
    op.create_index("uq_chat_feedback_answer_id", "chat_feedback", ["answer_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_chat_feedback_answer_id", table_name="chat_feedback")
    with op.batch_alter_table("chat_feedback") as batch:
        batch.drop_column("answer_id")
    op.drop_table("chat_answers")
