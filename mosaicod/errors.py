"""Error kinds of mosaicod and the one boundary that turns them into Flight errors.

Logic below the Flight layer raises ``MosaicoError(kind, message)``; the server converts every
failure with ``to_wire`` exactly once, at the endpoint boundary (``server.endpoint`` /
``server._guard_stream``; the auth middleware uses the same function):

* a known kind becomes the exception class of its status (``FLIGHT_ERRORS``) carrying the
  message, made safe for the wire by ``public`` (control characters and lone surrogates escaped,
  at most ``MAX_MESSAGE`` characters);
* ``Kind.INTERNAL`` and any other exception become ``FlightInternalError("Internal error (id
  <id>)")``: the full traceback (and the internal detail) goes to the server log under the same
  id, the client sees neither.

pyarrow cannot emit ALREADY_EXISTS or FAILED_PRECONDITION, so those map to INVALID_ARGUMENT (the
0.7.0 client surfaces both upstream codes as ``ArrowInvalid`` anyway) while keeping upstream's
message texts.

How pyarrow builds the ". Detail: Python exception: Traceback ..." suffix, and how we stop it
-----------------------------------------------------------------------------------------------
A Python Flight handler that raises a ``FlightError`` subclass is converted by ``_flight.pyx``
into a Flight status whose detail prints as the Flight code (``"Internal"``,
``"Unauthorized"``): the client sees ``"<message>. Detail: Internal"``.  Any other exception
(``ArrowInvalid`` for INVALID_ARGUMENT, ``ArrowKeyError`` for NOT_FOUND, ``NotImplementedError``
for UNIMPLEMENTED: there is no Flight error class for these codes) propagates out of the Cython
callback; the C++ glue (``arrow/python/flight.cc``, ``CheckPyError`` -> ``ConvertPyError`` in
``arrow/python/common.cc``) maps the class to a status code and attaches a
``PythonErrorDetail``.  When gRPC serialises the status, ``PythonErrorDetail::ToString`` imports
the ``traceback`` module, looks up ``traceback.format_exception`` *by name, at every call*, calls
it with (type, value, traceback) and prefixes the result with ``"Python exception: "``; the text
goes both into ``grpc-message`` and the ``x-arrow-status-detail-bin`` trailer, and the client
prints it after ``". Detail: "``.  That traceback starts at a ``pyarrow/_flight.pyx`` frame and
shows our files, lines and code, plus the exception class name.

There is no per-call way to send one of those statuses without a ``PythonErrorDetail`` (the
alternative, ``sys.tracebacklimit = 0``, would still send the class name and the message twice,
and would also strip every traceback from our own logs).  So ``install_wire_formatting()`` — run
once when the Flight server is built, idempotent — replaces ``traceback.format_exception`` with a
wrapper that changes only two cases and hands everything else to the original function:

1. the exception is one of our wire classes (``InvalidArgument``, ``NotFound``,
   ``Unimplemented`` below, the classes the boundary raises): the "formatted exception" is just the
   status name, so the client sees e.g. ``"Sequence `x` not found. Detail: Python exception:
   NOT_FOUND"``;
2. any other exception whose traceback starts in ``pyarrow/_flight.pyx`` (something escaped the
   boundary, e.g. inside pyarrow's own stream handling): the traceback is logged once under a new
   error id and the client gets ``"see the server log (id <id>)"`` instead of the traceback
   (the status message itself, ``str(exc)``, still goes out unfiltered: only the boundary makes
   messages safe, which is why every endpoint and every stream goes through it).

Logging is unaffected: structlog and ``logging`` format tracebacks with
``traceback.print_exception`` / ``TracebackException``, which the wrapper does not touch, and they
never see our wire classes (the boundary logs the original exception).
"""

from __future__ import annotations

import enum
import re
import secrets
import traceback
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from . import logs

MAX_MESSAGE = 1000  # characters of a client-visible message (gRPC allows 16 KiB of metadata)
MAX_SHOWN = 200  # characters of an echoed input inside a message


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
    DATA_LOSS = "data_loss"  # a stored file is damaged: the message (no path) says what to do
    INTERNAL = "internal"


# -- the exception classes that travel to pyarrow ----------------------------------------------


class InvalidArgument(pa.lib.ArrowInvalid):
    """INVALID_ARGUMENT on the wire (client: ``ArrowInvalid``)."""

    status = "INVALID_ARGUMENT"


class NotFound(pa.lib.ArrowKeyError):
    """NOT_FOUND on the wire (client: ``ArrowKeyError``)."""

    status = "NOT_FOUND"


class Unimplemented(NotImplementedError):
    """UNIMPLEMENTED on the wire (client: ``ArrowNotImplementedError``)."""

    status = "UNIMPLEMENTED"


WIRE_ERRORS = (InvalidArgument, NotFound, Unimplemented)

# kind -> (exception class raised to pyarrow, gRPC status the client sees)
FLIGHT_ERRORS: dict[Kind, tuple[type[BaseException], str]] = {
    Kind.NOT_FOUND: (NotFound, "NOT_FOUND"),
    Kind.ALREADY_EXISTS: (InvalidArgument, "INVALID_ARGUMENT"),
    Kind.BAD_REQUEST: (InvalidArgument, "INVALID_ARGUMENT"),
    Kind.FAILED_PRECONDITION: (InvalidArgument, "INVALID_ARGUMENT"),
    Kind.UNAUTHORIZED: (flight.FlightUnauthorizedError, "PERMISSION_DENIED"),
    Kind.UNAUTHENTICATED: (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    Kind.ABORTED: (flight.FlightInternalError, "INTERNAL"),
    Kind.CANCELLED: (flight.FlightCancelledError, "CANCELLED"),
    Kind.UNIMPLEMENTED: (Unimplemented, "UNIMPLEMENTED"),
    Kind.UNAVAILABLE: (flight.FlightUnavailableError, "UNAVAILABLE"),
    Kind.DATA_LOSS: (flight.FlightInternalError, "INTERNAL"),  # pyarrow cannot send DATA_LOSS
    Kind.INTERNAL: (flight.FlightInternalError, "INTERNAL"),
}


class MosaicoError(Exception):
    """A failure with a kind (which decides the Flight status) and a message for the user.

    For ``Kind.INTERNAL`` the message is for the server log only: the client gets an error id."""

    def __init__(self, kind: Kind, message: str):
        message = message.rstrip(".")  # pyarrow appends ". Detail: ..." on the wire
        super().__init__(message)
        self.kind = kind
        self.message = message


# -- messages ----------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def public(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` made safe for a gRPC status: control characters and lone surrogates escaped
    (a surrogate cannot even be encoded to UTF-8), cut to ``limit`` characters."""
    text = _UNSAFE.sub(_escape, text)
    if len(text) > limit:
        text = text[: limit - 20] + f"... ({len(text)} chars)"
    return text


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """An input value as echoed in an error message: strings as they are, anything else as
    JSON-ish repr; escaped and cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return public(text, limit + 12)


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
    """An internal failure: ``detail`` is logged under an error id, the client sees the id."""
    return MosaicoError(Kind.INTERNAL, f"Internal error: {detail}")


# -- the boundary --------------------------------------------------------------------------------


def new_error_id() -> str:
    return secrets.token_hex(6)


def _log():
    return logs.get("mosaicod.errors")


def log_internal(exc: BaseException, rpc: str | None, tb: Any = None) -> str:
    """Log ``exc`` with its full traceback (``tb`` when it is not attached) under a new error
    id; return the id."""
    error_id = new_error_id()
    detail = exc.message if isinstance(exc, MosaicoError) else first_line(exc, type(exc).__name__)
    _log().error("internal error", error_id=error_id, rpc=rpc, error=detail[:MAX_MESSAGE],
                 exc_info=(type(exc), exc, tb or exc.__traceback__))
    return error_id


def internal_wire_error(error_id: str) -> flight.FlightInternalError:
    return flight.FlightInternalError(f"Internal error (id {error_id})")


def to_flight(err: MosaicoError, rpc: str | None = None) -> BaseException:
    """The Flight exception for a MosaicoError (internal ones are logged under an error id)."""
    if err.kind is Kind.INTERNAL:
        return internal_wire_error(log_internal(err, rpc))
    cls, _status = FLIGHT_ERRORS[err.kind]
    return cls(public(err.message))


def to_wire(exc: BaseException, rpc: str | None = None) -> BaseException:
    """Every failure of an RPC, as the exception handed to pyarrow.  Known kinds map through
    ``FLIGHT_ERRORS``; Flight errors raised on purpose keep their status (message made safe);
    anything else is an internal error with an id."""
    if isinstance(exc, MosaicoError):
        return to_flight(exc, rpc)
    if isinstance(exc, WIRE_ERRORS):
        return exc
    if isinstance(exc, flight.FlightError) and not isinstance(exc, flight.FlightInternalError):
        return type(exc)(public(str(exc)))
    return internal_wire_error(log_internal(exc, rpc))


# -- keeping tracebacks out of pyarrow's status details ------------------------------------------


def _starts_in_flight_glue(tb) -> bool:
    return tb is not None and "pyarrow/_flight" in (tb.tb_frame.f_code.co_filename or "")


_SENTINEL = object()


def install_wire_formatting() -> None:
    """Replace ``traceback.format_exception`` (process-wide, idempotent) so that pyarrow's
    ``PythonErrorDetail`` never formats a traceback for a client: see the module docstring."""
    if getattr(traceback.format_exception, "_mosaicod_wire", False):
        return
    original = traceback.format_exception

    def format_exception(exc, /, value=_SENTINEL, tb=_SENTINEL, *args, **kwargs):
        v = exc if value is _SENTINEL else value
        if isinstance(v, WIRE_ERRORS):
            return [v.status]
        t = getattr(v, "__traceback__", None) if tb is _SENTINEL else tb
        if isinstance(v, BaseException) and _starts_in_flight_glue(t):
            error_id = getattr(v, "_mosaicod_error_id", None)
            if error_id is None:  # pyarrow formats the detail twice: log once
                error_id = log_internal(v, None, t)
                try:
                    v._mosaicod_error_id = error_id
                except AttributeError:  # pragma: no cover - exceptions without __dict__
                    pass
            return [f"see the server log (id {error_id})"]
        if args:  # limit / chain given positionally: value and tb were too
            return original(exc, value, tb, *args, **kwargs)
        if value is not _SENTINEL:
            kwargs["value"] = value
        if tb is not _SENTINEL:
            kwargs["tb"] = tb
        return original(exc, **kwargs)

    format_exception._mosaicod_wire = True  # type: ignore[attr-defined]
    format_exception.__wrapped__ = original  # type: ignore[attr-defined]
    traceback.format_exception = format_exception
