"""The error boundary: every failure reaches the client with its status and a clean message (no
traceback, path, SQL or exception class name); internal failures carry an error id whose full
traceback is in the server log, formatted without local variables."""

from __future__ import annotations

import json
import re
import traceback

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from mosaicod import errors, logs

from .fuzz_cases import MAX_MESSAGE, leaks, server_part


def assert_clean(message: str) -> None:
    """No traceback, path, SQL or exception class name; bounded (what the client library appends
    about its own side of the call is left out)."""
    assert not leaks(message), message
    assert len(server_part(message)) < MAX_MESSAGE, len(message)


def action(c: flight.FlightClient, name: str, body: bytes = b"{}") -> list:
    return list(c.do_action(flight.Action(name, body)))


def test_known_kinds_keep_their_status_without_traceback(raw_client):
    cases = [
        (("sequence_create", b"{not json"), pa.ArrowInvalid, "deserialization error"),
        (("session_create", json.dumps({"locator": "missing"}).encode()), pa.ArrowKeyError, "not found"),
        (("no_such_action", b"{}"), pa.ArrowInvalid, "no available action for string `no_such_action`"),
    ]
    for (name, body), cls, text in cases:
        with pytest.raises(cls) as info:
            action(raw_client, name, body)
        assert text in str(info.value)
        assert_clean(str(info.value))
    with pytest.raises(pa.ArrowNotImplementedError) as info:
        writer, reader = raw_client.do_exchange(flight.FlightDescriptor.for_command(b"x"))
        reader.read_all()
    assert_clean(str(info.value))
    with pytest.raises(pa.ArrowKeyError) as info:
        raw_client.get_flight_info(flight.FlightDescriptor.for_command(b'{"resource_locator": "nope"}'))
    assert_clean(str(info.value))


def test_a_huge_action_name_gives_a_readable_error(raw_client):
    name = "x" * 20_000
    with pytest.raises(pa.ArrowInvalid) as info:  # not gRPC's "metadata size exceeds hard limit"
        action(raw_client, name)
    msg = str(info.value)
    assert "no available action for string `xxxx" in msg and "..." in msg
    assert_clean(msg)


def test_unstorable_characters_in_an_echoed_value_are_escaped(raw_client):
    with pytest.raises(pa.ArrowInvalid) as info:
        action(raw_client, "bad\x00name\x7f")
    assert "bad\\x00name\\x7f" in str(info.value)


@pytest.mark.parametrize("fmt", ["pretty", "plain", "json"])
def test_internal_errors_carry_an_id_and_the_log_has_the_traceback_without_locals(
        raw_client, server, capsys, restore_logging, fmt):
    logs.configure("info", fmt)

    def info(_body):
        secret_local = "local-variable-value-" * 3  # noqa: F841 - must not reach the log
        raise RuntimeError("catalog said: SELECT * FROM secret_t")

    server.flight._actions["info"] = info
    with pytest.raises(flight.FlightInternalError) as exc:
        action(raw_client, "info")
    msg = str(exc.value)
    m = re.match(r"Internal error \(id ([0-9a-f]{12})\)", msg)
    assert m, msg
    assert_clean(msg)
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if m.group(1) in ln)
    assert "internal error" in line
    assert "Traceback (most recent call last)" in err and "RuntimeError: catalog said" in err
    assert "local-variable-value-" not in err


def test_a_failure_while_streaming_goes_through_the_boundary(raw_client, server, capsys):
    def items(_body):
        yield {"n": 1}
        raise RuntimeError("mid-stream failure")

    server.flight._streaming_actions["topic_filter_intersect"] = items
    with pytest.raises(flight.FlightInternalError) as exc:
        action(raw_client, "topic_filter_intersect")
    assert re.match(r"Internal error \(id [0-9a-f]{12}\)", str(exc.value))
    assert_clean(str(exc.value))


def test_wire_formatting_hides_only_what_pyarrow_would_send():
    errors.install_wire_formatting()
    errors.install_wire_formatting()  # idempotent
    assert traceback.format_exception(errors.NotFound("x")) == ["NOT_FOUND"]
    try:
        raise ValueError("ordinary")
    except ValueError as exc:
        text = "".join(traceback.format_exception(exc))
        assert "Traceback (most recent call last)" in text and "ValueError: ordinary" in text
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, None, True))
        assert "ValueError: ordinary" in text


def test_public_messages_are_escaped_and_bounded():
    assert errors.public("a\x00b\udc80c\n") == "a\\x00b\\udc80c\\x0a"
    long = errors.public("y" * 5000)
    assert len(long) <= errors.MAX_MESSAGE and long.endswith("(5000 chars)")
    assert errors.shown("z" * 1000).endswith("...") and len(errors.shown("z" * 1000)) <= 200
    assert errors.shown(12) == "12"
