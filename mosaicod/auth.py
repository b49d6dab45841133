"""Who is calling: the per-call API-key check and the Flight middleware that runs it before any
endpoint (docs/operations.md#api-keys).

This module only decides *who* is calling (a valid, unexpired, unrevoked key) and with which
permissions; the server checks the permission each RPC needs (``mosaicod.permissions``).  Key text
and hashing are in ``mosaicod/apikey.py``, the key store in ``mosaicod/catalog/keys.py``.
"""

from __future__ import annotations

import hmac

import pyarrow.flight as flight
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import errors, logs
from .apikey import ApiKeyInfo, format_time, hash_payload, parse_key
from .catalog import keys
from .errors import Kind, MosaicoError, internal, to_flight
from .errors import unauthorized as _unauthorized
from .permissions import Permission

log = logs.get(__name__)

HEADER = "mosaico-api-key-token"


def verify_key(engine: Engine, token: str | None, call: str | None = None) -> ApiKeyInfo:
    """Check a presented key; raise MosaicoError(UNAUTHORIZED) unless it is usable right now.
    ``call`` (e.g. ``DoGet``) is named in the refusal."""

    def unauthorized(detail: str) -> MosaicoError:
        return _unauthorized(f"{detail}; {call} call refused" if call else detail)

    if not token:
        raise unauthorized(f"Missing API key in request header `{HEADER}`: pass api_key= to "
                           "MosaicoClient.connect")
    try:
        payload, fp = parse_key(token)
    except ValueError as exc:
        raise unauthorized(f"malformed API key ({exc})") from None
    try:
        found = keys.find(engine, fp)
    except sa.exc.SQLAlchemyError as exc:
        log.error("api key lookup failed", fingerprint=fp, error=errors.first_line(exc))
        raise internal("cannot check the API key: catalog unavailable") from None
    # unknown fingerprint and wrong secret look the same to the caller
    if found is None or not hmac.compare_digest(found[0], hash_payload(fp, payload)):
        raise unauthorized("API key does not exist")
    info = found[1]
    state = info.state()
    if state == "revoked":
        raise unauthorized(f"API key {fp} was revoked at {format_time(info.revoked_at)}")
    if state == "expired":
        raise unauthorized(f"API key {fp} is expired (since {format_time(info.expires_at)})")
    return info


# --------------------------------------------------------------------------- Flight middleware


class AuthMiddleware(flight.ServerMiddleware):
    """Per-call record of who is calling: ``permissions`` and ``fingerprint`` of the key."""

    def __init__(self, info: ApiKeyInfo):
        super().__init__()
        self.info = info
        self.fingerprint = info.fingerprint
        self.permissions: Permission = info.permissions


def _header(headers: dict, name: str) -> str | None:
    values = headers.get(name) or []
    if not values:
        return None
    value = values[0]
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return "\x00"  # not ASCII: certainly malformed
    return value.strip()


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Refuses every call without a usable API key before any endpoint runs.

    No caching: each call looks its key up by primary key, so a revocation (from the CLI in
    another process) or an expiry takes effect on the very next call.
    """

    def __init__(self, engine: Engine):
        super().__init__()
        self.engine = engine

    def start_call(self, info, headers):
        token = _header(headers, HEADER)
        call = _call_name(info)
        try:
            key = verify_key(self.engine, token, call)
        except MosaicoError as err:
            if err.kind is Kind.UNAUTHORIZED:
                fp = None
                try:
                    fp = parse_key(token or "")[1]
                except ValueError:
                    pass
                log.info("call refused", call=call, fingerprint=fp, reason=err.message)
            raise to_flight(err, call) from None
        return AuthMiddleware(key)


def _call_name(info) -> str:
    """FlightMethod.GET_FLIGHT_INFO -> GetFlightInfo."""
    try:
        return "".join(p.capitalize() for p in str(info.method.name).split("_"))
    except AttributeError:  # pragma: no cover
        return "RPC"
