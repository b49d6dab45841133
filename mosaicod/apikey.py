"""API keys as text: format, fingerprint, hash, permissions, and what the catalog knows of a key
(docs/operations.md#api-keys).

A key is ``msco_<payload>_<fingerprint>``: the payload is 32 random characters ``[a-z0-9]`` (~165
bits) and the fingerprint the CRC-32 of the payload in 8 lowercase hex digits.  The fingerprint is
the public name of the key (shown by ``api-key list``, used by ``status`` / ``revoke``); being a
checksum of the payload, it lets a mistyped key be refused as malformed without a catalog lookup.

Only a hash of the secret is stored: HMAC-SHA256 keyed with a fixed domain-separation string over
``fingerprint:payload``.  The payload is uniformly random with far more entropy than any password,
so a fast cryptographic hash is as strong as a slow KDF here and keeps verification cheap on every
call.  Neither the key nor its payload is ever logged: logs name keys by fingerprint only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import string
import time
import zlib
from datetime import datetime, timezone

from .permissions import Permission

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


def format_time(unix_seconds: int | None) -> str:
    if unix_seconds is None:
        return "never"
    return datetime.fromtimestamp(unix_seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
