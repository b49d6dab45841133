"""The official client's whole write and read path against our server (local store and S3)."""

from __future__ import annotations

from typing import List, Optional

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from mosaicolabs import (GPS, IMU, Image, Message, MosaicoField, MosaicoType, Point3d, Serializable,
                         SessionLevelErrorPolicy, Vector3d)
from mosaicolabs.models.sensors.gps import GPSStatus

from .conftest import connect


class Thermo(Serializable):
    """A custom ontology: nested struct, list of floats, optional string."""

    value: MosaicoType.float64 = MosaicoField(description="temperature in K")
    samples: List[MosaicoType.float32] = MosaicoField(description="raw samples")
    label: Optional[MosaicoType.string] = MosaicoField(default=None, description="free text")


def imu(i: int) -> Message:
    return Message(timestamp_ns=1_000 + i, data=IMU(acceleration=Vector3d(x=float(i), y=-1.5, z=9.81),
                                                    angular_velocity=Vector3d(x=0.1 * i, y=0.0, z=0.0)))


def gps(i: int) -> Message:
    return Message(timestamp_ns=2_000 + 10 * i,
                   data=GPS(position=Point3d(x=45.0 + i / 1000, y=7.6, z=230.0),
                            status=GPSStatus(status=1, service=1, satellites=9)))


def image(i: int) -> Message:
    w, h = 4, 3
    pixels = bytes((i + k) % 256 for k in range(w * h * 3))
    return Message(timestamp_ns=3_000 + i, data=Image(data=pixels, format="raw", width=w, height=h,
                                                      stride=w * 3, encoding="rgb8", is_bigendian=False))


def thermo(i: int) -> Message:
    return Message(timestamp_ns=500 + 2 * i,
                   data=Thermo(value=290.0 + i, samples=[float(i), float(i) + 0.5],
                               label=None if i % 3 else f"s{i}"))


WRITERS = {"/sensors/imu": (IMU, imu, 120), "/sensors/gps": (GPS, gps, 40),
           "/camera/front": (Image, image, 15), "/env/thermo": (Thermo, thermo, 60)}


def write_sequence(client, name: str, metadata: dict, topics=WRITERS, shuffle: bool = False) -> None:
    with client.sequence_create(name, metadata) as w:
        writers = {t: w.topic_create(t, {"topic": t.strip("/"), "rate": 10}, cls)
                   for t, (cls, _, _) in topics.items()}
        for t, (_, make, n) in topics.items():
            order = list(range(n))
            if shuffle:
                order = order[::-1]
            for i in order:
                writers[t].push(make(i))


def read_all(client, seq: str, topic: str, start=None, end=None) -> list:
    th = client.topic_handler(seq, topic)
    assert th is not None, f"topic {topic} not found"
    return list(th.get_data_streamer(start, end))


@pytest.fixture(params=["local", "s3"])
def store_server(request, make_settings, start_server):
    overrides = request.getfixturevalue("s3_settings") if request.param == "s3" else {}
    return start_server(make_settings(**overrides))


@pytest.fixture
def sdk(store_server):
    c = connect(store_server)
    yield c
    c.close()


def test_round_trip_every_ontology(sdk, store_server):
    write_sequence(sdk, "/drive_01", {"driver": {"name": "ada", "shift": 2}, "tags": ["a", "b"]})
    assert sdk.list_sequences() == ["drive_01"]
    sh = sdk.sequence_handler("drive_01")
    assert sh.user_metadata == {"driver": {"name": "ada", "shift": 2}, "tags": ["a", "b"]}
    assert sorted(sh.topics) == sorted(WRITERS)
    assert len(sh.sessions) == 1 and sh.sessions[0].locked
    for topic, (cls, make, n) in WRITERS.items():
        got = read_all(sdk, "drive_01", topic)
        expected = [make(i) for i in range(n)]
        assert [m.timestamp_ns for m in got] == [m.timestamp_ns for m in expected]
        assert [m.get_data(cls) for m in got] == [m.get_data(cls) for m in expected], topic
        th = sdk.topic_handler("drive_01", topic)
        assert th.user_metadata == {"topic": topic.strip("/"), "rate": 10}
    # stored files follow layout v1
    folders = store_server.runtime.store.list_dir("")
    assert sum(f.startswith("sq_") for f in folders) == 1
    assert sum(f.startswith("tp_") for f in folders) == len(WRITERS)


def test_time_window_reads_are_half_open_and_sorted(sdk):
    write_sequence(sdk, "win", {}, topics={"/imu": (IMU, imu, 100)}, shuffle=True)
    got = read_all(sdk, "win", "/imu", 1_010, 1_020)
    assert [m.timestamp_ns for m in got] == list(range(1_010, 1_020))
    assert [m.timestamp_ns for m in read_all(sdk, "win", "/imu", 1_095, None)] == list(range(1_095, 1_100))
    assert [m.timestamp_ns for m in read_all(sdk, "win", "/imu", None, 1_003)] == [1_000, 1_001, 1_002]
    th = sdk.topic_handler("win", "/imu")
    assert (th.timestamp_ns_min, th.timestamp_ns_max) == (1_000, 1_099)
    # sequence-level streamer merges topics by time
    write_sequence(sdk, "multi", {}, topics={"/imu": (IMU, imu, 30), "/thermo": (Thermo, thermo, 400)})
    sh = sdk.sequence_handler("multi")
    stamps = [m.timestamp_ns for _, m in sh.get_data_streamer(start_timestamp_ns=1_005, end_timestamp_ns=1_100)]
    assert stamps == sorted(stamps) and len(stamps) == 25 + 47


def test_update_with_new_session_and_session_delete(sdk):
    write_sequence(sdk, "upd", {"v": 1}, topics={"/imu": (IMU, imu, 10)})
    sh = sdk.sequence_handler("upd")
    with sh.update() as u:
        tw = u.topic_create("/gps", {}, GPS)
        for i in range(5):
            tw.push(gps(i))
        assert u.topic_create("/imu", {}, IMU) is None  # name taken by the first session
    sh.reload()
    assert sorted(sh.topics) == ["/gps", "/imu"]
    assert len(sh.sessions) == 2 and all(s.locked for s in sh.sessions)
    assert len(read_all(sdk, "upd", "/gps")) == 5
    sdk.session_delete(sh.sessions[1].locator)
    sh.reload()  # the client caches handlers
    assert sh.topics == ["/imu"] and len(sh.sessions) == 1
    assert not sdk.topic_exists("upd", "/gps")


def test_report_policy_keeps_data_and_notifies(sdk):
    with pytest.raises(RuntimeError, match="boom"):
        with sdk.sequence_create("rep", {}) as w:
            tw = w.topic_create("/imu", {}, IMU)
            for i in range(10):
                tw.push(imu(i))
            raise RuntimeError("boom")
    sh = sdk.sequence_handler("rep")
    assert sh is not None and sh.sessions[0].locked
    notes = sdk.list_sequence_notifications("rep")
    assert len(notes) == 1 and "boom" in notes[0].message
    topic_notes = sdk.list_topic_notifications("rep", "/imu")
    assert len(topic_notes) == 1 and topic_notes[0].message == "boom"
    sdk.clear_sequence_notifications("rep")
    assert sdk.list_sequence_notifications("rep") == []
    assert len(sdk.list_topic_notifications("rep", "/imu")) == 1
    sdk.clear_topic_notifications("rep", "/imu")
    assert sdk.list_topic_notifications("rep", "/imu") == []


def test_delete_policy_forgets_everything(sdk, store_server):
    with pytest.raises(ValueError, match="abort"):
        with sdk.sequence_create("gone", {}, on_error=SessionLevelErrorPolicy.Delete) as w:
            tw = w.topic_create("/imu", {}, IMU)
            for i in range(10):
                tw.push(imu(i))
            raise ValueError("abort")
    assert sdk.sequence_handler("gone") is None
    assert sdk.list_sequences() == []
    assert not sdk.sequence_exists("gone")
    # deleting really forgets: the name can be reused
    write_sequence(sdk, "gone", {"second": True}, topics={"/imu": (IMU, imu, 3)})
    assert sdk.sequence_handler("gone").user_metadata == {"second": True}
    assert len(read_all(sdk, "gone", "/imu")) == 3
    store = store_server.runtime.store
    marked = [f for f in store.list_dir("") if store.exists(f"{f}/TO_DELETE")]
    assert len(marked) == 2  # the deleted sequence folder and its topic folder


def test_sequence_delete_and_list(sdk):
    for name in ("a1", "b2", "c3"):
        write_sequence(sdk, name, {}, topics={"/imu": (IMU, imu, 3)})
    assert sorted(sdk.list_sequences()) == ["a1", "b2", "c3"]
    sdk.sequence_delete("b2")
    assert sorted(sdk.list_sequences()) == ["a1", "c3"]
    assert sdk.topic_handler("b2", "/imu") is None


def test_topic_without_data_still_answers(sdk):
    with sdk.sequence_create("empty_topic", {}) as w:
        w.topic_create("/imu", {}, IMU)
    th = sdk.topic_handler("empty_topic", "/imu")
    assert th is not None and th.locked
    with pytest.raises(ValueError, match="no data"):
        th.get_data_streamer()
    assert sdk.sequence_handler("empty_topic").topics == ["/imu"]


def test_finalized_topic_refuses_new_data(sdk, store_server):
    write_sequence(sdk, "fin", {}, topics={"/imu": (IMU, imu, 5)})
    t = store_server.runtime.catalog.topic("fin/imu")
    raw = flight.FlightClient(store_server.location)
    desc = flight.FlightDescriptor.for_command(
        f'{{"resource_locator": "fin/imu", "topic_uuid": "{t["topic_uuid"]}"}}'.encode())
    schema = pa.ipc.read_schema(pa.py_buffer(t["arrow_schema"]))
    with pytest.raises(pa.ArrowInvalid, match="already been uploaded and finalized"):
        writer, _ = raw.do_put(desc, schema)
        writer.close()
    assert len(read_all(sdk, "fin", "/imu")) == 5
    raw.close()
