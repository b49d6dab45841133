"""A client that is not ours: the older (pre-0.6) dialect spoken by PlotJuggler's Mosaico plugin
(its C++ SDK), reproduced with a raw pyarrow.flight client — the same action names, the same keys
read, the same ticket-parsing heuristic — against data written by mosaicolabs 0.7.0.

What the C++ client does, call by call: `version` action; ListFlights names from descriptor paths;
GetFlightInfo on a sequence (user metadata from the schema's `mosaico:user_metadata`, size and time
range from each endpoint's `info` block, topic names parsed out of the ticket bytes); GetFlightInfo
on a topic (`mosaico:properties.ontology_tag`, `mosaico:user_metadata`, the schema); DoGet skipping
zero-row batches; `query` with `locator` keys and substring `$match`, reading `timestamp_range`."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from mosaicolabs import IMU, Message, String, Vector3d

from mosaicod.tickets import TopicTicket

from .conftest import connect

# -- the C++ client's parsing, in Python ------------------------------------------------------


def action(c: flight.FlightClient, name: str, body: dict) -> object:
    """Send an action; accept the reply with or without the {"action", "response"} envelope."""
    results = list(c.do_action(flight.Action(name, json.dumps(body).encode())))
    if not results:
        return None
    doc = json.loads(results[0].body.to_pybytes())
    return doc["response"] if isinstance(doc, dict) and "response" in doc and "action" in doc else doc


def _leb128(raw: bytes, pos: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    while pos < len(raw) and shift < 64:
        b = raw[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
    return None


def topic_name_from_ticket(raw: bytes) -> str | None:
    """The C++ client's heuristic: a LEB128 length at offset 1 (protobuf ``0x0A len str``), else at
    offset 0 (bincode ``len str``); the string must be non-empty printable ASCII."""
    for offset in (1, 0):
        got = _leb128(raw, offset)
        if got is None:
            continue
        length, start = got
        text = raw[start:start + length]
        if length and len(text) == length and all(32 <= b < 127 for b in text):
            return text.decode("ascii")
    return None


def flight_info(c, locator: str, **window) -> flight.FlightInfo:
    return c.get_flight_info(flight.FlightDescriptor.for_command(
        json.dumps({"resource_locator": locator, **window}).encode()))


def sequence_summary(c, name: str) -> dict:
    """listSequences(): per sequence, user metadata, total size and time range."""
    info = flight_info(c, name)
    md = info.schema.metadata or {}
    raw_md = md.get(b"mosaico:user_metadata")
    size, lo, hi = 0, None, None
    topics = []
    for ep in info.endpoints:
        meta = json.loads(ep.app_metadata)
        topics.append(topic_name_from_ticket(ep.ticket.ticket))
        if "info" not in meta:
            continue  # endpoints without `info` are left out of the totals
        size += meta["info"]["total_bytes"]
        ts = meta["info"]["timestamp"]
        if ts is not None:
            lo = ts["start_ns"] if lo is None else min(lo, ts["start_ns"])
            hi = ts["end_ns"] if hi is None else max(hi, ts["end_ns"])
    return {"context": md.get(b"mosaico:context"), "user_metadata": json.loads(raw_md) if raw_md else {},
            "size": size, "range": (lo, hi), "topics": sorted(topics)}


def topic_metadata(c, locator: str) -> dict:
    """getTopicMetadata(): tag and user metadata from the FlightInfo schema, the endpoint's info."""
    info = flight_info(c, locator)
    md = info.schema.metadata
    [ep] = info.endpoints
    meta = json.loads(ep.app_metadata)
    return {"context": md[b"mosaico:context"], "properties": json.loads(md[b"mosaico:properties"]),
            "user_metadata": json.loads(md[b"mosaico:user_metadata"]), "schema": info.schema,
            "locator": meta["resource_locator"], "locked": meta["locked"],
            "created": meta["created_at_ns"], "completed": meta["completed_at_ns"], "info": meta["info"],
            "ticket_topic": topic_name_from_ticket(ep.ticket.ticket)}


def pull(c, ticket: flight.Ticket) -> pa.Table:
    batches = [chunk.data for chunk in c.do_get(ticket) if chunk.data is not None and chunk.data.num_rows]
    return pa.Table.from_batches(batches) if batches else pa.table({})


# -- the scenario -----------------------------------------------------------------------------

def imu(i: int) -> Message:
    return Message(timestamp_ns=1_000 + 10 * i, data=IMU(acceleration=Vector3d(x=float(i), y=0, z=9.8),
                                                          angular_velocity=Vector3d(x=0, y=0, z=0)))


@pytest.fixture
def cpp(server):
    with connect(server) as sdk:
        with sdk.sequence_create("drive_001", {"driver": "ada", "car": {"id": 7}}) as w:
            t_imu = w.topic_create("/sensors/imu", {"rate": 100}, IMU)
            t_log = w.topic_create("/log", {}, String)
            for i in range(30):
                t_imu.push(imu(i))
            for i in range(5):
                t_log.push(Message(timestamp_ns=1_005 + 50 * i, data=String(data=f"line {i}")))
        with sdk.sequence_create("test_drive_002", {}) as w:
            w.topic_create("/sensors/imu", {}, IMU).push(imu(100))
        with sdk.sequence_create("parked", {}) as w:
            w.topic_create("/sensors/gps_empty", {}, IMU)
    c = flight.FlightClient(server.location)
    yield c
    c.close()


def test_version_action(cpp):
    got = action(cpp, "version", {})
    assert got["version"] == "0.7.0"
    assert {k: got["semver"][k] for k in ("major", "minor", "patch", "pre")} == \
        {"major": 0, "minor": 7, "patch": 0, "pre": None}
    raw = list(cpp.do_action(flight.Action("version", b"{}")))
    assert json.loads(raw[0].body.to_pybytes())["action"] == "version"
    assert got == action(cpp, "info", {})  # the same payload as 0.7's `info`


def test_list_sequences_with_sizes_ranges_and_metadata(cpp):
    names = sorted(p.descriptor.path[0].decode() for p in cpp.list_flights(b""))
    assert names == ["drive_001", "parked", "test_drive_002"]
    s = sequence_summary(cpp, "drive_001")
    assert s["context"] == b"sequence"
    assert s["user_metadata"] == {"driver": "ada", "car": {"id": 7}}
    assert s["range"] == (1_000, 1_290)
    assert s["size"] > 0 and s["size"] == sum(
        json.loads(ep.app_metadata)["data_info"]["total_bytes"] for ep in flight_info(cpp, "drive_001").endpoints)
    assert s["topics"] == ["drive_001/log", "drive_001/sensors/imu"]  # names read out of the tickets
    assert sequence_summary(cpp, "parked") == {"context": b"sequence", "user_metadata": {}, "size": 0,
                                               "range": (None, None), "topics": ["parked/sensors/gps_empty"]}
    assert b"mosaico:user_metadata" not in flight_info(cpp, "parked").schema.metadata


def test_topic_metadata_and_info_block(cpp):
    t = topic_metadata(cpp, "drive_001/sensors/imu")
    assert t["context"] == b"topic"
    assert t["properties"] == {"serialization_format": "default", "ontology_tag": "IMU"}
    assert t["user_metadata"] == {"rate": 100}
    assert (t["locator"], t["locked"], t["ticket_topic"]) == ("drive_001/sensors/imu", True, "drive_001/sensors/imu")
    assert t["created"] > 0 and t["completed"] >= t["created"]
    assert t["info"]["chunks_number"] == 1 and t["info"]["total_bytes"] > 0
    assert t["info"]["timestamp"] == {"start_ns": 1_000, "end_ns": 1_290}
    assert t["schema"].names[0] == "timestamp_ns" and "acceleration" in t["schema"].names
    log = topic_metadata(cpp, "drive_001/log")
    assert log["user_metadata"] is None  # no user metadata: JSON null
    assert pa.types.is_string_view(log["schema"].field("data").type)
    empty = topic_metadata(cpp, "parked/sensors/gps_empty")
    assert empty["info"] == {"total_bytes": 0, "chunks_number": 0, "timestamp": None}
    # the info block is whole-topic: a window changes time_window_info only
    [ep] = flight_info(cpp, "drive_001/sensors/imu", timestamp_ns_start=1_100, timestamp_ns_end=1_150).endpoints
    meta = json.loads(ep.app_metadata)
    assert meta["info"] == t["info"] and meta["time_window_info"]["row_count"] == 5


def test_pull_topics_through_our_tickets(cpp):
    info = flight_info(cpp, "drive_001")
    by_topic = {topic_name_from_ticket(ep.ticket.ticket): ep.ticket for ep in info.endpoints}
    imu_rows = pull(cpp, by_topic["drive_001/sensors/imu"])
    assert imu_rows.column("timestamp_ns").to_pylist() == [1_000 + 10 * i for i in range(30)]
    assert pull(cpp, by_topic["drive_001/log"]).column("data").to_pylist() == [f"line {i}" for i in range(5)]
    # a windowed ticket: the heuristic still finds the locator, the window still applies
    [ep] = flight_info(cpp, "drive_001/sensors/imu", timestamp_ns_start=1_100).endpoints
    assert topic_name_from_ticket(ep.ticket.ticket) == "drive_001/sensors/imu"
    assert pull(cpp, ep.ticket).column("timestamp_ns").to_pylist() == [1_000 + 10 * i for i in range(10, 30)]


def test_ticket_heuristic_on_our_tickets():
    """Right for every locator of up to 48 bytes, with or without a window."""
    for n in range(3, 49):
        loc = ("0" + "x" * n)[:n - 2] + "/t"
        for window in ((None, None), (5, None), (None, 5), (1, 2)):
            assert topic_name_from_ticket(TopicTicket(loc, *window).encode()) == loc, (loc, window)


def test_schemas_of_get_schema_and_do_get_carry_no_legacy_keys(cpp):
    cmd = flight.FlightDescriptor.for_command(b'{"resource_locator": "drive_001/log"}')
    schema = cpp.get_schema(cmd).schema
    reader = cpp.do_get(cpp.get_flight_info(cmd).endpoints[0].ticket)
    for s in (schema, reader.schema):
        assert not any(k.startswith(b"mosaico:") for k in (s.metadata or {}))
    reader.read_all()


def query(c, body: dict) -> dict:
    got = action(c, "query", body)
    return {it["sequence"]: {t["locator"]: t.get("timestamp_range") for t in it["topics"]} for it in got["items"]}


def test_query_with_locator_keys_means_substring(cpp):
    imu_range = {"drive_001/sensors/imu": [1_000, 1_290]}
    assert query(cpp, {"sequence": {"locator": {"$match": "drive"}}}) == {
        "drive_001": {"drive_001/log": [1_005, 1_205], **imu_range},
        "test_drive_002": {"test_drive_002/sensors/imu": [2_000, 2_000]}}
    assert query(cpp, {"sequence": {"locator": {"$match": "/drive"}}}) == query(
        cpp, {"sequence": {"locator": {"$match": "drive"}}})
    assert query(cpp, {"sequence": {"locator": {"$match": "002"}}}) == {
        "test_drive_002": {"test_drive_002/sensors/imu": [2_000, 2_000]}}
    assert query(cpp, {"sequence": {"locator": {"$eq": "drive_001"}}}) == {
        "drive_001": {"drive_001/log": [1_005, 1_205], **imu_range}}
    assert query(cpp, {"topic": {"locator": {"$match": "imu"}, "ontology_tag": {"$eq": "IMU"}},
                       "sequence": {"created_at_ns": {"$geq": 1}}}) == {
        "drive_001": imu_range, "test_drive_002": {"test_drive_002/sensors/imu": [2_000, 2_000]}}
    # in the topic domain `locator` also names the whole topic locator, as the older servers did
    assert query(cpp, {"topic": {"locator": {"$eq": "drive_001/sensors/imu"}}}) == {"drive_001": imu_range}
    assert query(cpp, {"topic": {"locator": {"$eq": "/sensors/imu"}}}) == query(
        cpp, {"topic": {"name": {"$eq": "/sensors/imu"}}})
    assert query(cpp, {"topic": {"locator": {"$in": ["drive_001/log", "nope"]}}}) == {
        "drive_001": {"drive_001/log": [1_005, 1_205]}}
    assert query(cpp, {"topic": {"locator": {"$match": "001/sens"}}}) == {"drive_001": imu_range}
    assert query(cpp, {"topic": {"locator": {"$neq": "drive_001/sensors/imu"}},
                       "sequence": {"locator": {"$eq": "drive_001"}}}) == {"drive_001": {"drive_001/log": [1_005, 1_205]}}
    # a topic without data comes without a range
    assert query(cpp, {"topic": {"locator": {"$match": "gps"}}}) == {"parked": {"parked/sensors/gps_empty": None}}
    # under `name`, $match stays 0.7's anchored glob
    assert query(cpp, {"sequence": {"name": {"$match": "drive"}}}) == {}
    assert query(cpp, {"topic": {"name": {"$match": "imu"}}}) == {}
    with pytest.raises(pa.ArrowInvalid, match="given twice"):
        action(cpp, "query", {"sequence": {"name": {"$eq": "a"}, "locator": {"$eq": "a"}}})


def test_remote_api_key_actions_stay_out(cpp):
    with pytest.raises(pa.ArrowInvalid, match="no available action for string `api_key_create`"):
        action(cpp, "api_key_create", {"permissions": "read", "description": "x"})


def test_notifications_as_the_older_client_sends_them(cpp):
    action(cpp, "sequence_notification_create", {"locator": "drive_001", "notification_type": "error", "msg": "m"})
    got = action(cpp, "sequence_notification_list", {"locator": "drive_001"})
    assert [(n["name"], n["notification_type"], n["msg"]) for n in got["notifications"]] == [("drive_001", "error", "m")]
    action(cpp, "sequence_notification_purge", {"locator": "drive_001"})
    assert action(cpp, "sequence_notification_list", {"locator": "drive_001"}) == {"notifications": []}


def test_version_needs_a_key_but_no_permission(make_settings, start_server):
    from mosaicod import auth
    from mosaicod.catalog import keys
    from mosaicod.permissions import Permission

    srv = start_server(make_settings(api_key_enabled=True))
    c = flight.FlightClient(srv.location)
    key, _ = keys.create_key(srv.runtime.engine, Permission.DELETE, "delete only", None)
    opts = flight.FlightCallOptions(headers=[(auth.HEADER.encode(), key.encode())])
    [res] = list(c.do_action(flight.Action("version", b"{}"), options=opts))
    assert json.loads(res.body.to_pybytes())["response"]["version"] == "0.7.0"
    with pytest.raises(flight.FlightUnauthorizedError, match="unauthorized"):
        list(c.do_action(flight.Action("version", b"{}")))  # no key at all
    with pytest.raises(flight.FlightUnauthorizedError, match="unauthorized"):
        list(c.list_flights(b"", options=opts))  # the delete-only key cannot browse
    c.close()
