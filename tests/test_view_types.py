"""Top-level string/binary columns come back as string_view/binary_view, as upstream returns them
(mosaicod/views.py): in GetSchema, the DoGet schema and every DoGet batch; nested types and the
client's schema and field metadata unchanged; every SDK ontology still reads back as its class."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from mosaicolabs import Message, String
from mosaicolabs.models.core.serializable import Serializable

from mosaicod.views import view_batches, view_schema

from .conftest import connect

# -- unit -------------------------------------------------------------------------------------

NESTED = pa.struct([pa.field("frame_id", pa.string()), pa.field("raw", pa.large_binary())])
STORED = pa.schema([
    pa.field("timestamp_ns", pa.int64(), nullable=False, metadata={"description": "ns"}),
    pa.field("s", pa.string(), nullable=False, metadata={"unit": "text"}),
    pa.field("ls", pa.large_string()),
    pa.field("b", pa.binary(), metadata={"k": "v"}),
    pa.field("lb", pa.large_binary(), nullable=False),
    pa.field("fb", pa.binary(4)),
    pa.field("header", NESTED),
    pa.field("names", pa.list_(pa.field("element", pa.string(), nullable=False))),
    pa.field("m", pa.map_(pa.string(), pa.binary())),
    pa.field("x", pa.float64()),
], metadata={"client": "kept", "mosaico_like": "{\"a\": 1}"})


def test_view_schema_changes_only_top_level_string_and_binary():
    got = view_schema(STORED)
    assert [f.type for f in got] == [pa.int64(), pa.string_view(), pa.string_view(), pa.binary_view(),
                                     pa.binary_view(), pa.binary(4), NESTED,
                                     pa.list_(pa.field("element", pa.string(), nullable=False)),
                                     pa.map_(pa.string(), pa.binary()), pa.float64()]
    assert got.metadata == STORED.metadata
    for before, after in zip(STORED, got):
        assert (after.name, after.nullable, after.metadata) == (before.name, before.nullable, before.metadata)


def _sample_batch(n: int = 5) -> pa.RecordBatch:
    return pa.record_batch([
        pa.array(range(n), pa.int64()), pa.array([f"s{i}" for i in range(n)]),
        pa.array([None if i % 2 else f"l{i}" for i in range(n)], pa.large_string()),
        pa.array([bytes([i]) * i for i in range(n)], pa.binary()),
        pa.array([b"x" * i for i in range(n)], pa.large_binary()),
        pa.array([b"abcd"] * n, pa.binary(4)),
        pa.array([{"frame_id": "f", "raw": b"r"}] * n, NESTED),
        pa.array([["a", "b"]] * n, STORED.field("names").type),
        pa.array([[("k", b"v")]] * n, pa.map_(pa.string(), pa.binary())),
        pa.array([0.5] * n),
    ], schema=STORED)


def test_view_batches_cast_values_exactly():
    batch = _sample_batch()
    [out] = list(view_batches([batch], STORED))
    assert out.schema == view_schema(STORED) and out.schema.metadata == STORED.metadata
    assert out.to_pylist() == batch.to_pylist()
    assert out.column("header") is not None and out.column("header").type == NESTED


def test_view_batches_pass_through_without_string_columns():
    schema = pa.schema([pa.field("timestamp_ns", pa.int64()), pa.field("x", pa.float64())])
    batch = pa.record_batch([pa.array([1]), pa.array([2.0])], schema=schema)
    [out] = list(view_batches([batch], schema))
    assert out is batch


def test_lz4_ipc_stream_round_trips_views_next_to_nested_strings():
    [batch] = list(view_batches([_sample_batch()], STORED))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as w:
        w.write_batch(batch)
    back = pa.ipc.open_stream(sink.getvalue()).read_all()
    assert back.schema == batch.schema and back.schema.metadata == STORED.metadata
    assert back.to_pylist() == batch.to_pylist()


# -- through the wire -------------------------------------------------------------------------

def _act(c, name, body):
    res = list(c.do_action(flight.Action(name, json.dumps(body).encode())))
    return json.loads(res[0].body.to_pybytes())["response"] if res else None


def test_get_schema_and_every_do_get_batch_use_views(make_settings, start_server):
    server = start_server(make_settings(max_batch_size=16))  # several batches per stream
    raw_client = flight.FlightClient(server.location)
    _act(raw_client, "sequence_create", {"locator": "v", "user_metadata": {}})
    sess = _act(raw_client, "session_create", {"locator": "v"})["uuid"]
    tid = _act(raw_client, "topic_create", {"session_uuid": sess, "locator": "v/t", "serialization_format": "default",
                                            "ontology_tag": "X", "user_metadata": {}})["uuid"]
    desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": "v/t", "topic_uuid": tid}).encode())
    writer, _ = raw_client.do_put(desc, STORED)
    batches = [_sample_batch(50) for _ in range(4)]
    for i, b in enumerate(batches):  # distinct timestamps per batch
        writer.write_batch(b.set_column(0, STORED.field(0), pa.array(range(i * 50, i * 50 + 50), pa.int64())))
    writer.close()
    _act(raw_client, "session_finalize", {"session_uuid": sess})
    cmd = flight.FlightDescriptor.for_command(b'{"resource_locator": "v/t"}')
    expected = view_schema(STORED)
    got = raw_client.get_schema(cmd).schema
    assert got == expected and got.metadata == STORED.metadata
    assert [f.metadata for f in got] == [f.metadata for f in STORED]
    reader = raw_client.do_get(raw_client.get_flight_info(cmd).endpoints[0].ticket)
    assert reader.schema == expected and reader.schema.metadata == STORED.metadata
    chunks = list(reader)
    raw_client.close()
    assert len(chunks) >= 13
    for chunk in chunks:
        assert chunk.data.schema == expected
    rows = pa.Table.from_batches([c.data for c in chunks]).to_pylist()
    assert [r["timestamp_ns"] for r in rows] == list(range(200))
    assert rows[7]["s"] == "s7" and rows[7]["b"] == bytes([7]) * 7 and rows[7]["header"] == {"frame_id": "f", "raw": b"r"}


def test_string_topic_schema_is_a_view_and_nested_strings_stay(server):
    """The upstream SDK suite's checks (test_query_ontology_top_level_string and its nested twin)."""
    from mosaicolabs import IMU, Vector3d
    from mosaicolabs.models.data import Header, Time

    with connect(server) as c:
        with c.sequence_create("views", {}) as w:
            w.topic_create("/s", {}, String).push(Message(timestamp_ns=1, data=String(data="hello")))
            w.topic_create("/imu", {}, IMU).push(Message(timestamp_ns=1, data=IMU(
                header=Header(stamp=Time(seconds=1, nanoseconds=0), frame_id="base"),
                acceleration=Vector3d(x=1, y=2, z=3), angular_velocity=Vector3d(x=0, y=0, z=0))))
        th = c.topic_handler("views", "/s")
        assert pa.types.is_string_view(th.ontology_schema.field("data").type)
        assert [m.get_data(String) for m in th.get_data_streamer()] == [String(data="hello")]
        th = c.topic_handler("views", "/imu")
        assert pa.types.is_string(th.ontology_schema.field("header").type.field("frame_id").type)
        [msg] = list(th.get_data_streamer())
        assert msg.get_data(IMU).header.frame_id == "base"


# -- every SDK ontology reads back as its class ------------------------------------------------

# values some classes validate: Image/CompressedImage formats are an enum; Range needs min <= range <= max
FIXED_VALUES = {"format": "png", "min_range": 0.25, "max_range": 1000.0}


def _sample(t: pa.DataType, i: int, name: str = ""):
    if name in FIXED_VALUES:
        return FIXED_VALUES[name]
    if pa.types.is_struct(t):
        return {f.name: _sample(f.type, i + k, f.name) for k, f in enumerate(t)}
    if pa.types.is_fixed_size_list(t):
        return [_sample(t.value_type, i + k) for k in range(t.list_size)]
    if pa.types.is_list(t):
        return [_sample(t.value_type, i + k) for k in range(2)]
    if pa.types.is_string(t):
        return f"{name}-{i}"
    if pa.types.is_binary(t):
        return bytes([i % 256, 0, 255]) * (1 + i % 3)
    if pa.types.is_boolean(t):
        return i % 2 == 0
    if pa.types.is_floating(t):
        return i + 0.5
    if pa.types.is_integer(t):
        return i % 100
    raise TypeError(f"no sample for {t}")


def _ontologies() -> list[type]:
    out, stack = [], list(Serializable.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if (cls.__module__.startswith("mosaicolabs.") and cls.__name__ != "Unmodeled" and cls not in out
                and len(cls.__msco_pyarrow_struct__)):  # the SDK's classes, not those other tests define
            out.append(cls)
    return sorted(out, key=lambda c: c.__name__)


def test_every_sdk_ontology_round_trips(server):
    classes = _ontologies()
    with_views = {c.__name__ for c in classes
                  if any(pa.types.is_string(f.type) or pa.types.is_binary(f.type) for f in c.__msco_pyarrow_struct__)}
    assert {"String", "CameraInfo", "CompressedImage", "Image", "NMEASentence", "PointCloud2"} <= with_views
    samples = {c: [c.model_validate(_sample(c.__msco_pyarrow_struct__, i)) for i in range(3)] for c in classes}
    with connect(server) as c:
        with c.sequence_create("every", {}) as w:
            for cls, objs in samples.items():
                tw = w.topic_create(f"/{cls.__name__}", {}, cls)
                for i, obj in enumerate(objs):
                    tw.push(Message(timestamp_ns=100 + i, data=obj))
        for cls, objs in samples.items():
            th = c.topic_handler("every", f"/{cls.__name__}")
            assert th is not None, cls.__name__
            got = list(th.get_data_streamer())
            assert [m.get_data(cls) for m in got] == objs, cls.__name__
            assert all(type(m.data) is cls for m in got), (cls.__name__, type(got[0].data))
            if cls.__name__ in with_views:
                assert any(pa.types.is_string_view(f.type) or pa.types.is_binary_view(f.type)
                           for f in th.ontology_schema), cls.__name__


def test_windowed_and_split_reads_send_only_their_rows(make_settings, start_server):
    """A view array's data buffers travel whole: a slice must not drag its row group's bytes along."""
    server = start_server(make_settings(max_batch_size=100))
    c = flight.FlightClient(server.location)
    schema = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("s", pa.string()),
                        pa.field("b", pa.binary())])
    _act(c, "sequence_create", {"locator": "big", "user_metadata": {}})
    sess = _act(c, "session_create", {"locator": "big"})["uuid"]
    tid = _act(c, "topic_create", {"session_uuid": sess, "locator": "big/t", "serialization_format": "default",
                                   "ontology_tag": "X", "user_metadata": {}})["uuid"]
    writer, _ = c.do_put(flight.FlightDescriptor.for_command(
        json.dumps({"resource_locator": "big/t", "topic_uuid": tid}).encode()), schema)
    n = 2000
    writer.write_batch(pa.record_batch([pa.array(range(n), pa.int64()), pa.array([f"{i:05d}" * 200 for i in range(n)]),
                                        pa.array([bytes([i % 256]) * 1000 for i in range(n)])], schema=schema))
    writer.close()
    _act(c, "session_finalize", {"session_uuid": sess})

    def received(**window) -> list[pa.RecordBatch]:
        info = c.get_flight_info(flight.FlightDescriptor.for_command(
            json.dumps({"resource_locator": "big/t", **window}).encode()))
        return [chunk.data for chunk in c.do_get(info.endpoints[0].ticket)]

    [win] = received(timestamp_ns_start=1000, timestamp_ns_end=1010)
    assert win.column("s").to_pylist() == [f"{i:05d}" * 200 for i in range(1000, 1010)]
    assert win.get_total_buffer_size() < 40_000  # 10 rows of ~2 KB, not the 4 MB row group
    whole = received()
    assert len(whole) == 20 and sum(b.num_rows for b in whole) == n
    assert max(b.get_total_buffer_size() for b in whole) < 300_000  # 100 rows of ~2 KB each
    c.close()


def test_columns_uploaded_as_views_are_queryable(raw_client):
    """A client may upload view types itself: they are stored, returned and filtered as text."""
    nested = pa.struct([pa.field("t", pa.string_view())])
    schema = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False), pa.field("s", pa.string_view()),
                        pa.field("b", pa.binary_view()), pa.field("n", nested)])
    _act(raw_client, "sequence_create", {"locator": "sv", "user_metadata": {}})
    sess = _act(raw_client, "session_create", {"locator": "sv"})["uuid"]
    tid = _act(raw_client, "topic_create", {"session_uuid": sess, "locator": "sv/t", "serialization_format": "default",
                                            "ontology_tag": "SV", "user_metadata": {}})["uuid"]
    writer, _ = raw_client.do_put(flight.FlightDescriptor.for_command(
        json.dumps({"resource_locator": "sv/t", "topic_uuid": tid}).encode()), schema)
    rows = [(10, "alpha", b"x", "p"), (20, "beta", b"y", "q"), (30, "gamma", b"z", "r"), (40, "beta2", b"w", "q")]
    writer.write_batch(pa.record_batch([pa.array([r[0] for r in rows], pa.int64()),
                                        pa.array([r[1] for r in rows], pa.string_view()),
                                        pa.array([r[2] for r in rows], pa.binary_view()),
                                        pa.array([{"t": r[3]} for r in rows], nested)], schema=schema))
    writer.close()
    _act(raw_client, "session_finalize", {"session_uuid": sess})

    def hits(cond: dict) -> bool:
        return bool(_act(raw_client, "query", {"ontology": cond})["items"])

    assert hits({"SV.s": {"$eq": "beta"}}) and not hits({"SV.s": {"$eq": "delta"}})
    assert hits({"SV.s": {"$match": "gam*"}}) and not hits({"SV.s": {"$match": "zz*"}})
    assert hits({"SV.s": {"$in": ["x", "alpha"]}}) and hits({"SV.s": {"$lt": "b"}}) and not hits({"SV.s": {"$gt": "h"}})
    assert hits({"SV.n.t": {"$eq": "q"}, "SV.s": {"$eq": "beta2"}}) and not hits({"SV.n.t": {"$eq": "p"}, "SV.s": {"$eq": "beta"}})
    clusters = [json.loads(r.body.to_pybytes())["response"] for r in raw_client.do_action(flight.Action(
        "topic_filter_clusterize", json.dumps({"locator": "sv/t", "clustering_dt_ns": 10, "timestamp_range": None,
                                               "ontology": {"SV.s": {"$match": "beta*"}}}).encode()))]
    assert [c["ts"] for c in clusters] == [{"start_ns": 20, "end_ns": 20}, {"start_ns": 40, "end_ns": 40}]
    cmd = flight.FlightDescriptor.for_command(b'{"resource_locator": "sv/t"}')
    assert raw_client.get_schema(cmd).schema == schema
    table = raw_client.do_get(raw_client.get_flight_info(cmd).endpoints[0].ticket).read_all()
    assert table.schema == schema and [r["s"] for r in table.to_pylist()] == ["alpha", "beta", "gamma", "beta2"]
