"""Validation at the edge: every input that used to reach the catalog, the store or Python's limits
and fail there with an internal error is refused with INVALID_ARGUMENT, the field named, and
nothing stored (through a raw pyarrow.flight client: the SDK cannot send most of these)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from mosaicod import wirejson

from .test_core_bad_input import act, assert_intact, batch, new_topic, put
from .test_error_boundary import assert_clean

DEEP = "[" * 1000 + "]" * 1000
HUGE_INT = "9" * 5000
BEYOND_INT64 = str(2 ** 63)
BEYOND_FLOAT = "1" + "0" * 350  # an integer literal no float can hold


def raw_action(c, name: str, body: str) -> list:
    return list(c.do_action(flight.Action(name, body.encode())))


def cmd(**fields) -> str:
    return json.dumps(fields)


def refused(fn, *fragments: str) -> str:
    with pytest.raises(pa.ArrowInvalid) as info:
        fn()
    msg = str(info.value)
    for f in fragments:
        assert f in msg, (f, msg)
    assert_clean(msg)
    return msg


@pytest.fixture
def seeded(raw_client):
    """`keep` (one finalized topic of 10 rows, metadata) plus a notification on it."""
    sess, tid = new_topic(raw_client, "keep", "t")
    put(raw_client, "keep/t", tid, [batch(list(range(10)))])
    act(raw_client, "session_finalize", {"session_uuid": sess})
    act(raw_client, "sequence_notification_create", {"locator": "keep", "notification_type": "error", "msg": "n1"})
    return raw_client


def nothing_new(c) -> None:
    assert_intact(c)
    assert [i.descriptor.path[0].decode() for i in c.list_flights()] == ["keep"]
    notes = json.loads(raw_action(c, "sequence_notification_list", cmd(locator="keep"))[0].body.to_pybytes())
    assert [n["msg"] for n in notes["response"]["notifications"]] == ["n1"]


BODY_CASES = [
    # (action, raw JSON body, fragments expected in the message)
    ("sequence_create", '{"locator": "s1", "user_metadata": {"a": %s}}' % DEEP, ["nested deeper than 64 levels"]),
    ("sequence_create", '{"locator": "s1", "user_metadata": {"n": %s}}' % HUGE_INT,
     ["field `user_metadata.n`", "5000 digits is too large"]),
    ("sequence_create", '{"locator": "s1", "user_metadata": {"x": NaN}}', ["field `user_metadata.x`", "NaN"]),
    ("sequence_create", '{"locator": "s1", "user_metadata": {"x": [1, Infinity]}}',
     ["field `user_metadata.x[1]`", "Infinity"]),
    ("sequence_create", '{"locator": "s1", "user_metadata": {"x": 1e400}}', ["field `user_metadata.x`", "out of range"]),
    ("sequence_create", '{"locator": "s1", "user_metadata": {"x": "a\\u0000b"}}', ["field `user_metadata.x`", "NUL"]),
    ("sequence_create", '{"locator": "s1", "user_metadata": {"x": "\\ud800"}}', ["field `user_metadata.x`", "surrogate"]),
    ("sequence_create", '{"locator": "s\\ud800", "user_metadata": {}}', ["field `locator`", "surrogate"]),
    ("sequence_create", '{"locator": "s\\u0000", "user_metadata": {}}', ["field `locator`", "NUL"]),
    ("sequence_notification_create", '{"locator": "keep", "notification_type": "error", "msg": "x\\u0000"}',
     ["field `msg`", "NUL"]),
    ("sequence_notification_create", '{"locator": "keep", "notification_type": "error", "msg": "\\udfff"}',
     ["field `msg`", "surrogate"]),
    ("query", '{"sequence": {"name": {"$eq": "k\\u0000"}}}', ["field `sequence.name.$eq`", "NUL"]),
    ("query", '{"sequence": {"user_metadata": {"a": {"$eq": "\\ud83d"}}}}', ["surrogate"]),
    ("query", '{"sequence": {"user_metadata": {"a": {"$gt": NaN}}}}', ["NaN"]),
    ("query", '{"sequence": {"user_metadata": {"a": {"$gt": %s}}}}' % BEYOND_FLOAT,
     ["query.sequence.user_metadata.a.$gt", "out of range"]),
    ("query", '{"sequence": {"created_at_ns": {"$gt": %s}}}' % BEYOND_INT64, ["created_at_ns", "expected an integer"]),
    ("query", '{"sequence": {"user_metadata": {"a[2147483648]": {"$eq": 1}}}}', ["array index [2147483648] is too large"]),
    ("query", '{"ontology": {"Floating64.data[99999999999]": {"$eq": 1}}}', ["array index", "too large"]),
    ("topic_filter_clusterize", '{"locator": "keep/t", "ontology": {"Floating64.data": {"$gt": 0}}, '
                                '"timestamp_range": {"start_ns": %s, "end_ns": null}}' % BEYOND_INT64,
     ["timestamp_range.start_ns", "out of range"]),
    ("topic_filter_clusterize", '{"locator": "keep/t", "clustering_dt_ns": 0, "ontology": {}}',
     ["At least 1 filtering condition is required, found 0"]),
    ("x" * 20_000, "{}", ["no available action for string `xxx", "..."]),
]


@pytest.mark.parametrize("name, body, fragments", BODY_CASES,
                         ids=[f"{c[0][:30]}-{i}" for i, c in enumerate(BODY_CASES)])
def test_unstorable_or_unbounded_bodies_are_refused(seeded, name, body, fragments):
    refused(lambda: raw_action(seeded, name, body), *fragments)
    nothing_new(seeded)


def info(c, command: str):
    return c.get_flight_info(flight.FlightDescriptor.for_command(command.encode()))


def test_commands_and_tickets_are_parsed_with_limits(seeded):
    c = seeded
    refused(lambda: info(c, '{"resource_locator": %s}' % DEEP), "command deserialization error", "nested")
    refused(lambda: info(c, '{"resource_locator": "keep", "timestamp_ns_start": %s}' % HUGE_INT),
            "field `timestamp_ns_start`", "too large")
    refused(lambda: info(c, '{"resource_locator": "keep/t", "timestamp_ns_end": %s}' % BEYOND_INT64),
            "`timestamp_ns_end` must be an integer of nanoseconds between -2^63 and 2^63-1")
    refused(lambda: info(c, '{"resource_locator": "keep/\\ud800"}'), "field `resource_locator`", "surrogate")
    refused(lambda: c.get_schema(flight.FlightDescriptor.for_command(('{"resource_locator": %s}' % DEEP).encode())),
            "nested")
    refused(lambda: c.do_put(flight.FlightDescriptor.for_command(('{"resource_locator": %s}' % DEEP).encode()),
                             pa.schema([("timestamp_ns", pa.int64())]))[0].close(), "nested")

    ticket = info(c, '{"resource_locator": "keep/t"}').endpoints[0].ticket.ticket
    for bad in (DEEP.encode(), ticket[:3], b"\x05ke\x00/t\x00\x00", b"\xfd" + b"\xff" * 8, b"\x02\xff\xfe\x00\x00"):
        refused(lambda: c.do_get(flight.Ticket(bad)).read_all())
    nothing_new(c)


def test_in_lists_beyond_the_bind_parameter_limit_work(seeded):
    c = seeded
    names = [f"n{i}" for i in range(70_000)] + ["keep"]
    res = json.loads(raw_action(c, "query", json.dumps({"sequence": {"name": {"$in": names}}}))[0].body.to_pybytes())
    assert [i["sequence"] for i in res["response"]["items"]] == ["keep"]
    stamps = list(range(70_000))
    res = json.loads(raw_action(c, "query", json.dumps({"topic": {"created_at_ns": {"$in": stamps}}}))[0]
                     .body.to_pybytes())
    assert res["response"]["items"] == []


def test_metadata_in_lists_beyond_the_bind_parameter_limit_work(raw_client):
    c = raw_client
    for name, md in (("md", {"k": 69_999, "l": ["z", 3], "m": [1, 2]}), ("other", {"k": 70_000, "l": ["3"], "m": [1, 5]})):
        act(c, "sequence_create", {"locator": name, "user_metadata": md})
        sess = act(c, "session_create", {"locator": name})
        act(c, "topic_create", {"session_uuid": sess["uuid"], "locator": f"{name}/t", "serialization_format": "default",
                                "ontology_tag": "X", "user_metadata": {}})

    def query(md_filter) -> list[str]:
        res = raw_action(c, "query", json.dumps({"sequence": {"user_metadata": md_filter}}))
        return [i["sequence"] for i in json.loads(res[0].body.to_pybytes())["response"]["items"]]

    assert query({"k": {"$in": list(range(70_000))}}) == ["md"]
    assert query({"k": {"$in": [70_000.0, 1]}}) == ["other"]  # numbers compare numerically
    assert query({"l": {"$in": [3]}}) == ["md"]  # array elements, no coercion between types
    assert query({"l": {"$in": ["3", "q"]}}) == ["other"]
    assert query({"l[1]": {"$in": [3]}}) == ["md"]
    assert query({"m[!]": {"$in": [1, 2, 3]}}) == ["md"]  # every element in the set
    assert query({"m[!]": {"$in": [1]}}) == []
    assert query({"k": {"$in": [69_999, 70_000]}, "l": {"$in": ["3"]}}) == ["other"]  # two $in filters


def test_limits_of_the_wire_parser():
    with pytest.raises(Exception, match="too large"):
        wirejson.parse_object(b" " * (wirejson.MAX_BYTES + 1))
    with pytest.raises(Exception, match="not valid UTF-8"):
        wirejson.parse_object(b'{"a": "\xff"}')
    with pytest.raises(Exception, match="expected a JSON object"):
        wirejson.parse_object(b"[1]")
    with pytest.raises(Exception, match=r"field `a`: 100001 entries are too many"):
        wirejson.parse_object(json.dumps({"a": list(range(100_001))}).encode())
    with pytest.raises(Exception, match=r"10002 arrays and objects are too many \(at most 10000"):
        wirejson.parse_object(json.dumps({"a": [[i] for i in range(10_000)]}).encode())
    assert wirejson.parse_object(json.dumps({"a": ["[{" * 10_000]}).encode())  # brackets inside strings
    with pytest.raises(Exception, match=r"field `b`: a string of 70000 characters is too long"):
        wirejson.parse_object(json.dumps({"b": "y" * 70_000}).encode())
    depth = wirejson.MAX_DEPTH - 1  # the outer object is level 1
    assert wirejson.parse_object(('{"a": ' + "[" * depth + "]" * depth + "}").encode())
    with pytest.raises(Exception, match="nested deeper than 64 levels"):
        wirejson.parse_object(('{"a": ' + "[" * (depth + 1) + "]" * (depth + 1) + "}").encode())
    # escaped backslashes and valid surrogate pairs are not NUL / lone surrogates
    doc = wirejson.parse_object(b'{"a": "x\\\\u0000", "b": "\\ud83d\\ude00", "c": 1e300, "d": 123456789012345678901234}')
    assert doc == {"a": "x\\u0000", "b": "\U0001F600", "c": 1e300, "d": 123456789012345678901234}


def test_a_schema_parquet_cannot_hold_is_refused_before_anything_is_recorded(seeded):
    c = seeded
    sess = act(c, "session_create", {"locator": "keep"})
    tid = act(c, "topic_create", {"session_uuid": sess["uuid"], "locator": "keep/u", "serialization_format": "default",
                                  "ontology_tag": "X", "user_metadata": {}})["uuid"]
    schema = pa.schema([("timestamp_ns", pa.int64()), ("u", pa.dense_union([pa.field("a", pa.int64())]))])
    desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": "keep/u", "topic_uuid": tid}).encode())

    def upload():
        writer, _ = c.do_put(desc, schema)
        writer.write_batch(pa.record_batch([pa.array([1], pa.int64()), pa.nulls(1, schema.field("u").type)],
                                           schema=schema))
        writer.close()

    refused(upload, "the schema cannot be stored", "dense_union")
    refused(upload, "the schema cannot be stored", "dense_union")  # the remembered answer, the same
    # the topic is still waiting for its first upload: a valid one now succeeds
    put(c, "keep/u", tid, [batch([1, 2])])
    assert c.do_get(info(c, '{"resource_locator": "keep/u"}').endpoints[0].ticket).read_all().num_rows == 2
