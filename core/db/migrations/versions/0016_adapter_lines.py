"""Adapter lines, their activation history and learning cycles.

Revision ID: 0016_adapter_lines
Revises: 0015_job_nodes

A line is a named sequence of adapters on one base model; its active adapter is what chat
and the API serve as "line:NAME". Every change of the active adapter (creation, activation,
rollback) is one row of `line_activations` with who, when and why. A line's learning policy
(JSON) says when and how it retrains; each retraining is a row of `learning_cycles`, of
which only one per line can be open (`open_line` is unique while set).
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import JSONType, UTCDateTime

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
        sa.Column("policy", JSONType, nullable=True),
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
    op.create_table(
        "learning_cycles",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "line_id",
            sa.Integer(),
            sa.ForeignKey(
                "adapter_lines.id",
                ondelete="CASCADE",
                name="fk_learning_cycles_line_id_adapter_lines",
            ),
            nullable=False,
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("open_line", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("started_by", sa.String(64), nullable=False),
        sa.Column("dataset_version_id", sa.Integer(), nullable=True),
        sa.Column("samples_through", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("new_samples", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("from_adapter", sa.String(64), nullable=False),
        sa.Column("candidate", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("gate_job_id", sa.Integer(), nullable=True),
        sa.Column("gate", JSONType, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("open_line", name="uq_learning_cycles_open_line"),
        sa.UniqueConstraint("line_id", "number", name="uq_learning_cycles_number"),
    )
    op.create_index("ix_learning_cycles_line_id", "learning_cycles", ["line_id"])


def downgrade() -> None:
    op.drop_table("learning_cycles")
    op.drop_table("line_activations")
    op.drop_table("adapter_lines")
