"""chunk_t.timestamp_order: how the rows of a chunk file are ordered by timestamp_ns, checked when
the chunk is indexed (0 = some row group is unsorted, 1 = every row group is sorted, 2 = the whole
file is sorted).  NULL (chunks indexed before this column existed) reads as "unknown": the read
path then sorts each row group itself.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE chunk_t ADD COLUMN timestamp_order SMALLINT")


def downgrade() -> None:
    op.execute("ALTER TABLE chunk_t DROP COLUMN IF EXISTS timestamp_order")
