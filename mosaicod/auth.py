"""API keys: format, hashing, the key store in the catalog, and the Flight auth middleware.

Key text (PROTOCOL.md §2.2): ``msco_<payload>_<fingerprint>`` where the payload is 32 random
characters ``[a-z0-9]`` (~165 bits) and the fingerprint is the CRC-32 of the payload in 8 lowercase
hex digits.  The fingerprint is the public identifier of the key (shown by ``api-key list``,
used by ``status`` / ``revoke``); because it is a checksum of the payload, a mistyped key is
refused as malformed without touching the catalog.

Only a hash of the secret is stored (``api_key_t.payload_hash``): HMAC-SHA256 keyed with a fixed
domain-separation string over ``fingerprint:payload``.  The payload is uniformly random with far
more entropy than any password, so a fast cryptographic hash is as strong as a slow KDF here and
keeps verification cheap on every call.  Comparison is constant-time.  Neither the key nor its
payload is ever logged: logs name keys by fingerprint only.

Permissions are independent flags (``mosaicod.permissions.Permission``); this module only
decides *who* is calling (valid, unexpired, unrevoked key) and with which permissions — the
server checks the permission an RPC needs.
"""

from __future__ import annotations

import dataclasses
import hmac
import hashlib
import re
import secrets
import string
import time
import zlib
from datetime import datetime, timedelta, timezone

import pyarrow.flight as flight
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import errors, logs
from .catalog.tables import api_key_t
from .errors import MosaicoError, Kind, internal, not_found, bad_request, to_flight
from .errors import unauthorized as _unauthorized
from .permissions import Permission

log = logs.get(__name__)

HEADER = "mosaico-api-key-token"
PREFIX = "msco"
PAYLOAD_LEN = 32
FINGERPRINT_LEN = 8
_ALPHABET = string.ascii_lowercase + string.digits
_KEY_RE = re.compile(rf"^{PREFIX}_([a-z0-9]{{{PAYLOAD_LEN}}})_([a-z0-9]{{{FINGERPRINT_LEN}}})$")
_FINGERPRINT_RE = re.compile(rf"^[a-z0-9]{{{FINGERPRINT_LEN}}}$")
_HASH_KEY = b"mosaicod/api-key/v1"
KEY_SHAPE = f"{PREFIX}_<{PAYLOAD_LEN} lowercase letters or digits>_<{FINGERPRINT_LEN}-character fingerprint>"

PERMISSION_NAMES: dict[str, Permission] = {
    "read": Permission.READ,
    "write": Permission.WRITE,
    "delete": Permission.DELETE,
}


# --------------------------------------------------------------------------- key text


def fingerprint_of(payload: str) -> str:
    return format(zlib.crc32(payload.encode("ascii")), "08x")


def generate_key() -> tuple[str, str, str]:
    """A fresh key: (key text, payload, fingerprint)."""
    payload = "".join(secrets.choice(_ALPHABET) for _ in range(PAYLOAD_LEN))
    fp = fingerprint_of(payload)
    return f"{PREFIX}_{payload}_{fp}", payload, fp


def parse_key(text: str) -> tuple[str, str]:
    """Split a key into (payload, fingerprint); ValueError when it is not a well-formed key."""
    m = _KEY_RE.match(text or "")
    if m is None:
        raise ValueError(f"an API key looks like {KEY_SHAPE}")
    payload, fp = m.group(1), m.group(2)
    if not hmac.compare_digest(fingerprint_of(payload), fp):
        raise ValueError("the key's fingerprint does not match its payload (mistyped or truncated key?)")
    return payload, fp


def hash_payload(fingerprint: str, payload: str) -> bytes:
    return hmac.new(_HASH_KEY, f"{fingerprint}:{payload}".encode("ascii"), hashlib.sha256).digest()


def check_fingerprint(text: str) -> str:
    fp = (text or "").strip().lower()
    if _KEY_RE.match(fp):
        raise ValueError("give the key's 8-character fingerprint (its last part), not the whole key")
    if not _FINGERPRINT_RE.match(fp):
        raise ValueError(f"{text!r} is not a key fingerprint (8 lowercase letters or digits, "
                         "as shown by `mosaicod api-key list`)")
    return fp


# --------------------------------------------------------------------------- permissions / time


def parse_permissions(text: str) -> Permission:
    """``read,write`` / ``read|write|delete`` (any order, any combination) -> Permission flags."""
    perms = Permission.NONE
    parts = [p.strip().lower() for p in re.split(r"[,|]", text or "")]
    if not any(parts):
        raise ValueError("no permission given: use any combination of read, write, delete "
                         "(e.g. read,write)")
    for part in parts:
        if not part:
            raise ValueError(f"empty permission in {text!r}: use e.g. read,write")
        if part not in PERMISSION_NAMES:
            raise ValueError(f"unknown permission {part!r}: use any combination of read, write, delete")
        perms |= PERMISSION_NAMES[part]
    return perms


def format_permissions(perms: Permission | int) -> str:
    perms = Permission(perms)
    names = [name for name, flag in PERMISSION_NAMES.items() if flag in perms]
    return ",".join(names) if names else "none"


_DURATION_RE = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?)?$")


def parse_duration(text: str) -> timedelta:
    """ISO-8601 duration (``P30D``, ``PT1H``, ``P1DT12H``, ``P2W``); a year counts as 365 days and
    a month as 30 days."""
    raw = (text or "").strip().upper()
    m = _DURATION_RE.match(raw)
    if m is None or raw in ("P", "PT") or raw.endswith("T"):
        raise ValueError(f"{text!r} is not an ISO-8601 duration (examples: P30D, PT1H, P1DT12H, P2W)")
    g = {k: v for k, v in m.groupdict().items() if v is not None}
    delta = timedelta(
        days=int(g.get("years", 0)) * 365 + int(g.get("months", 0)) * 30
        + int(g.get("weeks", 0)) * 7 + int(g.get("days", 0)),
        hours=int(g.get("hours", 0)), minutes=int(g.get("minutes", 0)),
        seconds=float(g.get("seconds", "0").replace(",", ".")))
    if delta <= timedelta(0):
        raise ValueError(f"duration {text!r} must be longer than zero")
    return delta


def parse_rfc3339(text: str) -> datetime:
    """RFC 3339 date-time with an explicit offset, e.g. ``2030-01-31T12:00:00Z``."""
    raw = (text or "").strip()
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time (example: 2030-01-31T12:00:00Z)") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: add Z or +HH:MM (example: 2030-01-31T12:00:00Z)")
    return when


def format_time(unix_seconds: int | None) -> str:
    if unix_seconds is None:
        return "never"
    return datetime.fromtimestamp(unix_seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- key store


@dataclasses.dataclass(frozen=True)
class ApiKeyInfo:
    """What the catalog knows about a key (never the secret)."""

    fingerprint: str
    permissions: Permission
    description: str
    created_at: int  # unix seconds
    expires_at: int | None
    revoked_at: int | None

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    @classmethod
    def from_row(cls, row) -> "ApiKeyInfo":
        return cls(row.fingerprint, Permission(row.permissions), row.description,
                   row.creation_unix_timestamp, row.expiration_unix_timestamp,
                   row.revocation_unix_timestamp)


_INFO_COLUMNS = (api_key_t.c.fingerprint, api_key_t.c.permissions, api_key_t.c.description,
                 api_key_t.c.creation_unix_timestamp, api_key_t.c.expiration_unix_timestamp,
                 api_key_t.c.revocation_unix_timestamp)


def create_key(engine: Engine, permissions: Permission, description: str = "",
               expires_at: datetime | None = None) -> tuple[str, ApiKeyInfo]:
    """Mint a key; returns (key text, info).  The key text exists only in the return value."""
    if not isinstance(permissions, Permission) or permissions == Permission.NONE:
        raise bad_request("an API key needs at least one of the permissions read, write, delete")
    now = int(time.time())
    expires = None
    if expires_at is not None:
        expires = int(expires_at.timestamp())
        if expires <= now:
            raise bad_request(f"expiration {format_time(expires)} is not in the future")
    for _ in range(8):  # fingerprints are 32-bit checksums: retry on the rare collision
        key, payload, fp = generate_key()
        try:
            with engine.begin() as conn:
                conn.execute(api_key_t.insert().values(
                    fingerprint=fp, payload_hash=hash_payload(fp, payload),
                    permissions=int(permissions), description=description or "",
                    creation_unix_timestamp=now, expiration_unix_timestamp=expires,
                    revocation_unix_timestamp=None))
        except sa.exc.IntegrityError:
            continue
        log.info("api key created", fingerprint=fp, permissions=format_permissions(permissions),
                 expires=format_time(expires))
        return key, ApiKeyInfo(fp, permissions, description or "", now, expires, None)
    raise internal("could not allocate a unique API key fingerprint")


def list_keys(engine: Engine) -> list[ApiKeyInfo]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*_INFO_COLUMNS).order_by(
            api_key_t.c.creation_unix_timestamp, api_key_t.c.fingerprint)).all()
    return [ApiKeyInfo.from_row(r) for r in rows]


def key_status(engine: Engine, fingerprint: str) -> ApiKeyInfo:
    with engine.connect() as conn:
        row = conn.execute(sa.select(*_INFO_COLUMNS).where(
            api_key_t.c.fingerprint == fingerprint)).first()
    if row is None:
        raise not_found(f"API key `{fingerprint}`")
    return ApiKeyInfo.from_row(row)


def revoke_key(engine: Engine, fingerprint: str) -> ApiKeyInfo:
    """Revoke a key (idempotent: an already revoked key keeps its first revocation time)."""
    now = int(time.time())
    with engine.begin() as conn:
        conn.execute(api_key_t.update().where(
            (api_key_t.c.fingerprint == fingerprint)
            & api_key_t.c.revocation_unix_timestamp.is_(None)).values(revocation_unix_timestamp=now))
    info = key_status(engine, fingerprint)
    log.info("api key revoked", fingerprint=fingerprint)
    return info


def purge_keys(engine: Engine, all_keys: bool = False) -> list[str]:
    """Delete keys that can no longer be used (expired or revoked), or every key with all_keys.
    Returns the purged fingerprints."""
    stmt = api_key_t.delete()
    if not all_keys:
        now = int(time.time())
        stmt = stmt.where(api_key_t.c.revocation_unix_timestamp.is_not(None)
                          | (api_key_t.c.expiration_unix_timestamp <= now))
    with engine.begin() as conn:
        gone = [r.fingerprint for r in conn.execute(stmt.returning(api_key_t.c.fingerprint))]
    if gone:
        log.info("api keys purged", count=len(gone), all=all_keys)
    return sorted(gone)


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
        with engine.connect() as conn:
            row = conn.execute(sa.select(api_key_t.c.payload_hash, *_INFO_COLUMNS).where(
                api_key_t.c.fingerprint == fp)).first()
    except sa.exc.SQLAlchemyError as exc:
        log.error("api key lookup failed", fingerprint=fp, error=errors.first_line(exc))
        raise internal("cannot check the API key: catalog unavailable") from None
    # unknown fingerprint and wrong secret look the same to the caller
    if row is None or not hmac.compare_digest(bytes(row.payload_hash), hash_payload(fp, payload)):
        raise unauthorized("API key does not exist")
    info = ApiKeyInfo.from_row(row)
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
