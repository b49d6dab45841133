"""Pending changes: a change is recorded here before it is written to the store and cleared when
the catalog applies it, so that a crash in between is completed at the next start (ours).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE TABLE pending_change_t (
    change_id           SERIAL PRIMARY KEY,
    owner               BIGINT NOT NULL,
    kind                TEXT   NOT NULL,
    target              JSONB  NOT NULL,
    created_unix_tstamp BIGINT NOT NULL
);
CREATE INDEX pending_change_t_upload_topic_idx ON pending_change_t (((target->>'topic_id')::int))
    WHERE kind = 'upload';
""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS pending_change_t")
