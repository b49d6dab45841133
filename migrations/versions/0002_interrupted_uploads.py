"""Interrupted uploads: when a DoPut stream broke, the topic keeps what was received and records
when the upload was interrupted (ours).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE topic_t ADD COLUMN interrupted_unix_tstamp BIGINT")


def downgrade() -> None:
    op.execute("ALTER TABLE topic_t DROP COLUMN IF EXISTS interrupted_unix_tstamp")
