"""``api_key_t``: the key store (owner of the table; docs/operations.md#api-keys).

Keys are created, listed, inspected, revoked and purged here; only ``apikey.hash_payload`` of the
secret is stored.  ``find`` serves the per-call check in ``mosaicod/auth.py``.
"""

from __future__ import annotations

import time
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .. import logs
from ..apikey import ApiKeyInfo, format_permissions, format_time, generate_key, hash_payload
from ..errors import bad_request, internal, not_found
from ..permissions import Permission
from .tables import api_key_t

log = logs.get(__name__)


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


def find(engine: Engine, fingerprint: str) -> tuple[bytes, ApiKeyInfo] | None:
    """(stored payload hash, info) of the key with this fingerprint, or None."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(api_key_t.c.payload_hash, *_INFO_COLUMNS).where(
            api_key_t.c.fingerprint == fingerprint)).first()
    return None if row is None else (bytes(row.payload_hash), ApiKeyInfo.from_row(row))
