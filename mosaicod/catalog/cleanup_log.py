"""``cleanup_log_t``: one row per cleanup run (owner of the table), and the folders the catalog
references, which a cleanup run must keep (docs/operations.md#cleanup)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine, RowMapping

from .locks import CLEANUP_LOCK_KEY
from .tables import (cleanup_log_t, instance_registry_t, pending_change_t, sequence_t, topic_optimization_t,
                     topic_t)


def begin_run(engine: Engine, now: int, time_interval: int, instance_id: int | None) -> int | None:
    """Record a run starting ``now`` and return its id, or None when another run started within
    the last ``time_interval`` seconds.  Check and insert happen under the cleanup advisory lock,
    in one transaction, so concurrent cleanup processes start at most one run per interval."""
    with engine.begin() as conn:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(CLEANUP_LOCK_KEY)))
        recent = sa.exists().where(cleanup_log_t.c.start_unix_tstamp_secs > now - time_interval)
        return conn.execute(
            sa.insert(cleanup_log_t).from_select(
                ["start_unix_tstamp_secs", "marked_folders", "deleted_folders", "failed_folders",
                 "instance_id"],
                sa.select(sa.literal(now, sa.BigInteger), _empty_list(), _empty_list(), _empty_list(),
                          sa.literal(instance_id, sa.Integer)).where(~recent))
            .returning(cleanup_log_t.c.cleanup_id)).scalar()


def _empty_list():
    return sa.cast(sa.literal("[]"), cleanup_log_t.c.marked_folders.type)


def finish_run(engine: Engine, cleanup_id: int, *, end: int, marked: list, deleted: list,
               failed: list) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(cleanup_log_t).where(cleanup_log_t.c.cleanup_id == cleanup_id)
                     .values(end_unix_tstamp_secs=end, marked_folders=marked, deleted_folders=deleted,
                             failed_folders=failed))


def latest_run(engine: Engine) -> RowMapping | None:
    """The latest run with the last heartbeat of the instance that ran it (None if it is gone)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(cleanup_log_t, instance_registry_t.c.last_heartbeat_unix_tstamp_secs)
            .select_from(cleanup_log_t.outerjoin(
                instance_registry_t, cleanup_log_t.c.instance_id == instance_registry_t.c.instance_id))
            .order_by(cleanup_log_t.c.cleanup_id.desc()).limit(1)).mappings().first()


def referenced_folders(engine: Engine) -> set[str]:
    """Every store folder the catalog points at: sequences, uploaded topics, optimizer rewrites,
    and the folders of pending changes (written to the store before the catalog knows them)."""
    pending = pending_change_t.c.target["folder"].astext
    q = sa.union(sa.select(sequence_t.c.path_in_store),
                 sa.select(topic_t.c.path_in_store).where(topic_t.c.path_in_store.is_not(None)),
                 sa.select(topic_optimization_t.c.opt_path_in_store)
                 .where(topic_optimization_t.c.opt_path_in_store.is_not(None)),
                 sa.select(pending).where(pending.is_not(None)))
    with engine.connect() as conn:
        return set(conn.execute(q).scalars())
