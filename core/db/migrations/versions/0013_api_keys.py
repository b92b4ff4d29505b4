"""Personal API keys for the HTTP API.

Revision ID: 0013_api_keys
Revises: 0012_embedding_models

Programs (a notebook, a CI pipeline, an intranet portal) call the API with a key instead of
a password. Only the key's sha256 is stored, next to a short prefix shown in listings so a
person can tell their keys apart; a key is revoked by setting `revoked_at`, never deleted,
so the audit log's references to it stay meaningful.
"""

import sqlalchemy as sa
from alembic import op

from core.db.base import UTCDateTime

revision = "0013_api_keys"
down_revision = "0012_embedding_models"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])


def downgrade() -> None:
    op.drop_table("api_keys")
