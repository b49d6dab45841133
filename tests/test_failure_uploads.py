"""Broken uploads: a client killed mid-stream, a stream that ends with an error.  Whatever the
server received is kept, readable and reported; the topic ends *interrupted*, never taken for a
complete upload; the session can still be finalized (with what it has) or deleted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from .conftest import connect
from .test_core_bad_input import act

MiB = 1 << 20

# An SDK writer that pushes rows, flushes what it buffered, reports how many rows it sent and
# then waits to be killed (SIGKILL: no clean-up of any kind, like a crashed robot process).
WRITER = r"""
import os, sys, time
from mosaicolabs import Message, MosaicoClient, String
port, rows = int(sys.argv[1]), int(sys.argv[2])
client = MosaicoClient.connect("127.0.0.1", port)
sw = client.sequence_create("killed", {}).__enter__()
tw = sw.topic_create("cam/log", {}, String)
tw._wrstate.max_batch_size_bytes = 256 * 1024
for i in range(rows):
    tw.push(Message(timestamp_ns=1_000 + i, data=String(data=f"{i:08d}" + os.urandom(128).hex())))
tw._wrstate._write_current_batch()
print(tw._wrstate._written_records, flush=True)
time.sleep(600)
"""


def topic_meta(c: flight.FlightClient, locator: str) -> dict:
    info = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"resource_locator": locator}).encode()))
    return json.loads(info.endpoints[0].app_metadata)


def wait_state(c: flight.FlightClient, locator: str, state: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        meta = topic_meta(c, locator)
        if meta.get("upload_state") == state or time.monotonic() > deadline:
            return meta
        time.sleep(0.1)


def read_ts(c: flight.FlightClient, locator: str) -> list[int]:
    info = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"resource_locator": locator}).encode()))
    return c.do_get(info.endpoints[0].ticket).read_all().column("timestamp_ns").to_pylist()


def assert_store_matches_catalog(srv) -> None:
    """`rebuild-catalog --dry-run`: the store alone gives back exactly the catalog."""
    from mosaicod.maintenance.rebuild import Options, run

    rep = run(srv.runtime.store, srv.runtime.engine, Options(dry_run=True, progress=False, jobs=1))
    assert rep.differences == [] and rep.problems == [] and rep.uploading_topics == [], rep.summary()


@pytest.fixture
def small_chunks(make_settings, start_server):
    return start_server(make_settings(max_chunk_size=MiB, row_group_size=256 * 1024))


def test_client_killed_mid_stream_keeps_what_was_sent(small_chunks):
    srv = small_chunks
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(srv.port), "20000"], stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline().split()
        assert line, "the writer did not report"
        sent = int(line[-1])
        time.sleep(1.0)  # let the transport deliver what the client wrote
    finally:
        proc.kill()
        proc.wait(10)
    assert sent == 20000
    c = flight.FlightClient(srv.location)
    try:
        meta = wait_state(c, "killed/cam/log", "interrupted")
        # never mistaken for a complete upload (before: finalized and locked with what it got)
        assert meta["upload_state"] == "interrupted", meta
        assert meta["locked"] is False and meta["completed_at_ns"] is None
        # everything received is durable and readable, in several chunks, the last one being the
        # chunk that was open when the client died
        assert meta["data_info"]["total_row_count"] == sent
        assert meta["data_info"]["total_chunks_count"] > 1
        assert read_ts(c, "killed/cam/log") == [1_000 + i for i in range(sent)]
        notes = act(c, "topic_notification_list", {"locator": "killed/cam/log"})["notifications"]
        assert len(notes) == 1 and notes[0]["notification_type"] == "error"
        assert f"Upload interrupted after {sent} rows ({sent} stored and readable)" in notes[0]["msg"]
        assert "client went away" in notes[0]["msg"]
        assert_store_matches_catalog(srv)  # the interrupted state is in the store too
        # the session is not stuck: it can be finalized with what it has ...
        seq = json.loads(c.get_flight_info(flight.FlightDescriptor.for_command(
            json.dumps({"resource_locator": "killed"}).encode())).app_metadata)
        sess_locator = seq["sessions"][0]["locator"]
        row = srv.runtime.catalog.topic("killed/cam/log")
        act(c, "session_finalize", {"session_uuid": str(row["session_uuid"])})
        meta = topic_meta(c, "killed/cam/log")
        assert meta["locked"] is True and meta["upload_state"] == "finalized"
        assert meta["interrupted_at_ns"] is not None
        assert meta["data_info"]["interval"] == {"start_ns": 1_000, "end_ns": 1_000 + sent - 1}
        assert_store_matches_catalog(srv)
        # ... and read through the SDK like any other topic
        sdk = connect(srv)
        try:
            th = sdk.topic_handler("killed", "cam/log")
            assert th is not None and th.locked
            assert sum(1 for _ in th.get_data_streamer()) == sent
        finally:
            sdk.close()
        # ... or deleted
        act(c, "session_delete", {"locator": sess_locator})
        with pytest.raises(pa.ArrowKeyError, match="not found"):
            topic_meta(c, "killed/cam/log")
    finally:
        c.close()


def test_stream_error_keeps_open_chunk_and_session_can_finish(small_chunks):
    """A stream that ends with an error (here: a message that is not a record batch) keeps every
    batch received, including the ones still in the open chunk, and does not block the session:
    another topic of it uploads normally and the session finalizes."""
    srv = small_chunks
    c = flight.FlightClient(srv.location)
    schema = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("v", pa.float64())])
    try:
        act(c, "sequence_create", {"locator": "err", "user_metadata": {}})
        sess = act(c, "session_create", {"locator": "err"})["uuid"]
        tids = {name: act(c, "topic_create", {"session_uuid": sess, "locator": f"err/{name}",
                                              "serialization_format": "default", "ontology_tag": "F",
                                              "user_metadata": {}})["uuid"] for name in ("a", "b")}
        desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": "err/a",
                                                               "topic_uuid": tids["a"]}).encode())
        writer, _ = c.do_put(desc, schema)
        n = 0
        for k in range(6):  # ~1.2 MiB: one chunk rolls, the rest is in the open chunk / buffer
            ts = pa.array(range(n, n + 25_000), pa.int64())
            writer.write_batch(pa.record_batch([ts, pa.array([float(x) for x in range(25_000)])], schema=schema))
            n += 25_000
        with pytest.raises(flight.FlightError, match="stream aborted"):
            writer.write_metadata(b"not a batch")
            writer.close()
        meta = wait_state(c, "err/a", "interrupted")
        assert meta["upload_state"] == "interrupted"
        assert meta["data_info"]["total_row_count"] == n
        assert read_ts(c, "err/a") == list(range(n))
        # the other topic of the session is not affected, and the session finalizes
        desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": "err/b",
                                                               "topic_uuid": tids["b"]}).encode())
        writer, _ = c.do_put(desc, schema)
        writer.write_batch(pa.record_batch([pa.array([5, 6], pa.int64()), pa.array([0.5, 0.6])], schema=schema))
        writer.close()
        act(c, "session_finalize", {"session_uuid": sess})
        assert topic_meta(c, "err/a")["locked"] and topic_meta(c, "err/b")["upload_state"] == "finalized"
        assert read_ts(c, "err/a") == list(range(n))
    finally:
        c.close()


def test_upload_left_uploading_without_a_claim_is_recovered(small_chunks):
    """A topic left *uploading* that no stream claims (here: the upload's pending record is lost,
    as when the catalog is rebuilt from a store where the upload never committed) does not stay
    stuck: the recovery interrupts it with its complete chunks (the open one is removed)."""
    import numpy as np

    from mosaicod.catalog.tables import pending_change_t
    from mosaicod.recovery import recover

    from .test_core_bad_input import SCHEMA, new_topic

    srv = small_chunks
    c = flight.FlightClient(srv.location)
    try:
        sess, tid = new_topic(c, "lost", "t")
        service = srv.flight.service
        upload = service.begin_upload("lost/t", uuid.UUID(tid), SCHEMA)
        for k in range(7):  # ~300 KB per row group on disk: a 1 MiB chunk closes after 4, the next stays open
            ts = np.arange(k * 25_000, (k + 1) * 25_000, dtype=np.int64)
            upload.write(pa.record_batch([pa.array(ts), pa.array(np.random.default_rng(k).random(25_000))],
                                         schema=SCHEMA))
        deadline = time.monotonic() + 30  # the chunk writer runs on its own thread
        while not (upload.writer.queued_bytes == 0 and upload.writer.chunk_open and upload.writer.chunks):
            assert time.monotonic() < deadline, "the writer thread did not catch up"
            time.sleep(0.05)
        indexed = topic_meta(c, "lost/t")["data_info"]["total_row_count"]
        with srv.runtime.engine.begin() as conn:  # the claim is lost; the stream never ends
            conn.execute(pending_change_t.delete())
        service.journal.active_uploads.clear()
        done = recover(srv.runtime.catalog, srv.runtime.store, srv.runtime.journal)
        assert [d["change"] for d in done] == ["upload"], done
        meta = topic_meta(c, "lost/t")
        assert meta["upload_state"] == "interrupted"
        assert meta["data_info"]["total_row_count"] == indexed > 0
        assert read_ts(c, "lost/t") == list(range(indexed))
        act(c, "session_finalize", {"session_uuid": sess})
        assert_store_matches_catalog(srv)
    finally:
        c.close()


def _open_upload(c: flight.FlightClient, sequence: str, schema: pa.Schema) -> flight.FlightStreamWriter:
    """A sequence, a session and its topic ``<sequence>/a``, and a DoPut stream open on it."""
    act(c, "sequence_create", {"locator": sequence, "user_metadata": {}})
    sess = act(c, "session_create", {"locator": sequence})["uuid"]
    tid = act(c, "topic_create", {"session_uuid": sess, "locator": f"{sequence}/a", "serialization_format": "default",
                                  "ontology_tag": "F", "user_metadata": {}})["uuid"]
    desc = flight.FlightDescriptor.for_command(
        json.dumps({"resource_locator": f"{sequence}/a", "topic_uuid": tid}).encode())
    writer, _ = c.do_put(desc, schema)
    return writer


def test_an_end_of_stream_that_cannot_be_recorded_keeps_every_chunk(small_chunks, pg_admin_url):
    """The catalog refuses to finalize the topic at the clean end of its stream (here a trigger
    raises; in life: a constraint, a bug): the chunks closed while ending -- indexed with the end --
    are indexed with the interruption instead.  The client gets the error, the topic is
    *interrupted* with every row readable, and the store matches the catalog."""
    srv = small_chunks
    c = flight.FlightClient(srv.location)
    schema = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("v", pa.float64())])
    with srv.runtime.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION refuse_end() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused by the test'; END $$")
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse_end BEFORE UPDATE OF completion_unix_tstamp ON topic_t FOR EACH ROW "
            "WHEN (NEW.locator_name = 'end/a' AND NEW.completion_unix_tstamp IS NOT NULL) "
            "EXECUTE FUNCTION refuse_end()")
    try:
        writer = _open_upload(c, "end", schema)
        n = 0
        for _ in range(8):  # ~200 KB per row group on disk: one 1 MiB chunk rolls after 6 (indexed at once),
            # the last closes at the end
            writer.write_batch(pa.record_batch([pa.array(range(n, n + 25_000), pa.int64()),
                                                pa.array([float(x) for x in range(25_000)])], schema=schema))
            n += 25_000
        with pytest.raises(flight.FlightError):
            writer.close()
        meta = wait_state(c, "end/a", "interrupted")
        assert meta["upload_state"] == "interrupted"
        assert meta["data_info"]["total_chunks_count"] == 2
        assert meta["data_info"]["total_row_count"] == n
        assert read_ts(c, "end/a") == list(range(n))
        assert_store_matches_catalog(srv)
    finally:
        c.close()


@pytest.mark.parametrize("applied", [True, False], ids=["commit-applied", "commit-rolled-back"])
def test_an_end_recorded_but_reported_failed_indexes_no_chunk_twice(small_chunks, monkeypatch, applied):
    """The catalog step that ends an upload fails at COMMIT (the connection drops: the server
    sees an error) after the store got the finalized documents.  If the COMMIT was applied (its
    answer lost), the topic is finalized, the DoPut succeeds, the store still says finalized and
    no chunk is indexed a second time.  If it was not, the call fails and the topic ends
    interrupted in the store and the catalog alike.  Either way every row is read exactly once and
    `rebuild-catalog --dry-run` finds no difference."""
    import sqlalchemy as sa

    srv = small_chunks
    catalog = srv.runtime.catalog
    real_finalize = catalog.finalize_topic

    def finalize_then_lose_the_answer(*args, **kwargs):
        if applied:
            real_finalize(*args, **kwargs)
        raise sa.exc.OperationalError("COMMIT", None, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(catalog, "finalize_topic", finalize_then_lose_the_answer)
    c = flight.FlightClient(srv.location)
    schema = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("v", pa.float64())])
    try:
        writer = _open_upload(c, "lost", schema)
        n = 0
        rng = np.random.default_rng(5)  # incompressible: the chunks roll whatever the encoding
        for _ in range(6):  # one chunk rolls (indexed at once), the last closes at the end
            writer.write_batch(pa.record_batch([pa.array(range(n, n + 25_000), pa.int64()),
                                                pa.array(rng.random(25_000))], schema=schema))
            n += 25_000
        if applied:  # the end was recorded: the client is told so, not asked to retry
            writer.close()
        else:
            with pytest.raises(flight.FlightError):
                writer.close()
        meta = topic_meta(c, "lost/a")
        files = [k for k, _ in srv.runtime.store.walk_files(catalog.topic("lost/a")["path_in_store"]) if "/data/" in k]
        assert len(files) >= 2  # one chunk indexed as it rolled, the last one with the end
        assert meta["data_info"]["total_chunks_count"] == len(files)
        assert meta["data_info"]["total_row_count"] == n
        assert read_ts(c, "lost/a") == list(range(n))
        state = "finalized" if applied else "interrupted"
        assert meta["upload_state"] == state
        folder = catalog.topic("lost/a")["path_in_store"]
        assert srv.runtime.store.get_json(f"{folder}/_COMMIT.json")["state"] == state
        assert_store_matches_catalog(srv)
    finally:
        c.close()
