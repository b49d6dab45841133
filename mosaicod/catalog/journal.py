"""Pending changes: how a change reaches the store before the catalog, and survives a crash.

A change that writes to the store (create, upload, finalize, delete) first records a row in
``pending_change_t`` (committed on its own), then writes the store, then applies the catalog
change and deletes the row in one transaction.  Clients never see the pending row; they see the
change only once the store holds everything a rebuild needs for it.  A crash leaves the row
behind, and the recovery (``mosaicod.recovery``) completes the change from what the store holds.

Each row names its owner: the server process that runs it.  A process holds a session-level
PostgreSQL advisory lock on its owner key for its whole life, so the owner of a row is alive
exactly while that lock is held: a killed process loses it with its connection, and a restarted
one can tell its predecessor's rows from the live rows of other servers.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.engine import Connection, Engine

from .. import errors, logs
from ..store import layout
from .tables import pending_change_t

log = logs.get(__name__)

OWNER_LOCK_CLASS = 0x6D6F  # first key of the two-key advisory locks held by live processes
KEEPALIVE_SECS = 5


class Owner:
    """This process's owner key, held as an advisory lock on a dedicated connection (re-taken
    after the database comes back)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.key = random.randint(1, 2**31 - 1)
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Owner":
        self._take()
        self._thread = threading.Thread(target=self._keepalive, name="owner-lock", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=KEEPALIVE_SECS + 1)
        with self._lock:
            self._drop()

    def _take(self) -> None:
        with self._lock:
            self._drop()
            conn = self.engine.connect()
            conn.execute(sa.text("SELECT pg_advisory_lock(:c, :k)"), {"c": OWNER_LOCK_CLASS, "k": self.key})
            conn.commit()
            self._conn = conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()  # closing the session releases the lock
                self._conn.close()
            except Exception:  # noqa: BLE001 - the connection is gone anyway
                pass
            self._conn = None

    def _keepalive(self) -> None:
        while not self._stop.wait(KEEPALIVE_SECS):
            try:
                with self._lock:
                    if self._conn is None:
                        raise RuntimeError("no connection")
                    self._conn.execute(sa.text("SELECT 1"))
                    self._conn.commit()
            except Exception as exc:  # noqa: BLE001 - database restarted: take the lock again
                log.warning("owner lock lost; taking it again", error=errors.first_line(exc))
                try:
                    self._take()
                except Exception as exc2:  # noqa: BLE001
                    log.warning("owner lock not taken yet", error=errors.first_line(exc2))


def live_owners(conn: Connection) -> set[int]:
    """Owner keys whose process is alive (holds its advisory lock) on this database."""
    rows = conn.execute(sa.text(
        "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = :c "
        "AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
        {"c": OWNER_LOCK_CLASS}).scalars()
    return {int(r) for r in rows}


# Recording statements with their check or lookup folded in (static text: prepared by psycopg
# after a few uses, nothing compiled per call).
_BEGIN_SEQUENCE_CREATE = """
INSERT INTO pending_change_t (owner, kind, target, created_unix_tstamp)
SELECT %(owner)s, 'sequence_create', %(target)s, %(at)s
WHERE NOT EXISTS (SELECT FROM sequence_t WHERE locator_name = %(locator)s)
RETURNING change_id
"""

# The document key is the sequence folder followed by ``layout.session_key("", locator)``.
_BEGIN_SESSION_CREATE = """
WITH q AS (SELECT sequence_id, path_in_store || %(suffix)s AS key FROM sequence_t WHERE locator_name = %(sequence)s),
rec AS (
  INSERT INTO pending_change_t (owner, kind, target, created_unix_tstamp)
  SELECT %(owner)s, 'session_create', jsonb_build_object('key', q.key, 'locator', %(locator)s::text), %(at)s FROM q
  RETURNING change_id)
SELECT rec.change_id, q.sequence_id, q.key FROM rec, q
"""


class Journal:
    """Records and clears pending changes (see the module docstring)."""

    def __init__(self, engine: Engine, owner_key: int):
        self.engine = engine
        self.owner_key = owner_key
        self.active_uploads: set[int] = set()  # change ids of this process's running DoPut streams

    def begin(self, kind: str, target: dict[str, Any], now_ns: int, conn: Connection | None = None) -> int:
        """Record a change about to be written to the store: committed at once, on its own (or
        with ``conn``'s transaction, which the caller commits before writing the store).

        On its own, the INSERT runs on an autocommit connection: PostgreSQL commits it (durably:
        synchronous commit) as its own transaction, in one round trip where BEGIN, INSERT and
        COMMIT took three (py-spy on a small sequence: its three journal records took 14 ms of wall time)."""
        if conn is None:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                return self.begin(kind, target, now_ns, c)
        return conn.execute(pending_change_t.insert().values(
            owner=self.owner_key, kind=kind, target=target, created_unix_tstamp=now_ns)
            .returning(pending_change_t.c.change_id)).scalar_one()

    def begin_sequence_create(self, target: dict[str, Any], locator: str, now_ns: int) -> int | None:
        """Record a ``sequence_create`` unless a sequence named ``locator`` exists (None then: the
        caller answers ALREADY_EXISTS before touching the store).  The check is the record's own
        statement (py-spy on small sequences: the separate existence query was a fifth of the
        action's catalog wait); the sequence row's unique name still decides a race."""
        row = self._record(_BEGIN_SEQUENCE_CREATE, {"target": Jsonb(target), "locator": locator}, now_ns)
        return None if row is None else row[0]

    def begin_session_create(self, sequence_locator: str, session_locator: str,
                             now_ns: int) -> tuple[int, int, str] | None:
        """Record a ``session_create`` in the sequence ``sequence_locator``, whose row gives the
        session document's key (``layout.session_key``): (change id, sequence id, key), or None if
        there is no such sequence.  The sequence lookup is the record's own statement (py-spy:
        a separate lookup was a fifth of the action's wall time)."""
        return self._record(_BEGIN_SESSION_CREATE, {"sequence": sequence_locator, "locator": session_locator,
                                                    "suffix": layout.session_key("", session_locator)}, now_ns)

    def _record(self, statement: str, params: dict[str, Any], now_ns: int) -> tuple | None:
        """Run one of the recording statements above on its own (autocommit, durable: see ``begin``)."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            row = c.exec_driver_sql(statement, {**params, "owner": self.owner_key, "at": now_ns}).first()
            return None if row is None else tuple(row)

    def forget(self, change_id: int) -> None:
        """Drop a change that was taken back (the catalog clears applied ones: ``repo._clear``)."""
        with self.engine.begin() as conn:
            conn.execute(pending_change_t.delete().where(pending_change_t.c.change_id == change_id))
