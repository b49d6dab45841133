"""Flight command descriptors: the JSON commands of DoPut, GetFlightInfo and GetSchema, parsed in
one place (docs/protocol.md#upload-doput, docs/protocol.md#getflightinfo,
docs/protocol.md#getschema).  Endpoints call these and hand plain values to the service."""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow.flight as flight

from . import errors, locators
from .wirejson import int64, member, parse_object

Window = tuple[int | None, int | None]  # [start, end) in nanoseconds; None = unbounded


def _command(descriptor: flight.FlightDescriptor) -> dict:
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        raise errors.bad_request("Unsupported descriptor: expected a command descriptor")
    return parse_object(descriptor.command, "command")


def window(start: Any, end: Any, names: tuple[str, str] = ("timestamp_ns_start", "timestamp_ns_end")) -> Window:
    """A validated half-open time window (either bound may be None)."""
    for name, v in zip(names, (start, end)):
        if v is not None and not int64(v):
            raise errors.bad_request(f"`{name}` must be an integer of nanoseconds between -2^63 and 2^63-1, "
                                     f"got {errors.shown(v, 40)}")
    if start is not None and end is not None and start >= end:
        raise errors.bad_request(f"bad timestamp range: start ({start}) must be lower than end ({end})")
    return start, end


def upload(descriptor: flight.FlightDescriptor) -> tuple[str, uuid.UUID]:
    """DoPut: ``{"resource_locator": topic, "topic_uuid": uuid}`` -> (topic locator, topic uuid)."""
    cmd = _command(descriptor)
    return (locators.topic(member(cmd, "resource_locator")),
            locators.parse_uuid(member(cmd, "topic_uuid")))


def read(descriptor: flight.FlightDescriptor) -> tuple[locators.Resource, Window]:
    """GetFlightInfo: ``{"resource_locator": sequence or topic, "timestamp_ns_start": ...,
    "timestamp_ns_end": ...}`` -> (resource, window)."""
    cmd = _command(descriptor)
    return (locators.resource(member(cmd, "resource_locator")),
            window(cmd.get("timestamp_ns_start"), cmd.get("timestamp_ns_end")))


def schema(descriptor: flight.FlightDescriptor) -> str:
    """GetSchema: ``{"resource_locator": topic}`` -> topic locator."""
    return locators.topic(_command(descriptor).get("resource_locator"))
