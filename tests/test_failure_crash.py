"""SIGKILL of the server at each named point of create / upload / finalize / delete.

A real `mosaicod serve` process is started with ``MOSAICOD_TEST_CRASH_AT=<point>`` and kills
itself with SIGKILL when it reaches that point (mosaicod/maintenance/faults.py), so every run
crashes at exactly the same place.  The server is then restarted (without the hook) on the same
catalog and store, and must:

* have recovered without any manual step: `rebuild-catalog --dry-run` finds no difference, no
  problem and no upload left uploading (the store never lags the catalog);
* show the outcome documented in docs/failure-semantics.md for that point;
* serve normally (a new sequence is written and read back).
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import sqlalchemy as sa

from mosaicod.maintenance.rebuild import Options, run as rebuild
from mosaicod.store.objstore import ObjectStore

from .ops_helpers import base_env, start_serve
from .test_core_bad_input import act

MiB = 1 << 20
SCHEMA = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("v", pa.float64())])
BATCH_ROWS = 25_000
BATCHES = 8  # ~2.4 MB of rows (~300 KB per row group on disk): a 1 MiB chunk rolls after 4 row
# groups, and the next chunk stays open for the last 4 (the upload:chunk_open point is reached
# while the writer thread still has batches to take)
SERVER_DIED = (flight.FlightError, pa.ArrowException, OSError)


def batch(k: int) -> pa.RecordBatch:
    ts = np.arange(k * BATCH_ROWS, (k + 1) * BATCH_ROWS, dtype=np.int64)
    return pa.record_batch([pa.array(ts), pa.array(np.random.default_rng(k).random(BATCH_ROWS))], schema=SCHEMA)


def put(c: flight.FlightClient, locator: str, tid: str, *, abort_after: int | None = None) -> None:
    desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": locator, "topic_uuid": tid}).encode())
    writer, _ = c.do_put(desc, SCHEMA)
    for k in range(BATCHES):
        if abort_after is not None and k == abort_after:
            writer.write_metadata(b"not a batch")  # the server aborts the stream: interrupted
        writer.write_batch(batch(k))
    writer.close()


def write_sequence(c: flight.FlightClient, seq: str, *, abort_after: int | None = None) -> str:
    act(c, "sequence_create", {"locator": seq, "user_metadata": {"k": 1}})
    sess = act(c, "session_create", {"locator": seq})
    tid = act(c, "topic_create", {"session_uuid": sess["uuid"], "locator": f"{seq}/t", "serialization_format": "default",
                                  "ontology_tag": "F", "user_metadata": {}})["uuid"]
    try:
        put(c, f"{seq}/t", tid, abort_after=abort_after)
    except flight.FlightError:
        if abort_after is None:
            raise
    act(c, "session_finalize", {"session_uuid": sess["uuid"]})
    return sess["locator"]


def info(c: flight.FlightClient, locator: str):
    return c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"resource_locator": locator}).encode()))


def topic(c: flight.FlightClient, locator: str) -> dict:
    return json.loads(info(c, locator).endpoints[0].app_metadata)


def sequence(c: flight.FlightClient, locator: str) -> dict | None:
    try:
        return json.loads(info(c, locator).app_metadata)
    except pa.ArrowKeyError:
        return None


def rows(c: flight.FlightClient, locator: str) -> list[int]:
    return c.do_get(info(c, locator).endpoints[0].ticket).read_all().column("timestamp_ns").to_pylist()


# -- what each crash leaves, after the restart -------------------------------------------------

def _nothing_created(c):
    assert sequence(c, "s") is None


def _sequence_created(c):
    assert sequence(c, "s")["sessions"] == []


def _session_not_created(c):
    assert sequence(c, "s")["sessions"] == []


def _session_created(c):
    sessions = sequence(c, "s")["sessions"]
    assert len(sessions) == 1 and not sessions[0]["locked"]


def _upload_not_started(c, srv_db):
    meta = topic(c, "s/t")
    assert meta["upload_state"] == "empty"
    # not stuck: the topic takes a new upload and the session finalizes
    put(c, "s/t", str(srv_db.execute(sa.text("SELECT topic_uuid FROM topic_t")).scalar_one()))
    assert topic(c, "s/t")["upload_state"] == "finalized"


def _interrupted(*, exact: int | None = None, at_least_one_chunk: bool = False, lost: bool = False):
    def check(c, srv_db):
        meta = topic(c, "s/t")
        assert meta["upload_state"] == "interrupted" and not meta["locked"], meta
        n = meta["data_info"]["total_row_count"]
        if exact is not None:
            assert n == exact
        if at_least_one_chunk:
            assert n >= BATCH_ROWS and meta["data_info"]["total_chunks_count"] >= 1
        assert rows(c, "s/t") == list(range(n))  # what is kept is a readable prefix of what was sent
        notes = act(c, "topic_notification_list", {"locator": "s/t"})["notifications"]
        assert len(notes) == 1 and f"{n} stored and readable" in notes[0]["msg"]
        assert ("the chunk being written was lost" in notes[0]["msg"]) == lost
        # not stuck: the session finalizes with what it has
        uuid = srv_db.execute(sa.text("SELECT session_uuid FROM session_t")).scalar_one()
        act(c, "session_finalize", {"session_uuid": str(uuid)})
        assert topic(c, "s/t")["locked"]
    return check


def _finalized_topic(c, srv_db):
    meta = topic(c, "s/t")
    assert meta["upload_state"] == "finalized" and meta["interrupted_at_ns"] is None
    assert len(rows(c, "s/t")) == BATCHES * BATCH_ROWS
    assert not sequence(c, "s")["sessions"][0]["locked"]


def _session_open(c, srv_db):
    _finalized_topic(c, srv_db)
    uuid = srv_db.execute(sa.text("SELECT session_uuid FROM session_t")).scalar_one()
    act(c, "session_finalize", {"session_uuid": str(uuid)})  # not stuck


def _session_finalized(c, srv_db):
    assert sequence(c, "s")["sessions"][0]["locked"]
    assert len(rows(c, "s/t")) == BATCHES * BATCH_ROWS


POINTS = {
    "sequence_create:journaled": lambda c, db: _nothing_created(c),
    "sequence_create:stored": lambda c, db: _sequence_created(c),
    "session_create:journaled": lambda c, db: _session_not_created(c),
    "session_create:stored": lambda c, db: _session_created(c),
    "upload:journaled": _upload_not_started,
    "upload:stored": _interrupted(exact=0),
    "upload:chunk_open": _interrupted(lost=True),
    "upload:chunk_stored": _interrupted(at_least_one_chunk=True),
    "upload:finishing": _interrupted(exact=BATCHES * BATCH_ROWS),
    "upload:committed": _finalized_topic,
    "session_finalize:journaled": _session_open,
    "session_finalize:stored": _session_finalized,
}


@pytest.fixture
def crash_env(db_url, tmp_path):
    def env(point: str | None) -> dict[str, str]:
        extra = {"MOSAICOD_DB_URL": db_url, "MOSAICOD_DATA_DIR": str(tmp_path / "data"),
                 "MOSAICOD_MAX_CHUNK_SIZE": str(MiB), "MOSAICOD_ROW_GROUP_SIZE": str(256 * 1024),
                 "MOSAICOD_LOG_LEVEL": "warning"}
        if point:
            extra["MOSAICOD_TEST_CRASH_AT"] = point
        return base_env(**extra)
    return env


def crash_then_restart(crash_env, tmp_path, point: str, steps):
    """Run ``steps(client)`` against a server that SIGKILLs itself at ``point``; restart it;
    return the restarted server."""
    srv = start_serve([], crash_env(point), tmp_path / "crash.log")
    c = flight.FlightClient(srv.location)
    try:
        with pytest.raises(SERVER_DIED):
            steps(c)
        assert srv.proc.wait(30) == -signal.SIGKILL, srv.log()
    finally:
        c.close()
        srv.stop()
    return start_serve([], crash_env(None), tmp_path / "restart.log")


def assert_store_matches_catalog(db_url: str, data_dir) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        rep = rebuild(ObjectStore.local(str(data_dir / "store")), engine,
                      Options(dry_run=True, progress=False, jobs=1))
    finally:
        engine.dispose()
    assert rep.differences == [] and rep.problems == [] and rep.uploading_topics == [], rep.summary()


def assert_serves(location: str) -> None:
    c = flight.FlightClient(location)
    try:
        write_sequence(c, "after")
        assert len(rows(c, "after/t")) == BATCHES * BATCH_ROWS
    finally:
        c.close()


def check_against(srv, db_url: str, check) -> None:
    """Run ``check(client, catalog_connection)`` against the restarted server and its catalog."""
    c = flight.FlightClient(srv.location)
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as db:
            check(c, db)
    finally:
        c.close()
        engine.dispose()


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_at_named_point(point, crash_env, db_url, tmp_path):
    srv = crash_then_restart(crash_env, tmp_path, point, lambda c: write_sequence(c, "s"))
    try:
        assert_store_matches_catalog(db_url, tmp_path / "data")
        check_against(srv, db_url, POINTS[point])
        assert_store_matches_catalog(db_url, tmp_path / "data")
        assert_serves(srv.location)
    finally:
        srv.stop()


def test_sigkill_while_recording_an_interrupted_upload(crash_env, db_url, tmp_path):
    """The stream broke (the client aborted it) and the server died after committing the folder
    as interrupted, before the catalog knew: the restart catches up with the store."""
    srv = crash_then_restart(crash_env, tmp_path, "upload:interrupt_committed",
                             lambda c: write_sequence(c, "s", abort_after=3))
    try:
        assert_store_matches_catalog(db_url, tmp_path / "data")
        check_against(srv, db_url, _interrupted(exact=3 * BATCH_ROWS))
        assert_serves(srv.location)
    finally:
        srv.stop()


@pytest.mark.parametrize("what", ["sequence", "session", "topic"])
@pytest.mark.parametrize("point", ["delete:journaled", "delete:stored"])
def test_sigkill_during_a_delete_completes_it(what, point, crash_env, db_url, tmp_path):
    """A delete that reached the server is completed at the restart (its markers may already be
    in the store, where the cleanup would purge the data)."""
    def steps(c):
        sess_locator = write_sequence(c, "s")
        if what == "sequence":
            act(c, "sequence_delete", {"locator": "s"})
        elif what == "session":
            act(c, "session_delete", {"locator": sess_locator})
        else:
            act(c, "topic_delete", {"locator": "s/t"})

    srv = crash_then_restart(crash_env, tmp_path, point, steps)
    try:
        assert_store_matches_catalog(db_url, tmp_path / "data")
        c = flight.FlightClient(srv.location)
        try:
            seq = sequence(c, "s")
            if what == "sequence":
                assert seq is None
            elif what == "session":
                assert seq["sessions"] == []
            else:
                assert seq["sessions"][0]["topics"] == []
        finally:
            c.close()
        assert_serves(srv.location)
    finally:
        srv.stop()



def test_running_server_recovers_a_dead_peer(crash_env, db_url, tmp_path):
    """Two servers share the catalog and the store; one dies mid-upload.  The other one, still
    running, completes the dead one's upload in its periodic recovery pass (no restart needed),
    and never touches a live peer's work."""
    import time

    env = {**crash_env(None), "MOSAICOD_HEARTBEAT_INTERVAL": "1"}  # recovery pass every 3 s
    survivor = start_serve([], env, tmp_path / "survivor.log")
    try:
        victim = start_serve([], crash_env("upload:chunk_open"), tmp_path / "victim.log")
        c = flight.FlightClient(victim.location)
        try:
            with pytest.raises(SERVER_DIED):
                write_sequence(c, "s")
            assert victim.proc.wait(30) == -signal.SIGKILL
        finally:
            c.close()
            victim.stop()
        c = flight.FlightClient(survivor.location)
        try:
            deadline = time.monotonic() + 60
            while topic(c, "s/t")["upload_state"] != "interrupted" and time.monotonic() < deadline:
                time.sleep(0.5)
            assert topic(c, "s/t")["upload_state"] == "interrupted"
            assert_store_matches_catalog(db_url, tmp_path / "data")
            write_sequence(c, "after")  # the survivor's own uploads were never taken for abandoned
            assert topic(c, "after/t")["upload_state"] == "finalized"
        finally:
            c.close()
    finally:
        survivor.stop()
