"""Alembic environment: runs on the connection handed over by mosaicod.catalog.db.migrate().

``target_metadata`` is the schema's one definition (``mosaicod/catalog/tables.py``), so
``alembic revision --autogenerate`` drafts a migration from a change there, and
``tests/test_schema_drift.py`` checks that the migrations build exactly that schema.
"""

from alembic import context

from mosaicod.catalog.tables import metadata as target_metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `mosaicod` (mosaicod.catalog.db.migrate), "
                       "which supplies the database connection")

context.configure(connection=connection, target_metadata=target_metadata,
                  transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
