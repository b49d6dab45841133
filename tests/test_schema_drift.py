"""The schema has one definition (mosaicod/catalog/tables.py): the migrations must build exactly
it, and nothing else (docs/storage.md#changing-the-schema)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mosaicod.catalog import db
from mosaicod.catalog.tables import metadata


def _migrated(db_url: str) -> sa.Engine:
    engine = sa.create_engine(sa.make_url(db_url).set(drivername="postgresql+psycopg"),
                              poolclass=sa.pool.NullPool)
    db.migrate(engine)
    return engine


def test_migrations_build_the_table_definitions(db_url):
    engine = _migrated(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "compare_server_default": True})
            diff = compare_metadata(ctx, metadata)
            assert diff == [], "migrations and catalog/tables.py disagree:\n" + "\n".join(map(repr, diff))
    finally:
        engine.dispose()


def test_collations_and_check_constraints_agree(db_url):
    """What Alembic's compare does not look at: column collations and CHECK constraints."""
    engine = _migrated(db_url)
    try:
        with engine.connect() as conn:
            collations = {(t, c): coll for t, c, coll in conn.execute(sa.text(
                "SELECT table_name, column_name, collation_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND collation_name IS NOT NULL"))}
            checks = {t: n for t, n in conn.execute(sa.text(
                "SELECT conrelid::regclass::text, count(*) FROM pg_constraint "
                "WHERE contype = 'c' AND connamespace = 'public'::regnamespace GROUP BY 1"))}
    finally:
        engine.dispose()
    declared = {(t.name, c.name): c.type.collation for t in metadata.tables.values() for c in t.columns
                if getattr(c.type, "collation", None)}
    assert collations == declared
    declared_checks = {t.name: n for t in metadata.tables.values()
                       if (n := sum(isinstance(k, sa.CheckConstraint) for k in t.constraints))}
    assert checks == declared_checks


def test_migrated_database_has_no_stray_functions(db_url):
    engine = _migrated(db_url)
    try:
        with engine.connect() as conn:
            functions = conn.execute(sa.text(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'public'")).scalars().all()
        assert functions == []
    finally:
        engine.dispose()


def test_migrating_twice_is_a_no_op(db_url):
    engine = _migrated(db_url)
    try:
        db.migrate(engine)  # an existing deployment restarting: nothing to apply, nothing breaks
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0005"
    finally:
        engine.dispose()
