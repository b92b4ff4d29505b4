"""Heartbeats of long-running processes: workers, the chat server, the API server.

Revision ID: 0014_service_heartbeats
Revises: 0013_api_keys

Jobs record their worker only while they run, so an idle worker or a server left no trace:
health could not tell a stopped worker from one waiting for work. Each process writes one
row when it starts, renews `heartbeat_at` on a timer and deletes the row on a clean exit; a
row whose heartbeat grew old is a process that died. `detail` holds what the process says
about itself (job kinds, current jobs, address).
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import JSONType, UTCDateTime

revision = "0014_service_heartbeats"
down_revision = "0013_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_heartbeats",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("detail", JSONType, nullable=False),
    )
    op.create_index("ix_service_heartbeats_kind", "service_heartbeats", ["kind"])


def downgrade() -> None:
    op.drop_table("service_heartbeats")
