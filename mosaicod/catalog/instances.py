"""``instance_registry_t``: the mosaicod processes running on this catalog (owner of the table).

The liveness rule (alive / stale / dead from the heartbeat age) is in ``mosaicod/registry.py``.
"""

from __future__ import annotations

from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from .tables import instance_registry_t


def register(engine: Engine, *, kind: str, hostname: str, pid: int, now: int, one_shot: bool,
             address: str | None) -> int:
    with engine.begin() as conn:
        return conn.execute(sa.insert(instance_registry_t).values(
            kind=kind, hostname=hostname, pid=pid, started_unix_tstamp_secs=now,
            last_heartbeat_unix_tstamp_secs=now, one_shot=one_shot, address=address)
            .returning(instance_registry_t.c.instance_id)).scalar_one()


def heartbeat(engine: Engine, instance_id: int, now: int, purge_before: int) -> bool:
    """Refresh one row and purge rows whose heartbeat is older than ``purge_before``; False when
    the row is gone (purged while we could not reach the catalog)."""
    with engine.begin() as conn:
        updated = conn.execute(sa.update(instance_registry_t).where(instance_registry_t.c.instance_id == instance_id)
                               .values(last_heartbeat_unix_tstamp_secs=now)).rowcount
        conn.execute(sa.delete(instance_registry_t).where(instance_registry_t.c.last_heartbeat_unix_tstamp_secs < purge_before))
    return bool(updated)


def deregister(engine: Engine, instance_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(instance_registry_t).where(instance_registry_t.c.instance_id == instance_id))


def all_instances(engine: Engine) -> list[RowMapping]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(instance_registry_t).order_by(instance_registry_t.c.kind, instance_registry_t.c.instance_id)).mappings())


def of_kinds(conn: Connection, kinds: Iterable[str]) -> list[RowMapping]:
    """kind, hostname, pid and last heartbeat of the instances of these kinds."""
    return list(conn.execute(sa.select(instance_registry_t.c.kind, instance_registry_t.c.hostname, instance_registry_t.c.pid, instance_registry_t.c.last_heartbeat_unix_tstamp_secs)
                             .where(instance_registry_t.c.kind.in_(list(kinds)))).mappings())
