"""``topic_optimization_t``: the store optimizer's queue and leases, and the one transaction that
switches a topic to its rewritten folder (docs/operations.md#store-optimizer)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine, RowMapping

from .locks import OPTIMIZER_LEASE_CLASS
from .repo import insert_chunk_rows
from .tables import chunk_t, topic_t
from .tables import topic_optimization_t as queue_t


class LeaseLost(Exception):
    """The topic changed under us (deleted, or switched by someone else): nothing committed."""


def enqueue(engine: Engine) -> int:
    """Queue every finalized topic with data that is not optimized yet; returns how many."""
    pending = (sa.select(topic_t.c.topic_id)
               .where(topic_t.c.completion_unix_tstamp.is_not(None),
                      topic_t.c.optimization_end_unix_tstamp.is_(None),
                      topic_t.c.path_in_store.is_not(None)))
    with engine.begin() as conn:
        return conn.execute(pg_insert(queue_t).from_select(["topic_id"], pending)
                            .on_conflict_do_nothing()).rowcount


class Lease:
    """A leased queue row; ``conn`` holds the advisory lock until ``release()``."""

    def __init__(self, conn: Connection, topic_id: int, folder: str, previous: str | None):
        self.conn = conn
        self.topic_id = topic_id
        self.folder = folder
        self.previous = previous  # a dead holder's half-written folder, if any

    def release(self) -> None:
        try:
            self.conn.execute(sa.select(sa.func.pg_advisory_unlock(OPTIMIZER_LEASE_CLASS, self.topic_id)))
            self.conn.commit()
        except Exception:
            self.conn.invalidate()  # a broken connection drops its session locks anyway
        finally:
            self.conn.close()


def take_lease(engine: Engine, new_folder: Callable[[], str]) -> Lease | None:
    """Lease the first queued topic no live process is rewriting, recording ``new_folder()`` as
    its rewrite folder before anything is written there; None when the queue has nothing free."""
    conn = engine.connect()
    try:
        tried: list[int] = []
        while True:
            with conn.begin():
                pick = (sa.select(queue_t.c.topic_id, queue_t.c.opt_path_in_store).order_by(queue_t.c.topic_id).limit(1)
                        .with_for_update(skip_locked=True))
                if tried:
                    pick = pick.where(queue_t.c.topic_id.not_in(tried))
                row = conn.execute(pick).first()
                if row is None:
                    break
                got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(
                    OPTIMIZER_LEASE_CLASS, row.topic_id))).scalar_one()
                if not got:  # a live holder is rewriting it
                    tried.append(row.topic_id)
                    continue
                folder = new_folder()
                conn.execute(queue_t.update().where(queue_t.c.topic_id == row.topic_id)
                             .values(start_unix_tstamp=time.time_ns(), opt_path_in_store=folder))
            return Lease(conn, row.topic_id, folder, row.opt_path_in_store)
        conn.close()
        return None
    except Exception:
        conn.invalidate()
        conn.close()
        raise


def drop(engine: Engine, topic_id: int) -> None:
    """Remove a topic from the queue (a failed rewrite is queued again by the next pass)."""
    with engine.begin() as conn:
        conn.execute(queue_t.delete().where(queue_t.c.topic_id == topic_id))


def topic_row(engine: Engine, topic_id: int) -> RowMapping | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(topic_t).where(topic_t.c.topic_id == topic_id)).mappings().first()


def flag_optimized(engine: Engine, topic_id: int, now_ns: int) -> None:
    """Mark a topic optimized without rewriting it, and dequeue it."""
    with engine.begin() as conn:
        conn.execute(topic_t.update().where(topic_t.c.topic_id == topic_id)
                     .values(optimization_end_unix_tstamp=now_ns))
        conn.execute(queue_t.delete().where(queue_t.c.topic_id == topic_id))


def switch(engine: Engine, lease: Lease, *, old_folder: str, ontology_tag: str, chunks: Sequence,
           now_ns: int) -> None:
    """In one transaction: check that the topic still uses ``old_folder`` and that the lease is
    still ours (else LeaseLost), replace its chunk rows by ``chunks`` (``ChunkInfo``), point it at
    the lease's folder, flag it optimized and dequeue it."""
    with engine.begin() as conn:
        cur = conn.execute(sa.select(topic_t.c.path_in_store).where(topic_t.c.topic_id == lease.topic_id)
                           .with_for_update()).first()
        if cur is None or cur.path_in_store != old_folder:
            raise LeaseLost("the topic was deleted or changed during the rewrite")
        mine = conn.execute(sa.select(queue_t.c.opt_path_in_store).where(queue_t.c.topic_id == lease.topic_id)
                            .with_for_update()).first()
        if mine is None or mine.opt_path_in_store != lease.folder:
            raise LeaseLost("the optimization lease was taken over")
        conn.execute(chunk_t.delete().where(chunk_t.c.topic_id == lease.topic_id))
        for c in chunks:
            insert_chunk_rows(conn, topic_id=lease.topic_id, ontology_tag=ontology_tag,
                              data_file=c.data_file, size_bytes=c.size_bytes, stats=c.stats)
        conn.execute(topic_t.update().where(topic_t.c.topic_id == lease.topic_id)
                     .values(path_in_store=lease.folder, optimization_end_unix_tstamp=now_ns))
        conn.execute(queue_t.delete().where(queue_t.c.topic_id == lease.topic_id))
