"""DoGet tickets are upstream 0.7's bincode bytes (mosaicod/tickets.py): worked byte examples, the
decoding rules, and DoGet through the wire with tickets we mint and tickets built by hand."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from mosaicod import errors
from mosaicod.tickets import I64_MAX, I64_MIN, TicketError, TopicTicket, encode_uvarint, unzigzag, zigzag

LOC16 = "seq1/sensors/imu"

# (ticket, exact bytes): the worked examples of upstream's encoding
WORKED = [
    (TopicTicket("seq/imu"), bytes.fromhex("07 73 65 71 2f 69 6d 75 00 00")),
    (TopicTicket("seq/imu", 10, -1), bytes.fromhex("07 73 65 71 2f 69 6d 75 01 14 01 01")),
    (TopicTicket("seq/imu", 1000, None),
     bytes.fromhex("07 73 65 71 2f 69 6d 75 01 fb d0 07 01 fd fe ff ff ff ff ff ff ff")),
    (TopicTicket(LOC16, 1_700_000_000_000_000_000, 1_700_000_001_000_000_000),
     b"\x10" + LOC16.encode() + bytes.fromhex("01 fd 00 00 54 6c fc 39 2f 2f 01 fd 00 94 89 e3 fc 39 2f 2f")),
]


@pytest.mark.parametrize("ticket,raw", WORKED)
def test_worked_examples_encode_and_decode(ticket, raw):
    assert ticket.encode() == raw
    assert TopicTicket.parse(raw) == ticket
    assert TopicTicket.decode(raw) == ticket


def test_byte_lengths_and_one_line_check():
    assert [len(raw) for _, raw in WORKED] == [10, 12, 22, 37]
    assert TopicTicket("seq/imu").encode() == b"\x07seq/imu\x00\x00"


def test_only_end_given_puts_the_start_sentinel():
    raw = TopicTicket("a/b", None, 5).encode()
    # i64::MIN zigzags to u64::MAX: 0xFD + eight 0xFF
    assert raw == b"\x03a/b" + b"\x01\xfd" + b"\xff" * 8 + b"\x01\x0a"
    assert TopicTicket.decode(raw) == TopicTicket("a/b", None, 5)


def test_both_sentinels_mean_no_window():
    raw = b"\x03a/b\x01" + encode_uvarint(zigzag(I64_MIN)) + b"\x01" + encode_uvarint(zigzag(I64_MAX))
    assert TopicTicket.decode(raw) == TopicTicket("a/b")


@pytest.mark.parametrize("value,raw", [(0, b"\x00"), (250, b"\xfa"), (251, b"\xfb\xfb\x00"),
                                       (0xFFFF, b"\xfb\xff\xff"), (0x10000, b"\xfc\x00\x00\x01\x00"),
                                       (0xFFFF_FFFF, b"\xfc\xff\xff\xff\xff"),
                                       (1 << 32, b"\xfd\x00\x00\x00\x00\x01\x00\x00\x00")])
def test_unsigned_varint_boundaries(value, raw):
    assert encode_uvarint(value) == raw


@pytest.mark.parametrize("n", [0, 1, -1, 2, -2, 123456789, -123456789, I64_MIN, I64_MAX])
def test_zigzag_round_trips(n):
    assert unzigzag(zigzag(n)) == n
    assert 0 <= zigzag(n) < 1 << 64


def test_long_locator_uses_a_wide_length():
    loc = "s/" + "t" * 298
    raw = TopicTicket(loc, 1, 2).encode()
    assert raw[:3] == b"\xfb\x2c\x01" and raw[3:303] == loc.encode()
    assert TopicTicket.decode(raw) == TopicTicket(loc, 1, 2)


def test_trailing_bytes_are_ignored():
    assert TopicTicket.decode(b"\x07seq/imu\x00\x00trailing") == TopicTicket("seq/imu")


def test_a_leading_slash_is_normalised():
    assert TopicTicket.decode(b"\x08/seq/imu\x00\x00") == TopicTicket("seq/imu")


@pytest.mark.parametrize("raw,why", [
    (b"", "truncated locator length"),
    (b"\x07seq/im", "truncated locator"),
    (b"\x07seq/imu", "truncated window start"),
    (b"\x07seq/imu\x00", "truncated window end"),
    (b"\x07seq/imu\x01", "truncated window start"),
    (b"\x07seq/imu\x01\xfb\x01", "truncated window start"),
    (b"\x07seq/imu\x02\x00", "invalid option tag 0x02 in window start"),
    (b"\x07seq/imu\x00\x07", "invalid option tag 0x07 in window end"),
    (b"\x07seq/imu\x01\xfe" + b"\x00" * 16 + b"\x00", "invalid integer marker 0xfe"),
    (b"\xff" + b"x" * 8, "invalid integer marker 0xff in locator length"),
    (b"\x02\xc3\x28\x00\x00", "locator is not valid UTF-8"),
    (b'{"locator": "keep/none"}', "truncated locator"),
])
def test_malformed_tickets_are_bad_requests(raw, why):
    with pytest.raises(TicketError, match=why):
        TopicTicket.parse(raw)
    with pytest.raises(errors.MosaicoError, match="ticket deserialization error") as info:
        TopicTicket.decode(raw)
    assert info.value.kind is errors.Kind.BAD_REQUEST


@pytest.mark.parametrize("locator", ["seq", "seq:01ABC", "se q/imu", "seq//imu", ""])
def test_a_locator_that_is_not_a_topic_is_a_bad_request(locator):
    raw = TopicTicket(locator).encode()
    with pytest.raises(errors.MosaicoError, match="not a valid topic locator") as info:
        TopicTicket.decode(raw)
    assert info.value.kind is errors.Kind.BAD_REQUEST


# -- through the wire -------------------------------------------------------------------------

SCHEMA = pa.schema([pa.field("timestamp_ns", pa.int64(), nullable=False),
                    pa.field("data", pa.float64(), nullable=False)])


def _act(c, name, body):
    res = list(c.do_action(flight.Action(name, json.dumps(body).encode())))
    return json.loads(res[0].body.to_pybytes())["response"] if res else None


def _topic(c, seq, topic, stamps=None):
    """Create ``seq/topic``; upload ``stamps`` (None: no DoPut at all). Returns the topic locator."""
    if seq not in {p.descriptor.path[0].decode() for p in c.list_flights()}:
        _act(c, "sequence_create", {"locator": seq, "user_metadata": {}})
    sess = _act(c, "session_create", {"locator": seq})["uuid"]
    loc = f"{seq}/{topic}"
    tid = _act(c, "topic_create", {"session_uuid": sess, "locator": loc, "serialization_format": "default",
                                   "ontology_tag": "F", "user_metadata": {}})["uuid"]
    if stamps is not None:
        desc = flight.FlightDescriptor.for_command(json.dumps({"resource_locator": loc, "topic_uuid": tid}).encode())
        writer, _ = c.do_put(desc, SCHEMA)
        writer.write_batch(pa.record_batch([pa.array(stamps, pa.int64()), pa.array([float(s) for s in stamps])],
                                           schema=SCHEMA))
        writer.close()
        _act(c, "session_finalize", {"session_uuid": sess})  # a topic without DoPut cannot be finalized
    return loc


def _info(c, cmd):
    return c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(cmd).encode()))


def _stamps(c, raw: bytes) -> list[int]:
    return c.do_get(flight.Ticket(raw)).read_all().column("timestamp_ns").to_pylist()


def test_flight_info_mints_upstream_tickets_for_every_window(raw_client):
    loc = _topic(raw_client, "seq", "imu", [5, 10, 15, 20, 1000, 2000])
    cases = [({}, TopicTicket("seq/imu")), ({"timestamp_ns_start": 1000}, TopicTicket("seq/imu", 1000)),
             ({"timestamp_ns_end": 16}, TopicTicket("seq/imu", None, 16)),
             ({"timestamp_ns_start": 10, "timestamp_ns_end": 20}, TopicTicket("seq/imu", 10, 20))]
    for window, expected in cases:
        for target in (loc, "seq"):  # topic and sequence FlightInfo carry the same tickets
            [ep] = _info(raw_client, {"resource_locator": target, **window}).endpoints
            assert ep.ticket.ticket == expected.encode(), (target, window)
    assert _info(raw_client, {"resource_locator": loc, "timestamp_ns_start": 1000}).endpoints[0].ticket.ticket == \
        bytes.fromhex("07 73 65 71 2f 69 6d 75 01 fb d0 07 01 fd fe ff ff ff ff ff ff ff")
    # and DoGet reads what each window selects
    assert _stamps(raw_client, b"\x07seq/imu\x00\x00") == [5, 10, 15, 20, 1000, 2000]
    assert _stamps(raw_client, TopicTicket("seq/imu", 1000).encode()) == [1000, 2000]
    assert _stamps(raw_client, TopicTicket("seq/imu", None, 16).encode()) == [5, 10, 15]
    assert _stamps(raw_client, TopicTicket("seq/imu", 10, 20).encode()) == [10, 15]
    assert _stamps(raw_client, TopicTicket("seq/imu", 10, -1).encode()) == []  # an empty window reads nothing


def test_do_get_refusals(raw_client):
    _topic(raw_client, "seq", "imu", [1, 2])
    _topic(raw_client, "seq", "never", None)
    with pytest.raises(pa.ArrowInvalid, match="ticket deserialization error"):
        raw_client.do_get(flight.Ticket(b'{"locator": "seq/imu"}')).read_all()  # our old JSON tickets
    with pytest.raises(pa.ArrowInvalid, match="ticket deserialization error: invalid option tag"):
        raw_client.do_get(flight.Ticket(b"\x07seq/imu\x05")).read_all()
    with pytest.raises(pa.ArrowInvalid, match="not a valid topic locator"):
        raw_client.do_get(flight.Ticket(TopicTicket("seq").encode())).read_all()
    with pytest.raises(pa.ArrowKeyError, match="not found"):
        raw_client.do_get(flight.Ticket(TopicTicket("seq/none").encode())).read_all()
    with pytest.raises(pa.ArrowInvalid, match="DoPut not called for topic `seq/never`"):
        raw_client.do_get(flight.Ticket(TopicTicket("seq/never").encode())).read_all()
    assert _stamps(raw_client, TopicTicket("seq/imu").encode()) == [1, 2]
