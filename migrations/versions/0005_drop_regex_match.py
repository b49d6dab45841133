"""Drop the SQL function mosaico_regex_match, created by 0001 and never used.

``$match`` patterns compile to PostgreSQL's ``~`` operator (mosaicod/query/glob.py).  0001 stays
as released (databases that applied it keep their history); this revision removes the function
from them, and from fresh databases right after 0001 created it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS mosaico_regex_match(TEXT, TEXT)")


def downgrade() -> None:
    op.execute("CREATE OR REPLACE FUNCTION mosaico_regex_match(value TEXT, pattern TEXT) RETURNS BOOLEAN "
               "AS $$ SELECT value ~ pattern $$ LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE")
