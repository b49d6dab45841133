"""Error kinds of mosaicod and the one table that maps them to Flight errors.

Logic below the Flight layer raises ``MosaicoError(kind, message)``; the server converts it with
``to_flight`` exactly once, at the endpoint boundary.  pyarrow cannot emit ALREADY_EXISTS or
FAILED_PRECONDITION, so those map to INVALID_ARGUMENT (the 0.7.0 client surfaces both upstream
codes as ``ArrowInvalid`` anyway) while keeping upstream's message texts.
"""

from __future__ import annotations

import enum

import pyarrow as pa
import pyarrow.flight as flight


class Kind(enum.Enum):
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    BAD_REQUEST = "bad_request"
    FAILED_PRECONDITION = "failed_precondition"
    UNAUTHORIZED = "unauthorized"
    UNAUTHENTICATED = "unauthenticated"
    ABORTED = "aborted"
    CANCELLED = "cancelled"
    UNIMPLEMENTED = "unimplemented"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


# kind -> (exception class raised to pyarrow, gRPC status the client sees)
FLIGHT_ERRORS: dict[Kind, tuple[type[BaseException], str]] = {
    Kind.NOT_FOUND: (pa.lib.ArrowKeyError, "NOT_FOUND"),
    Kind.ALREADY_EXISTS: (pa.lib.ArrowInvalid, "INVALID_ARGUMENT"),
    Kind.BAD_REQUEST: (pa.lib.ArrowInvalid, "INVALID_ARGUMENT"),
    Kind.FAILED_PRECONDITION: (pa.lib.ArrowInvalid, "INVALID_ARGUMENT"),
    Kind.UNAUTHORIZED: (flight.FlightUnauthorizedError, "PERMISSION_DENIED"),
    Kind.UNAUTHENTICATED: (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    Kind.ABORTED: (flight.FlightInternalError, "INTERNAL"),
    Kind.CANCELLED: (flight.FlightCancelledError, "CANCELLED"),
    Kind.UNIMPLEMENTED: (NotImplementedError, "UNIMPLEMENTED"),
    Kind.UNAVAILABLE: (flight.FlightUnavailableError, "UNAVAILABLE"),
    Kind.INTERNAL: (flight.FlightInternalError, "INTERNAL"),
}


class MosaicoError(Exception):
    """A failure with a kind (which decides the Flight status) and a message for the user."""

    def __init__(self, kind: Kind, message: str):
        message = message.rstrip(".")  # pyarrow appends ". Detail: ..." on the wire
        super().__init__(message)
        self.kind = kind
        self.message = message


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for one-line errors and log fields; ``default``
    (or the exception's type name) when the message is empty."""
    lines = str(exc).strip().splitlines()
    if lines:
        return lines[0]
    return type(exc).__name__ if default is None else default


def not_found(what: str) -> MosaicoError:
    return MosaicoError(Kind.NOT_FOUND, f"{what} not found")


def already_exists(what: str) -> MosaicoError:
    return MosaicoError(Kind.ALREADY_EXISTS, f"{what} already exists")


def bad_request(detail: str) -> MosaicoError:
    return MosaicoError(Kind.BAD_REQUEST, f"Bad request: {detail}")


def precondition(detail: str) -> MosaicoError:
    return MosaicoError(Kind.FAILED_PRECONDITION, detail)


def unauthorized(detail: str) -> MosaicoError:
    return MosaicoError(Kind.UNAUTHORIZED, f"Unauthorized: {detail} (unauthorized)")


def internal(detail: str) -> MosaicoError:
    return MosaicoError(Kind.INTERNAL, f"Internal error: {detail}")


def to_flight(err: MosaicoError) -> BaseException:
    cls, _status = FLIGHT_ERRORS[err.kind]
    return cls(err.message)
