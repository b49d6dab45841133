"""What the 0.7.0 client sees must not change when the server speaks upstream's byte-level details
(bincode tickets, view types) and the older dialect (extra keys, extra actions).

A fixed scenario is written through mosaicolabs 0.7.0 and every SDK-visible answer is compared with
expected values written out by hand (verified against the server before the byte-level and dialect
work landed): sequence and topic handlers, list, query answers, data (whole and windowed), and the
ontology each topic resolves to (never "Unmodeled")."""

from __future__ import annotations

import pyarrow as pa
import pytest
from mosaicolabs import (IMU, CameraInfo, CompressedImage, Message, QueryOntologyCatalog, QuerySequence,
                         QueryTopic, String, Vector3d)
from mosaicolabs.models.core.serializable import _canonicalize_arrow_type

from .conftest import connect

SEQ = "compat_drive"
SEQ_MD = {"driver": {"name": "ada", "shift": 2}, "tags": ["a", "b"], "site": "turin"}


def imu(i: int) -> Message:
    return Message(timestamp_ns=10_000 + 10 * i,
                   data=IMU(acceleration=Vector3d(x=float(i), y=-1.5, z=9.81),
                            angular_velocity=Vector3d(x=0.25 * i, y=0.0, z=-0.5)))


def note(i: int) -> Message:
    return Message(timestamp_ns=10_005 + 20 * i, data=String(data=f"note {i}: " + "x" * (i % 7)))


def jpeg(i: int) -> Message:
    return Message(timestamp_ns=10_100 + 100 * i,
                   data=CompressedImage(data=bytes((i * 7 + k) % 256 for k in range(64 + i)), format="jpeg"))


def calib(i: int) -> Message:
    return Message(timestamp_ns=10_000 + 250 * i,
                   data=CameraInfo(height=480, width=640 + i, distortion_model="plumb_bob",
                                   distortion_parameters=[0.1, -0.2, 0.0, 0.0, float(i)],
                                   intrinsic_parameters=[500.0, 0, 320, 0, 500.0, 240, 0, 0, 1],
                                   rectification_parameters=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                                   projection_parameters=[500.0, 0, 320, 0, 0, 500.0, 240, 0, 0, 0, 1, 0]))


TOPICS = {"/sensors/imu": (IMU, imu, 60, {"rate": 100}),
          "/log/note": (String, note, 25, {"lang": "en"}),
          "/camera/jpeg": (CompressedImage, jpeg, 6, {"camera": "front"}),
          "/camera/info": (CameraInfo, calib, 3, {})}

# (ontology tag, first timestamp, last timestamp, message count) per topic: computed by hand
EXPECTED_TOPICS = {"/sensors/imu": ("IMU", 10_000, 10_590, 60),
                   "/log/note": ("String", 10_005, 10_485, 25),
                   "/camera/jpeg": ("CompressedImage", 10_100, 10_600, 6),
                   "/camera/info": ("CameraInfo", 10_000, 10_500, 3)}


@pytest.fixture
def sdk(server):
    c = connect(server)
    with c.sequence_create(SEQ, SEQ_MD) as w:
        writers = {t: w.topic_create(t, md, cls) for t, (cls, _, _, md) in TOPICS.items()}
        for t, (_, make, n, _) in TOPICS.items():
            for i in range(n):
                writers[t].push(make(i))
    with c.sequence_create("compat_other", {"site": "milan"}) as w:
        w.topic_create("/log/note", {}, String).push(note(0))
    yield c
    c.close()


def shape(resp) -> dict:
    assert resp is not None
    return {it.sequence.name: sorted(t.name for t in it.topics) for it in resp}


def test_sequence_and_topic_handlers_answer_as_before(sdk):
    assert sorted(sdk.list_sequences()) == ["compat_drive", "compat_other"]
    sh = sdk.sequence_handler(SEQ)
    assert sh.name == SEQ
    assert sh.user_metadata == SEQ_MD
    assert sorted(sh.topics) == sorted(TOPICS)
    assert len(sh.sessions) == 1 and sh.sessions[0].locked
    assert (sh.timestamp_ns_min, sh.timestamp_ns_max) == (10_000, 10_600)
    assert sh.total_size_bytes > 0
    for topic, (cls, _, _, md) in TOPICS.items():
        tag, lo, hi, _n = EXPECTED_TOPICS[topic]
        th = sdk.topic_handler(SEQ, topic)
        assert th is not None, topic
        assert (th.name, th.sequence_name, th.ontology_tag, th.user_metadata) == (topic, SEQ, tag, md)
        assert (th.timestamp_ns_min, th.timestamp_ns_max) == (lo, hi)
        assert th.locked and th.chunks_number == 1 and th.total_size_bytes > 0
        assert th.serialization_format == cls.__serialization_format__
        # the ontology resolves to the registered class, not to a dynamic "Unmodeled" one
        assert str(_canonicalize_arrow_type(th.ontology_schema)) == str(cls.__msco_pyarrow_struct__)
    assert sdk.sequence_exists(SEQ) and not sdk.sequence_exists("nope")
    assert sdk.topic_handler(SEQ, "/missing") is None


def test_data_reads_answer_as_before(sdk):
    for topic, (cls, make, n, _) in TOPICS.items():
        th = sdk.topic_handler(SEQ, topic)
        got = list(th.get_data_streamer())
        expected = [make(i) for i in range(n)]
        assert [m.timestamp_ns for m in got] == [m.timestamp_ns for m in expected], topic
        assert [m.get_data(cls) for m in got] == [m.get_data(cls) for m in expected], topic
    # windows are half-open [start, end), bounds on either side or both
    th = sdk.topic_handler(SEQ, "/log/note")
    assert [m.data.data for m in th.get_data_streamer(10_045, 10_105)] == ["note 2: xx", "note 3: xxx",
                                                                          "note 4: xxxx"]
    th = sdk.topic_handler(SEQ, "/sensors/imu")
    assert [m.timestamp_ns for m in th.get_data_streamer(start_timestamp_ns=10_570)] == [10_570, 10_580, 10_590]
    assert [m.timestamp_ns for m in th.get_data_streamer(end_timestamp_ns=10_020)] == [10_000, 10_010]
    sh = sdk.sequence_handler(SEQ)
    merged = [(t, m.timestamp_ns) for t, m in sh.get_data_streamer(start_timestamp_ns=10_090,
                                                                    end_timestamp_ns=10_110)]
    assert sorted(merged) == sorted([("/sensors/imu", 10_090), ("/sensors/imu", 10_100),
                                     ("/camera/jpeg", 10_100), ("/log/note", 10_105)])
    assert [ts for _, ts in merged] == sorted(ts for _, ts in merged)


def test_query_answers_as_before(sdk):
    cases = [
        (QuerySequence().with_name(SEQ), {SEQ: sorted(TOPICS)}),
        (QuerySequence().with_name_match("compat_*"), {SEQ: sorted(TOPICS), "compat_other": ["/log/note"]}),
        (QuerySequence().with_name_match("drive"), {}),  # a glob without wildcards is exact: no substring
        (QueryTopic().with_name("/log/note"), {SEQ: ["/log/note"], "compat_other": ["/log/note"]}),
        (QueryTopic().with_name_match("/camera/*"), {SEQ: ["/camera/info", "/camera/jpeg"]}),
        (QueryTopic().with_name_match("camera"), {}),
        (QueryTopic().with_ontology_tag("CompressedImage"), {SEQ: ["/camera/jpeg"]}),
        (QuerySequence().with_user_metadata("driver.shift", eq=2), {SEQ: sorted(TOPICS)}),
        (QueryTopic().with_user_metadata("lang", eq="en"), {SEQ: ["/log/note"]}),
        (QueryOntologyCatalog(IMU.Q.acceleration.x.gt(57.5)), {SEQ: ["/sensors/imu"]}),
        (QueryOntologyCatalog(String.Q.data.eq("note 3: xxx")), {SEQ: ["/log/note"]}),
        (QueryOntologyCatalog(String.Q.data.match("note 0*")), {SEQ: ["/log/note"], "compat_other": ["/log/note"]}),
        (QueryOntologyCatalog(CompressedImage.Q.format.eq("png")), {}),
    ]
    for q, expected in cases:
        assert shape(sdk.query(q)) == expected, q
    resp = sdk.query(QueryTopic().with_name("/log/note"))
    assert sorted((it.sequence.name, t.locator, t.ontology_tag) for it in resp for t in it.topics) == [
        ("compat_drive", "compat_drive/log/note", "String"), ("compat_other", "compat_other/log/note", "String")]


def test_server_info_answers_as_before(sdk):
    info = sdk.info()
    assert info.version == "0.7.0" and (info.semver.major, info.semver.minor, info.semver.patch) == (0, 7, 0)

