"""Alembic migrations of the mosaicod catalog (shipped inside the package as mosaicod.migrations)."""
