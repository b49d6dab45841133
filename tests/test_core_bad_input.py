"""Bad input through a raw pyarrow.flight client: every case gets a clear Flight error and leaves
stored data untouched."""

from __future__ import annotations

import json
import uuid

import pyarrow as pa
import pyarrow.flight as flight
import pytest
import sqlalchemy as sa

from mosaicod import errors
from mosaicod.catalog.tables import chunk_t

SCHEMA = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False),
                    pa.field("data", pa.float64(), nullable=False)])


def act(c: flight.FlightClient, name: str, body) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    results = list(c.do_action(flight.Action(name, raw)))
    assert len(results) == 1
    doc = json.loads(results[0].body.to_pybytes())
    assert doc["action"] == name
    return doc["response"]


def batch(ts: list[int], schema=SCHEMA) -> pa.RecordBatch:
    return pa.record_batch([pa.array(ts, pa.int64()), pa.array([float(t) for t in ts])], schema=schema)


def put(c, locator: str, topic_uuid: str, batches, schema=SCHEMA) -> None:
    desc = flight.FlightDescriptor.for_command(json.dumps(
        {"resource_locator": locator, "topic_uuid": topic_uuid}).encode())
    writer, _ = c.do_put(desc, schema)
    for b in batches:
        writer.write_batch(b)
    writer.close()


def new_topic(c, seq: str, topic: str) -> tuple[str, str]:
    act(c, "sequence_create", {"locator": seq, "user_metadata": {}})
    sess = act(c, "session_create", {"locator": seq})
    t = act(c, "topic_create", {"session_uuid": sess["uuid"], "locator": f"{seq}/{topic}",
                                "serialization_format": "default", "ontology_tag": "Floating64",
                                "user_metadata": {}})
    return sess["uuid"], t["uuid"]


def read(c, locator: str) -> pa.Table:
    info = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"resource_locator": locator}).encode()))
    return c.do_get(info.endpoints[0].ticket).read_all()


@pytest.fixture
def stored(raw_client):
    """A finalized sequence `keep` with one topic of 10 rows, to check nothing is touched."""
    sess, tid = new_topic(raw_client, "keep", "t")
    put(raw_client, "keep/t", tid, [batch(list(range(10)))])
    act(raw_client, "session_finalize", {"session_uuid": sess})
    return tid


def assert_intact(c):
    table = read(c, "keep/t")
    assert table.column("timestamp_ns").to_pylist() == list(range(10))
    assert "keep" in [i.descriptor.path[0].decode() for i in c.list_flights()]


@pytest.mark.parametrize("name, body, match", [
    ("no_such_action", {}, "no available action for string `no_such_action`"),
    ("sequence_create", b"{not json", "deserialization error"),
    ("sequence_create", b"[1, 2]", "expected a JSON object"),
    ("sequence_create", {"user_metadata": {}}, "missing field `locator`"),
    ("sequence_create", {"locator": 42, "user_metadata": {}}, "field `locator` must be str"),
    ("sequence_create", {"locator": "../etc", "user_metadata": {}}, "not a valid sequence locator"),
    ("sequence_create", {"locator": "a/b", "user_metadata": {}}, "not a valid sequence locator"),
    ("sequence_create", {"locator": "bad name", "user_metadata": {}}, "not a valid sequence locator"),
    ("sequence_create", {"locator": "caffè", "user_metadata": {}}, "not a valid sequence locator"),
    ("sequence_create", {"locator": "ok", "user_metadata": {"bad.key": 1}}, "invalid key in json"),
    ("sequence_create", {"locator": "ok", "user_metadata": [1]}, "must be a JSON object"),
    ("sequence_create", {"locator": "keep", "user_metadata": {}}, "already exists"),
    ("session_create", {"locator": "missing"}, "not found"),
    ("topic_create", {"session_uuid": "nope", "locator": "keep/x", "serialization_format": "default",
                      "ontology_tag": "X", "user_metadata": {}}, "is not a valid UUID"),
    ("topic_create", {"session_uuid": str(uuid.uuid4()), "locator": "keep/x",
                      "serialization_format": "default", "ontology_tag": "X", "user_metadata": {}}, "not found"),
    ("session_finalize", {"session_uuid": str(uuid.uuid4())}, "not found"),
    ("session_finalize", {"session_uuid": "123"}, "is not a valid UUID"),
    ("session_delete", {"locator": "keep"}, "not a valid session locator"),
    ("session_delete", {"locator": "keep:01NOPE"}, "not found"),
    ("topic_delete", {"locator": "keep/../t"}, "not a valid topic locator"),
    ("topic_delete", {"locator": "keep//t"}, "not a valid topic locator"),
    ("topic_delete", {"locator": "keep/t:1"}, "not a valid topic locator"),
    ("sequence_delete", {"locator": "missing"}, "not found"),
    ("sequence_notification_create", {"locator": "keep", "notification_type": "warn", "msg": "x"},
     "invalid notification type"),
    ("topic_notification_create", {"locator": "keep/nope", "notification_type": "error", "msg": "x"}, "not found"),
])
def test_bad_actions_are_refused(raw_client, stored, name, body, match):
    with pytest.raises((pa.ArrowInvalid, pa.ArrowKeyError, flight.FlightError)) as info:
        act(raw_client, name, body)
    assert match in str(info.value)
    assert_intact(raw_client)


def test_error_kinds_map_to_flight_codes(raw_client, stored):
    with pytest.raises(pa.ArrowKeyError):  # NOT_FOUND
        act(raw_client, "session_create", {"locator": "missing"})
    with pytest.raises(pa.ArrowInvalid):  # INVALID_ARGUMENT
        act(raw_client, "sequence_create", b"{")
    with pytest.raises(flight.FlightUnauthorizedError, match="does not belong"):  # PERMISSION_DENIED
        sess = act(raw_client, "session_create", {"locator": "keep"})
        act(raw_client, "topic_create", {"session_uuid": sess["uuid"], "locator": "other/t",
                                         "serialization_format": "default", "ontology_tag": "X",
                                         "user_metadata": {}})


def test_topic_create_validation(raw_client, stored):
    sess = act(raw_client, "session_create", {"locator": "keep"})
    base = {"session_uuid": sess["uuid"], "locator": "keep/new", "serialization_format": "default",
            "ontology_tag": "X", "user_metadata": {}}
    for change, match in [({"serialization_format": "zip"}, "invalid serialization format"),
                          ({"ontology_tag": ""}, "invalid ontology tag"),
                          ({"ontology_tag": "a.b"}, "invalid ontology tag"),
                          ({"locator": "keep/t"}, "already exists")]:
        with pytest.raises(pa.ArrowInvalid, match=match):
            act(raw_client, "topic_create", {**base, **change})
    assert_intact(raw_client)


def test_do_put_refusals(raw_client, stored):
    sess, tid = new_topic(raw_client, "up", "t")
    # wrong uuid, unknown topic, malformed command, path descriptor
    with pytest.raises(flight.FlightUnauthorizedError, match="wrong topic uuid"):
        put(raw_client, "up/t", str(uuid.uuid4()), [batch([1])])
    with pytest.raises(pa.ArrowKeyError, match="not found"):
        put(raw_client, "up/none", tid, [batch([1])])
    with pytest.raises(pa.ArrowInvalid, match="not a valid UUID"):
        put(raw_client, "up/t", "xyz", [batch([1])])
    with pytest.raises(pa.ArrowInvalid, match="Unsupported descriptor"):
        w, _ = raw_client.do_put(flight.FlightDescriptor.for_path("up", "t"), SCHEMA)
        w.close()
    # schema without / with a wrong timestamp column
    with pytest.raises(pa.ArrowInvalid, match="missing timestamp field"):
        put(raw_client, "up/t", tid, [], schema=pa.schema([("x", pa.int64())]))
    with pytest.raises(pa.ArrowInvalid, match="wrong timestamp field type"):
        put(raw_client, "up/t", tid, [], schema=pa.schema([("timestamp_ns", pa.int32())]))
    # finalize before any DoPut is refused and keeps the session open
    with pytest.raises(pa.ArrowInvalid, match="DoPut not called"):
        act(raw_client, "session_finalize", {"session_uuid": sess})
    # a real upload, then a second DoPut on the finalized topic
    put(raw_client, "up/t", tid, [batch([5, 3, 4])])
    with pytest.raises(pa.ArrowInvalid, match="already been uploaded and finalized"):
        put(raw_client, "up/t", tid, [batch([9])])
    assert read(raw_client, "up/t").column("timestamp_ns").to_pylist() == [3, 4, 5]
    act(raw_client, "session_finalize", {"session_uuid": sess})
    with pytest.raises(pa.ArrowInvalid, match="already finalized"):
        act(raw_client, "session_finalize", {"session_uuid": sess})
    with pytest.raises(pa.ArrowInvalid, match="already finalized"):
        act(raw_client, "topic_create", {"session_uuid": sess, "locator": "up/late",
                                         "serialization_format": "default", "ontology_tag": "X",
                                         "user_metadata": {}})
    assert_intact(raw_client)


def _topic_row(server, locator: str):
    return server.runtime.catalog.topic(locator)


def _chunk_rows(server, topic_id: int) -> int:
    with server.runtime.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(chunk_t)
                            .where(chunk_t.c.topic_id == topic_id)).scalar_one()


def _store_keys(server, folder: str) -> list[str]:
    return [key for key, _size in server.runtime.store.walk_files(folder)]


def assert_interrupted_upload(raw_client, server, sess: str, locator: str, received: list[int]) -> None:
    """What the server leaves after a broken DoPut stream (service.Upload.interrupt): every row
    received is indexed and readable, the folder is committed as interrupted, the topic reads as
    ``interrupted`` (not locked, not complete) with a notification saying so; a new DoPut is
    refused with what to do, and session_finalize finalizes the topic with what it has."""
    info = raw_client.get_flight_info(flight.FlightDescriptor.for_command(
        json.dumps({"resource_locator": locator}).encode()))
    meta = json.loads(info.endpoints[0].app_metadata)
    assert meta["locked"] is False and meta["completed_at_ns"] is None
    assert meta["upload_state"] == "interrupted" and meta["interrupted_at_ns"] > 0
    assert meta["data_info"]["total_row_count"] == len(received)
    assert raw_client.do_get(info.endpoints[0].ticket).read_all().column("timestamp_ns").to_pylist() == received
    row = _topic_row(server, locator)
    assert row["completion_unix_tstamp"] is None and row["interrupted_unix_tstamp"] is not None
    assert _chunk_rows(server, row["topic_id"]) == (1 if received else 0)
    commit = server.runtime.store.get_json(f"{row['path_in_store']}/_COMMIT.json")
    assert commit["state"] == "interrupted" and commit["row_count"] == len(received)
    notes = act(raw_client, "topic_notification_list", {"locator": locator})["notifications"]
    assert [n["notification_type"] for n in notes] == ["error"]
    assert f"Upload interrupted after {len(received)} rows ({len(received)} stored and readable)" \
        in notes[0]["msg"]
    with pytest.raises(pa.ArrowInvalid, match="upload was interrupted"):
        put(raw_client, locator, str(row["topic_uuid"]), [batch([7])])
    act(raw_client, "session_finalize", {"session_uuid": sess})
    meta = json.loads(raw_client.get_flight_info(flight.FlightDescriptor.for_command(
        json.dumps({"resource_locator": locator}).encode())).endpoints[0].app_metadata)
    assert meta["locked"] is True and meta["upload_state"] == "finalized"
    assert meta["interrupted_at_ns"] is not None  # finalized, yet never mistaken for a complete upload
    if received:
        assert meta["data_info"]["interval"] == {"start_ns": min(received), "end_ns": max(received)}


def test_schema_change_mid_stream_is_refused(raw_client, server, stored):
    """A batch whose schema differs from the stream schema never reaches the server over the wire:
    pyarrow's client writer refuses it (ArrowInvalid) before sending, and in the IPC stream format
    the server decodes every batch against the schema sent first, so the server-side comparison in
    ``service.Upload.write`` cannot be triggered through pyarrow.flight.  What the server does see
    is checked here: after the client-side refusal the stream is still open, a non-batch message
    (metadata only) makes the server abort it, and the interrupted upload keeps what it got.  The
    server-side schema comparison itself is exercised in-process in
    ``test_upload_write_refuses_a_batch_with_another_schema``."""
    sess, tid = new_topic(raw_client, "mid", "t")
    desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": "mid/t", "topic_uuid": tid}).encode())
    writer, _ = raw_client.do_put(desc, SCHEMA)
    writer.write_batch(batch([1, 2]))
    other = pa.schema([pa.field("timestamp_ns", pa.int64()), pa.field("data", pa.string())])
    with pytest.raises((pa.ArrowInvalid, flight.FlightError)):
        writer.write_batch(pa.record_batch([pa.array([3]), pa.array(["x"])], schema=other))
        writer.close()
    # the stream is still open on the server: a metadata-only message is refused there and aborts it
    with pytest.raises(flight.FlightError, match="Unsupported stream message, stream aborted"):
        writer.write_metadata(b"not a record batch")
        writer.close()
    assert_interrupted_upload(raw_client, server, sess, "mid/t", [1, 2])
    assert_intact(raw_client)


def test_upload_write_refuses_a_batch_with_another_schema(raw_client, server, stored):
    """The server-side schema check (``service.Upload.write``), driven in-process because no Flight
    client can put such a batch on the wire (see the test above)."""
    sess, tid = new_topic(raw_client, "mid2", "t")
    service = server.flight.service
    upload = service.begin_upload("mid2/t", uuid.UUID(tid), SCHEMA)
    upload.write(batch([1, 2]))
    other = pa.schema([pa.field("timestamp_ns", pa.int64()), pa.field("data", pa.string())])
    with pytest.raises(errors.MosaicoError, match="batch schema differs") as info:
        upload.write(pa.record_batch([pa.array([3], pa.int64()), pa.array(["x"])], schema=other))
    assert info.value.kind is errors.Kind.BAD_REQUEST  # INVALID_ARGUMENT on the wire
    assert upload.rows == 2  # the refused batch was not counted (nor written)
    upload.interrupt("test")  # what server.do_put does on any failure of the stream
    assert_interrupted_upload(raw_client, server, sess, "mid2/t", [1, 2])
    assert_intact(raw_client)


def test_empty_upload_finalizes_an_empty_topic(raw_client, stored):
    sess, tid = new_topic(raw_client, "void", "t")
    put(raw_client, "void/t", tid, [])
    put_zero = pa.record_batch([pa.array([], pa.int64()), pa.array([], pa.float64())], schema=SCHEMA)
    sess2 = act(raw_client, "session_create", {"locator": "void"})
    t2 = act(raw_client, "topic_create", {"session_uuid": sess2["uuid"], "locator": "void/zero",
                                          "serialization_format": "default", "ontology_tag": "X",
                                          "user_metadata": {}})
    put(raw_client, "void/zero", t2["uuid"], [put_zero, put_zero])
    act(raw_client, "session_finalize", {"session_uuid": sess})
    act(raw_client, "session_finalize", {"session_uuid": sess2["uuid"]})
    for loc in ("void/t", "void/zero"):
        info = raw_client.get_flight_info(flight.FlightDescriptor.for_command(
            json.dumps({"resource_locator": loc}).encode()))
        meta = json.loads(info.endpoints[0].app_metadata)
        assert meta["data_info"] == {"interval": None, "total_row_count": 0, "total_bytes": 0,
                                     "total_chunks_count": 0}
        assert meta["locked"] is True
        assert raw_client.do_get(info.endpoints[0].ticket).read_all().num_rows == 0
        assert raw_client.get_schema(flight.FlightDescriptor.for_command(
            json.dumps({"resource_locator": loc}).encode())).schema == SCHEMA
    assert_intact(raw_client)


def test_read_side_refusals(raw_client, stored):
    def info(cmd):
        return raw_client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(cmd).encode()))

    with pytest.raises(pa.ArrowKeyError, match="not found"):
        info({"resource_locator": "nothing"})
    with pytest.raises(pa.ArrowInvalid, match="Unsupported locator"):
        info({"resource_locator": "keep:01ABC"})
    with pytest.raises(pa.ArrowInvalid, match="not a valid locator"):
        info({"resource_locator": "ke ep"})
    with pytest.raises(pa.ArrowInvalid, match="bad timestamp range"):
        info({"resource_locator": "keep/t", "timestamp_ns_start": 5, "timestamp_ns_end": 5})
    with pytest.raises(pa.ArrowInvalid, match="Unsupported descriptor"):
        raw_client.get_flight_info(flight.FlightDescriptor.for_path("keep"))
    with pytest.raises(pa.ArrowInvalid, match="not a valid topic locator"):
        raw_client.get_schema(flight.FlightDescriptor.for_command(b'{"resource_locator": "keep"}'))
    with pytest.raises(pa.ArrowInvalid, match="ticket deserialization error"):
        raw_client.do_get(flight.Ticket(b"garbage")).read_all()
    with pytest.raises(pa.ArrowKeyError, match="not found"):
        raw_client.do_get(flight.Ticket(b"\x09keep/none\x00\x00")).read_all()
    with pytest.raises(pa.ArrowInvalid, match="Unsupported descriptor"):
        list(raw_client.list_flights(b"everything"))
    assert_intact(raw_client)


def test_windowed_flight_info_counts_exactly(raw_client, stored):
    _, tid = new_topic(raw_client, "cnt", "t")
    put(raw_client, "cnt/t", tid, [batch([1003, 1001, 1005]), batch([1007, 1002, 1009])])
    info = raw_client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(
        {"resource_locator": "cnt/t", "timestamp_ns_start": 1003, "timestamp_ns_end": 1008}).encode()))
    meta = json.loads(info.endpoints[0].app_metadata)
    assert meta["time_window_info"] == {"interval": {"start_ns": 1003, "end_ns": 1007}, "row_count": 3}
    assert meta["data_info"]["interval"] == {"start_ns": 1001, "end_ns": 1009}
    assert meta["data_info"]["total_row_count"] == 6
    got = raw_client.do_get(info.endpoints[0].ticket).read_all()
    assert got.column("timestamp_ns").to_pylist() == [1003, 1005, 1007]
    assert got.schema == SCHEMA


def test_refusals_checked_in_the_catalog_statements_keep_their_kinds(raw_client, stored):
    """topic_create and the DoPut claim check in the statement that applies them (then look
    up why when it applies nothing): each refusal keeps its kind and message, whichever of
    several problems comes first."""
    sess, tid = new_topic(raw_client, "cl", "t")
    base = {"session_uuid": sess, "serialization_format": "default", "ontology_tag": "X", "user_metadata": {}}
    with pytest.raises(pa.ArrowKeyError, match="Session `.*` not found"):  # unknown session
        act(raw_client, "topic_create", {**base, "session_uuid": str(uuid.uuid4()), "locator": "cl/u"})
    with pytest.raises(flight.FlightUnauthorizedError, match="does not belong"):  # another sequence's topic
        act(raw_client, "topic_create", {**base, "locator": "keep/t"})  # ... even one that exists
    with pytest.raises(flight.FlightUnauthorizedError, match="wrong topic uuid"):
        put(raw_client, "cl/t", str(uuid.uuid4()), [batch([3])])
    put(raw_client, "cl/t", tid, [batch([1, 2])])
    act(raw_client, "session_finalize", {"session_uuid": sess})
    with pytest.raises(pa.ArrowInvalid, match="already finalized"):  # finalized session, existing topic
        act(raw_client, "topic_create", {**base, "locator": "cl/t"})
    assert_intact(raw_client)
