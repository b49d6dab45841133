"""Catalog round trips on the write path: idle-only connection checks, session steps committed
without waiting for the WAL flush, reads without a transaction."""

import time

import pytest
import sqlalchemy as sa

from mosaicod.catalog import db
from mosaicod.catalog.repo import Catalog


@pytest.fixture
def engine(make_settings):
    eng = db.connect(make_settings())
    yield eng
    eng.dispose()


def _backend_pid(conn) -> int:
    return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()


def test_a_connection_that_died_while_idle_is_replaced(engine, pg_admin_url):
    db.ping_when_idle(engine, idle_s=0.05)
    with engine.connect() as conn:
        pid = _backend_pid(conn)
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as a:
        a.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    admin.dispose()
    time.sleep(0.2)
    with engine.connect() as conn:  # pinged at checkout, found dead, replaced by the pool
        assert _backend_pid(conn) != pid


def test_session_steps_do_not_wait_for_the_wal_flush_and_finalization_does(engine):
    cat = Catalog(engine)
    with cat._session_step() as conn:
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "off"
    with engine.begin() as conn:  # the setting was local to that transaction
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"


def test_single_reads_run_outside_a_transaction(engine):
    cat = Catalog(engine)
    with cat._read() as conn:
        assert conn.execute(sa.text("SELECT now() = statement_timestamp()")).scalar_one() is True


def test_a_failing_session_step_leaves_nothing_and_the_connection_reusable(engine):
    cat = Catalog(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE step_probe (x int PRIMARY KEY)"))
    with pytest.raises(sa.exc.IntegrityError):
        with cat._session_step() as conn:
            conn.execute(sa.text("INSERT INTO step_probe VALUES (1)"))
            conn.execute(sa.text("INSERT INTO step_probe VALUES (1)"))  # duplicate: the step fails
    with pytest.raises(RuntimeError):
        with cat._session_step() as conn:
            conn.execute(sa.text("INSERT INTO step_probe VALUES (2)"))
            raise RuntimeError("a check refused the change")
    with cat._session_step() as conn:
        conn.execute(sa.text("INSERT INTO step_probe VALUES (3)"))
    with cat._read() as conn:
        assert conn.execute(sa.text("SELECT array_agg(x) FROM step_probe")).scalar_one() == [3]
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"
