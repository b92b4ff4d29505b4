"""Adapter lines and their activation history.

Revision ID: 0016_adapter_lines
Revises: 0015_job_nodes

A line is a named sequence of adapters on one base model; its active adapter is what chat
and the API serve as "line:NAME". Every change of the active adapter (creation, activation,
rollback) is one row of `line_activations` with who, when and why.
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import UTCDateTime

revision = "0016_adapter_lines"
down_revision = "0015_job_nodes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapter_lines",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("base_model_fingerprint", sa.String(64), nullable=False),
        sa.Column(
            "active_adapter_id",
            sa.Integer(),
            sa.ForeignKey(
                "adapters.id",
                ondelete="RESTRICT",
                name="fk_adapter_lines_active_adapter_id_adapters",
            ),
            nullable=False,
        ),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("name", name="uq_adapter_lines_name"),
    )
    op.create_table(
        "line_activations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "line_id",
            sa.Integer(),
            sa.ForeignKey(
                "adapter_lines.id",
                ondelete="CASCADE",
                name="fk_line_activations_line_id_adapter_lines",
            ),
            nullable=False,
        ),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("adapter_name", sa.String(64), nullable=False),
        sa.Column("previous_adapter_id", sa.Integer(), nullable=True),
        sa.Column("previous_adapter_name", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_line_activations_line_id", "line_activations", ["line_id"])


def downgrade() -> None:
    op.drop_table("line_activations")
    op.drop_table("adapter_lines")
