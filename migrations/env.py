"""Alembic environment: runs on the connection handed over by mosaicod.catalog.db.migrate()."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `mosaicod` (mosaicod.catalog.db.migrate), "
                       "which supplies the database connection")

context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
