"""``instance_registry_t``: the mosaicod processes running on this catalog (owner of the table).

The liveness rule (alive / stale / dead from the heartbeat age) is in ``mosaicod/registry.py``.
"""

from __future__ import annotations

from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from .tables import instance_registry_t as t


def register(engine: Engine, *, kind: str, hostname: str, pid: int, now: int, one_shot: bool,
             address: str | None) -> int:
    with engine.begin() as conn:
        return conn.execute(sa.insert(t).values(
            kind=kind, hostname=hostname, pid=pid, started_unix_tstamp_secs=now,
            last_heartbeat_unix_tstamp_secs=now, one_shot=one_shot, address=address)
            .returning(t.c.instance_id)).scalar_one()


def heartbeat(engine: Engine, instance_id: int, now: int, purge_before: int) -> bool:
    """Refresh one row and purge rows whose heartbeat is older than ``purge_before``; False when
    the row is gone (purged while we could not reach the catalog)."""
    with engine.begin() as conn:
        updated = conn.execute(sa.update(t).where(t.c.instance_id == instance_id)
                               .values(last_heartbeat_unix_tstamp_secs=now)).rowcount
        conn.execute(sa.delete(t).where(t.c.last_heartbeat_unix_tstamp_secs < purge_before))
    return bool(updated)


def deregister(engine: Engine, instance_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(t).where(t.c.instance_id == instance_id))


def all_instances(engine: Engine) -> list[RowMapping]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(t).order_by(t.c.kind, t.c.instance_id)).mappings())


def of_kinds(conn: Connection, kinds: Iterable[str]) -> list[RowMapping]:
    """kind, hostname, pid and last heartbeat of the instances of these kinds."""
    return list(conn.execute(sa.select(t.c.kind, t.c.hostname, t.c.pid, t.c.last_heartbeat_unix_tstamp_secs)
                             .where(t.c.kind.in_(list(kinds)))).mappings())
