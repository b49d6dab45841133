"""DoGet tickets: upstream mosaicod 0.7's bytes, the one codec for this wire format.

A topic ticket is the bincode-2 encoding (standard configuration: little endian, variable-length
integers) of ``(locator: String, start: Option<i64>, end: Option<i64>)``:

* unsigned varint: ``v <= 250`` -> one byte; ``<= 0xFFFF`` -> ``0xFB`` + 2 bytes LE;
  ``<= 0xFFFF_FFFF`` -> ``0xFC`` + 4 bytes LE; else ``0xFD`` + 8 bytes LE;
* string: UTF-8 length as unsigned varint, then the bytes;
* option: ``0x00`` (None) or ``0x01`` then the value;
* i64: zigzag (``n >= 0 -> 2n``, ``n < 0 -> -2n - 1``), then unsigned varint.

Window: no bound -> both options None.  If either bound is set, both are Some and the missing side
holds the "unbounded" sentinel (``i64::MIN`` for start, ``i64::MAX`` for end).  On decode a None
or a sentinel means "no bound" on that side.  Trailing bytes after the third field are ignored (as
upstream's ``decode_from_slice``).  ``b"\\x07seq/imu\\x00\\x00"`` is the no-window ticket of
``seq/imu``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import errors, locators

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
_WIDE = {0xFB: ("<H", 2), 0xFC: ("<I", 4), 0xFD: ("<Q", 8)}


class TicketError(ValueError):
    """The bytes are not a valid ticket (the message says why)."""


# -- primitives -------------------------------------------------------------------------------

def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("unsigned varint of a negative number")
    if value <= 250:
        return bytes((value,))
    if value <= 0xFFFF:
        return b"\xfb" + struct.pack("<H", value)
    if value <= 0xFFFF_FFFF:
        return b"\xfc" + struct.pack("<I", value)
    if value <= 0xFFFF_FFFF_FFFF_FFFF:
        return b"\xfd" + struct.pack("<Q", value)
    raise ValueError("unsigned varint wider than 64 bits")


def zigzag(n: int) -> int:
    return 2 * n if n >= 0 else -2 * n - 1


def unzigzag(z: int) -> int:
    return z >> 1 if z % 2 == 0 else -((z + 1) >> 1)


class _Reader:
    def __init__(self, raw: bytes):
        self.raw = raw
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.raw):
            raise TicketError(f"truncated {what} at byte {self.pos}")
        out = self.raw[self.pos:self.pos + n]
        self.pos += n
        return out

    def uvarint(self, what: str) -> int:
        first = self.take(1, what)[0]
        if first <= 250:
            return first
        if first not in _WIDE:
            raise TicketError(f"invalid integer marker {first:#04x} in {what} at byte {self.pos - 1}")
        fmt, size = _WIDE[first]
        return struct.unpack(fmt, self.take(size, what))[0]

    def string(self, what: str) -> str:
        size = self.uvarint(f"{what} length")
        data = self.take(size, what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise TicketError(f"{what} is not valid UTF-8") from None

    def option_i64(self, what: str) -> int | None:
        tag = self.take(1, what)[0]
        if tag == 0:
            return None
        if tag != 1:
            raise TicketError(f"invalid option tag {tag:#04x} in {what} at byte {self.pos - 1}")
        return unzigzag(self.uvarint(what))  # any u64 unzigzags into the i64 range


# -- the ticket -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TopicTicket:
    """A DoGet ticket: a topic locator (``seq/topic``) and the half-open window ``[start, end)``
    (``None`` = unbounded on that side)."""

    locator: str
    start: int | None = None
    end: int | None = None

    def encode(self) -> bytes:
        loc = self.locator.encode("utf-8")
        out = encode_uvarint(len(loc)) + loc
        if self.start is None and self.end is None:
            return out + b"\x00\x00"
        start = I64_MIN if self.start is None else self.start
        end = I64_MAX if self.end is None else self.end
        return out + b"\x01" + encode_uvarint(zigzag(start)) + b"\x01" + encode_uvarint(zigzag(end))

    @classmethod
    def parse(cls, raw: bytes) -> "TopicTicket":
        """The three fields of ``raw``, unvalidated; raises TicketError on malformed bytes."""
        r = _Reader(raw)
        locator = r.string("locator")
        start = r.option_i64("window start")
        end = r.option_i64("window end")
        return cls(locator, None if start in (None, I64_MIN) else start, None if end in (None, I64_MAX) else end)

    @classmethod
    def decode(cls, raw: bytes) -> "TopicTicket":
        """Decode a ticket sent to DoGet: malformed bytes or a locator that is not a topic locator
        are bad requests (an empty window just reads no rows, as upstream)."""
        try:
            t = cls.parse(raw)
        except TicketError as exc:
            raise errors.bad_request(f"ticket deserialization error: {exc} (tickets come from GetFlightInfo "
                                     "endpoints and must be sent back unchanged)") from None
        return cls(locators.topic(t.locator), t.start, t.end)
