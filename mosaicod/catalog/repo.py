"""The data catalog: sequences, sessions, topics, chunks with their column statistics, and
notifications (owner of those tables; docs/storage.md#who-owns-each-table).

Every state change is one transaction: a crash never leaves a half-created resource behind.
Callers get plain row mappings back.

Round trips: single-statement reads run in autocommit (no BEGIN/ROLLBACK).  The steps of a writing
session (sequence, session and topic creation, an upload's folder, chunk rows, topic
finalization) commit without waiting for PostgreSQL's WAL flush (``synchronous_commit = off``
for that transaction; a flush costs 2-5 ms per commit on a busy disk and a small sequence makes
about ten).  ``finalize_session`` records its pending change synchronously before writing the
store, which flushes every earlier commit: once a client has its session finalized, all of its
catalog rows are on disk, and so is the pending finalization, which the recovery applies from the
store's completed session document should its own commit (not waited for either) be lost.  A
crash can lose the last fraction of a second of unflushed steps of unfinished sessions, never a
finalized one: the client of such a session gets an error on its next call, and what it left in
the store is recovered or swept like any interrupted upload.  Claims, interruptions, deletions and
everything else commit synchronously.
"""

from __future__ import annotations

import contextlib
import functools
import uuid as uuidlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import psycopg
import sqlalchemy as sa
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine, RowMapping

from .. import errors
from ..store.stats import ChunkStats
from .tables import (chunk_overlaps, chunk_t, column_t,
                     pending_change_t, sequence_notification_t, sequence_t, session_t, topic_notification_t,
                     topic_t)

# A store step run inside a catalog transaction, after its checks and before its commit: it writes
# the store and returns the id of the pending change to clear with the commit (or None).
StoreStep = Callable[..., "int | None"]


def _clear(conn: Connection, change_id: int | None) -> None:
    """Clear a pending change (catalog/journal.py) in the transaction that applies it."""
    if change_id is not None:
        conn.execute(pending_change_t.delete().where(pending_change_t.c.change_id == change_id))


_ASYNC_COMMIT_LOCAL = "SET LOCAL synchronous_commit TO off"

# A session step of one statement runs in autocommit and sets ``synchronous_commit = off`` itself,
# local to its own transaction: one round trip where BEGIN, the statement and COMMIT took three
# (py-spy on a small sequence: the BEGIN and COMMIT round trips of its eight one-statement steps
# took 13 ms of its wall time, 60% of these steps').  The setting is a filter of the
# statement, evaluated with each row it writes (a volatile function is never folded away): a
# statement that writes nothing commits nothing.
_ASYNC_COMMIT_SQL = "set_config('synchronous_commit', 'off', true) IS NOT NULL"
_ASYNC_COMMIT = sa.text(_ASYNC_COMMIT_SQL)


# A sequence, and a session of a sequence, created (one-statement session steps, with their
# pending change, if any, cleared).  Static text: prepared by psycopg after a few uses, nothing
# built or compiled per call (py-spy: building the SQLAlchemy statement with its clearing CTE and
# its cache key took ~0.2 ms per call).
_INSERT_SEQUENCE = """
WITH cleared AS (DELETE FROM pending_change_t WHERE change_id = %(change)s)
INSERT INTO sequence_t (sequence_uuid, locator_name, user_metadata, path_in_store, creation_unix_tstamp)
SELECT %(uuid)s, %(locator)s, %(md)s, %(folder)s, %(at)s WHERE {async_commit}
RETURNING sequence_id
""".format(async_commit=_ASYNC_COMMIT_SQL)

_INSERT_SESSION = """
WITH cleared AS (DELETE FROM pending_change_t WHERE change_id = %(change)s)
INSERT INTO session_t (session_uuid, locator_name, sequence_id, creation_unix_tstamp)
SELECT %(uuid)s, %(locator)s, %(sequence)s, %(at)s WHERE {async_commit}
""".format(async_commit=_ASYNC_COMMIT_SQL)

# A topic created in its session, which must exist, be open and belong to the topic's sequence:
# the session row is locked (a concurrent finalization waits, or makes this insert nothing).
_INSERT_TOPIC = """
INSERT INTO topic_t (topic_uuid, sequence_id, session_id, locator_name, user_metadata, serialization_format,
                     ontology_tag, creation_unix_tstamp)
SELECT %(uuid)s, s.sequence_id, s.session_id, %(locator)s, %(md)s, %(fmt)s, %(tag)s, %(at)s
FROM session_t s JOIN sequence_t q ON q.sequence_id = s.sequence_id
WHERE s.session_uuid = %(session)s AND s.completion_unix_tstamp IS NULL AND q.locator_name = %(sequence)s
  AND {async_commit}
FOR UPDATE OF s
RETURNING topic_id
""".format(async_commit=_ASYNC_COMMIT_SQL)

# A topic completed: completion time and exact timestamp range from its chunk rows, its pending
# change (if any) cleared.  Static text in two variants (with and without a pending change):
# prepared by psycopg after a few uses, planned once per connection instead of once per upload.
_FINALIZE_TOPIC = """
WITH {cleared}r AS (SELECT min(start_timestamp_ns) AS lo, max(end_timestamp_ns) AS hi FROM chunk_t
                    WHERE topic_id = %(topic)s)
UPDATE topic_t SET completion_unix_tstamp = %(at)s, start_index_timestamp = r.lo, end_index_timestamp = r.hi
FROM r WHERE topic_id = %(topic)s
"""
_FINALIZE_TOPIC_ONLY = _FINALIZE_TOPIC.format(cleared="")
_FINALIZE_TOPIC_CLEARING = _FINALIZE_TOPIC.format(
    cleared="cleared AS (DELETE FROM pending_change_t WHERE change_id = %(change)s),\n")


def _finalize_topic(topic_id: int, completed_at_ns: int, change_id: int | None) -> tuple[str, dict[str, int]]:
    """The statement finalizing a topic, and its parameters."""
    params = {"topic": topic_id, "at": completed_at_ns}
    if change_id is None:
        return _FINALIZE_TOPIC_ONLY, params
    return _FINALIZE_TOPIC_CLEARING, {**params, "change": change_id}


# A claimed topic gets its folder and schema (a one-statement session step, ``_ASYNC_COMMIT``).
# Static text, straight to the driver: no statement built and compiled per upload (CPU 0.28 ->
# 0.14 ms per call, measured in-process), prepared by psycopg after a few uses.
_SET_UPLOAD_FOLDER = f"""
UPDATE topic_t SET path_in_store = %(folder)s, arrow_schema = %(schema)s
WHERE topic_id = %(topic)s AND {_ASYNC_COMMIT_SQL}
"""

# The lock a DoPut claim takes on its topic row (``Catalog.claim_upload``).
_LOCK_TOPIC = "SELECT 1 FROM topic_t WHERE locator_name = %(locator)s FOR UPDATE"

# A session locked for its finalization, then its topics (ordered by id), sent pipelined with the
# BEGIN: one round trip.
_LOCK_SESSION = """
SELECT s.*, q.locator_name AS sequence_locator, q.path_in_store AS sequence_folder
FROM session_t s JOIN sequence_t q ON q.sequence_id = s.sequence_id
WHERE s.session_uuid = %(uuid)s FOR UPDATE OF s
"""
_LOCK_SESSION_TOPICS = """
SELECT topic_id, locator_name, path_in_store, completion_unix_tstamp, interrupted_unix_tstamp FROM topic_t
WHERE session_id = (SELECT session_id FROM session_t WHERE session_uuid = %(uuid)s) ORDER BY topic_id FOR UPDATE
"""

# A session finalized, its pending change (if any) cleared (two static variants, like _FINALIZE_TOPIC).
_COMPLETE_SESSION = "{cleared}UPDATE session_t SET completion_unix_tstamp = %(at)s WHERE session_id = %(session)s"
_COMPLETE_SESSION_ONLY = _COMPLETE_SESSION.format(cleared="")
_COMPLETE_SESSION_CLEARING = _COMPLETE_SESSION.format(
    cleared="WITH cleared AS (DELETE FROM pending_change_t WHERE change_id = %(change)s)\n")


def _complete_session(session_id: int, interrupted: Sequence[int], completed_at_ns: int,
                      change_id: int | None) -> list[tuple[str, dict[str, int]]]:
    """The statements finalizing a session and its interrupted topics (an interrupted upload is
    finalized with what it received), clearing the pending change ``change_id``; with their
    parameters."""
    params = {"session": session_id, "at": completed_at_ns}
    session = ((_COMPLETE_SESSION_ONLY, params) if change_id is None
               else (_COMPLETE_SESSION_CLEARING, {**params, "change": change_id}))
    return [*(_finalize_topic(t, completed_at_ns, None) for t in interrupted), session]


def _wrapped(exc: Exception, statement: str) -> Exception:
    """A driver error raised outside SQLAlchemy's execution, as SQLAlchemy raises it (an
    ``OperationalError`` for a lost connection, ...)."""
    if isinstance(exc, psycopg.Error):
        return sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error)
    return exc


def _pipelined(conn: Connection, statements: Sequence[tuple[str, dict[str, Any] | None]]) -> list[psycopg.Cursor]:
    """Run (SQL, parameters) pairs straight on the driver connection of ``conn``, pipelined
    (psycopg pipeline mode): they go out together and come back in one round trip.  Returns one
    cursor per statement (rows as dicts).  If a statement fails, the server skips the rest up to
    the pipeline's end (a COMMIT among them included); the connection, its transaction aborted,
    is dropped and the error raised as SQLAlchemy raises it."""
    driver = conn.connection.driver_connection
    try:
        if len(statements) == 1:  # one round trip anyway: no pipeline mode (~30 us of CPU)
            return [driver.cursor(row_factory=dict_row).execute(*statements[0])]
        with driver.pipeline():
            return [driver.cursor(row_factory=dict_row).execute(sql, params) for sql, params in statements]
    except Exception as exc:
        conn.invalidate()
        shown = next((sql for sql, _ in statements if sql not in ("BEGIN", "COMMIT", _ASYNC_COMMIT_LOCAL)), "COMMIT")
        raise _wrapped(exc, shown) from None


def _unique_violation(exc: sa.exc.IntegrityError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "23505"


def column_ids(conn: Connection, ontology_tag: str, names: Iterable[str]) -> dict[str, int]:
    """``column_t`` ids of these columns of a tag, creating the missing rows.

    Never cached across transactions: ``rebuild-catalog`` may truncate ``column_t`` (restarting
    its ids) while a server runs, and a remembered id would then name another column."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    found = _existing_column_ids(conn, ontology_tag, wanted)
    missing = [n for n in wanted if n not in found]
    if missing:
        conn.execute(pg_insert(column_t).values([{"column_name": n, "ontology_tag": ontology_tag}
                                                 for n in missing]).on_conflict_do_nothing())
        found.update(_existing_column_ids(conn, ontology_tag, missing))
    return found


def _existing_column_ids(conn: Connection, ontology_tag: str, names: list[str]) -> dict[str, int]:
    rows = conn.execute(sa.select(column_t.c.column_name, column_t.c.column_id)
                        .where(column_t.c.ontology_tag == ontology_tag, column_t.c.column_name.in_(names)))
    return {name: cid for name, cid in rows}


# One statement for a chunk row and its statistics rows, with the column ids looked up in the
# same statement, and the column rows that do not exist yet (the first chunk of a new ontology tag,
# or new columns) created by it: nothing to read back before the step commits, so the end of an
# upload sends it with the finalization in one round trip (``Catalog._pipelined_step``).  A
# column row that a concurrent upload creates meanwhile is taken (DO UPDATE returns the row the
# insert conflicts with; DO NOTHING would return nothing and its statistics would be lost).
# Static text: psycopg prepares it on a connection after a few uses, and nothing is compiled per call.
_INSERT_CHUNK = """
WITH have AS (
  SELECT column_id, column_name FROM column_t
  WHERE ontology_tag = %(tag)s AND column_name = ANY(%(names)s::text[])),
made AS (
  INSERT INTO column_t (column_name, ontology_tag)
  SELECT n, %(tag)s FROM unnest(%(names)s::text[]) AS n WHERE n NOT IN (SELECT column_name FROM have)
  ON CONFLICT (column_name, ontology_tag) DO UPDATE SET column_name = EXCLUDED.column_name
  RETURNING column_id, column_name),
cols AS (SELECT column_id, column_name FROM have UNION ALL SELECT column_id, column_name FROM made),
ch AS (
  INSERT INTO chunk_t (chunk_uuid, topic_id, data_file, size_bytes, row_count, arrow_size_bytes,
                       start_timestamp_ns, end_timestamp_ns, timestamp_order)
  VALUES (%(uuid)s, %(topic_id)s, %(data_file)s, %(size_bytes)s, %(row_count)s, %(arrow_size_bytes)s,
          %(ts_min)s, %(ts_max)s, %(ts_order)s)
  RETURNING chunk_id),
num AS (
  INSERT INTO column_chunk_numeric_t (column_id, chunk_id, min_value, max_value, has_null, has_nan)
  SELECT cols.column_id, ch.chunk_id, s.lo, s.hi, s.has_null, s.has_nan
  FROM unnest(%(n_name)s::text[], %(n_lo)s::float8[], %(n_hi)s::float8[], %(n_null)s::bool[],
              %(n_nan)s::bool[]) AS s(name, lo, hi, has_null, has_nan)
  JOIN cols ON cols.column_name = s.name CROSS JOIN ch),
txt AS (
  INSERT INTO column_chunk_textual_t (column_id, chunk_id, min_value, max_value, has_null)
  SELECT cols.column_id, ch.chunk_id, s.lo, s.hi, s.has_null
  FROM unnest(%(t_name)s::text[], %(t_lo)s::text[], %(t_hi)s::text[], %(t_null)s::bool[])
       AS s(name, lo, hi, has_null)
  JOIN cols ON cols.column_name = s.name CROSS JOIN ch)
SELECT chunk_id FROM ch
"""


def _chunk_params(*, topic_id: int, ontology_tag: str, data_file: str, size_bytes: int,
                  stats: ChunkStats) -> dict[str, Any]:
    """The parameters of ``_INSERT_CHUNK``."""
    rows = {name: cs.row() for name, cs in stats.items()}
    numeric = [n for n, cs in stats.items() if cs.kind == "numeric"]
    textual = [n for n, cs in stats.items() if cs.kind != "numeric"]
    return {
        "uuid": uuidlib.uuid4(), "topic_id": topic_id, "data_file": data_file, "size_bytes": size_bytes,
        "row_count": stats.row_count, "arrow_size_bytes": stats.arrow_size_bytes,
        "ts_min": stats.ts_min, "ts_max": stats.ts_max, "ts_order": stats.ts_order,
        "tag": ontology_tag, "names": list(rows),
        "n_name": numeric, "n_lo": [float(rows[n]["min_value"]) for n in numeric],
        "n_hi": [float(rows[n]["max_value"]) for n in numeric],
        "n_null": [rows[n]["has_null"] for n in numeric], "n_nan": [rows[n]["has_nan"] for n in numeric],
        "t_name": textual, "t_lo": [rows[n]["min_value"] for n in textual],
        "t_hi": [rows[n]["max_value"] for n in textual], "t_null": [rows[n]["has_null"] for n in textual],
    }


def insert_chunk_rows(conn: Connection, *, topic_id: int, ontology_tag: str, data_file: str,
                      size_bytes: int, stats: ChunkStats) -> int:
    """One ``chunk_t`` row and its statistics rows (and the tag's missing column rows), in the
    caller's transaction: one statement."""
    return conn.exec_driver_sql(_INSERT_CHUNK, _chunk_params(
        topic_id=topic_id, ontology_tag=ontology_tag, data_file=data_file, size_bytes=size_bytes,
        stats=stats)).scalar_one()


def count_open_sessions(engine: Engine, timeout_ms: int = 2000) -> int:
    """Sessions created and not finalized, in the whole catalog (bounded by ``timeout_ms``)."""
    with engine.begin() as conn:
        conn.execute(sa.select(sa.func.set_config("statement_timeout", str(int(timeout_ms)), True)))
        return conn.execute(sa.select(sa.func.count()).select_from(session_t)
                            .where(session_t.c.completion_unix_tstamp.is_(None))).scalar_one()


class _DriverTx:
    """A transaction run on the driver connection of ``conn`` (``Catalog._transaction``)."""

    def __init__(self, conn: Connection, opened: list[psycopg.Cursor]):
        self.conn = conn
        self.opened = opened  # the cursors of its opening statements
        self.last: list[tuple[str, dict[str, Any] | None]] = []  # sent with its COMMIT


class Catalog:
    def __init__(self, engine: Engine):
        self.engine = engine

    def _read(self) -> Connection:
        """A connection for one read statement: autocommit, so no BEGIN/ROLLBACK round trips."""
        return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _one_statement_step(self) -> Connection:
        """A session step of one statement carrying ``_ASYNC_COMMIT`` (see there): autocommit."""
        return self._read()

    def _pipelined_step(self, statements: Sequence[tuple[str, dict[str, Any] | None]]) -> None:
        """A session step (module doc) whose statements need nothing read back: BEGIN, the
        setting, ``statements`` ((SQL, parameters) pairs, straight to the driver) and COMMIT go out
        pipelined (psycopg pipeline mode) and come back in one round trip, where a transaction
        would take one for BEGIN and one per statement.  If a statement fails, the server skips
        the rest up to the pipeline's end, COMMIT included: nothing is committed; the connection,
        its transaction aborted, is dropped and the error raised as SQLAlchemy raises it."""
        with self._read() as conn:
            _pipelined(conn, [("BEGIN", None), (_ASYNC_COMMIT_LOCAL, None), *statements, ("COMMIT", None)])

    @contextlib.contextmanager
    def _locked(self, lock_sql: str, params: dict[str, Any]) -> Iterator[Connection]:
        """A transaction (committed synchronously) that starts by locking rows with ``lock_sql``
        (``_transaction``)."""
        with self._transaction([(lock_sql, params)]) as tx:
            yield tx.conn

    @contextlib.contextmanager
    def _transaction(self, opening: Sequence[tuple[str, dict[str, Any] | None]]) -> Iterator["_DriverTx"]:
        """A transaction run straight on the driver.  BEGIN and ``opening`` ((SQL, parameters)
        pairs: locking statements; their cursors in ``tx.opened``) go out pipelined, in one round
        trip; the statements run on ``tx.conn`` next read after the locks are held (each one its
        own snapshot: they see what the previous holder of the locks committed); ``tx.last``
        (pairs the body adds) goes out pipelined with the COMMIT, in one round trip.  The commit
        is synchronous unless ``tx.last`` says otherwise.  A failure rolls back (or drops the
        connection)."""
        with self._read() as conn:
            tx = _DriverTx(conn, _pipelined(conn, [("BEGIN", None), *opening])[1:])
            try:
                yield tx
            except BaseException:
                try:
                    conn.connection.driver_connection.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - the connection is gone: never reuse it
                    conn.invalidate()
                raise
            _pipelined(conn, [*tx.last, ("COMMIT", None)])

    # -- sequences ----------------------------------------------------------------------------
    def create_sequence(self, *, locator: str, uuid: uuidlib.UUID, user_metadata: Any,
                        path_in_store: str, created_at_ns: int, change_id: int | None = None) -> int:
        try:
            with self._one_statement_step() as conn:
                return conn.exec_driver_sql(_INSERT_SEQUENCE, {
                    "change": change_id, "uuid": uuid, "locator": locator, "folder": path_in_store,
                    "md": None if user_metadata is None else Jsonb(user_metadata), "at": created_at_ns,
                }).scalar_one()
        except sa.exc.IntegrityError as exc:
            if _unique_violation(exc):
                raise errors.already_exists(f"Sequence `{locator}`") from None
            raise

    def sequence(self, locator: str, conn: Connection | None = None) -> RowMapping:
        row = self._first_row(conn, sa.select(sequence_t).where(sequence_t.c.locator_name == locator))
        if row is None:
            raise errors.not_found(f"Sequence `{locator}`")
        return row

    def sequence_names(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(sa.select(sequence_t.c.locator_name)
                                     .order_by(sequence_t.c.locator_name)).scalars())

    def delete_sequence(self, locator: str, store_step: StoreStep | None = None) -> list[str] | None:
        """Delete a sequence and everything below it; returns its store folders (sequence
        folder first), or None if it did not exist.  ``store_step(folders)`` runs before the
        commit."""
        with self.engine.begin() as conn:
            seq = conn.execute(sa.select(sequence_t).where(sequence_t.c.locator_name == locator)
                               .with_for_update()).mappings().first()
            if seq is None:
                return None
            folders = [seq["path_in_store"]] + list(conn.execute(
                sa.select(topic_t.c.path_in_store).where(
                    topic_t.c.sequence_id == seq["sequence_id"],
                    topic_t.c.path_in_store.is_not(None))).scalars())
            _clear(conn, store_step(folders) if store_step else None)
            conn.execute(sequence_t.delete().where(sequence_t.c.sequence_id == seq["sequence_id"]))
            return folders

    # -- sessions -----------------------------------------------------------------------------
    def create_session(self, *, sequence_id: int, uuid: uuidlib.UUID, locator: str,
                       created_at_ns: int, change_id: int | None = None) -> None:
        with self._one_statement_step() as conn:
            conn.exec_driver_sql(_INSERT_SESSION, {"change": change_id, "uuid": uuid, "locator": locator,
                                                   "sequence": sequence_id, "at": created_at_ns})

    @staticmethod
    def _session_query() -> sa.Select:
        return (sa.select(session_t, sequence_t.c.locator_name.label("sequence_locator"),
                          sequence_t.c.path_in_store.label("sequence_folder"))
                .join(sequence_t, sequence_t.c.sequence_id == session_t.c.sequence_id))

    def _lock_open_session(self, conn: Connection, session_uuid: uuidlib.UUID) -> RowMapping:
        """Row-lock a session for the rest of the transaction; it must exist and be open."""
        sess = conn.execute(self._session_query().where(session_t.c.session_uuid == session_uuid)
                            .with_for_update(of=session_t)).mappings().first()
        if sess is None:
            raise errors.not_found(f"Session `{session_uuid}`")
        if sess["completion_unix_tstamp"] is not None:
            raise errors.precondition(f"Session `{sess['locator_name']}` already finalized.")
        return sess

    def sessions_of(self, sequence_id: int) -> list[RowMapping]:
        with self._read() as conn:
            return list(conn.execute(sa.select(session_t).where(session_t.c.sequence_id == sequence_id)
                                     .order_by(session_t.c.creation_unix_tstamp, session_t.c.session_id))
                        .mappings())

    def finalize_session(self, session_uuid: uuidlib.UUID, completed_at_ns: int,
                         store_step: StoreStep | None = None) -> dict:
        """Lock a session once every topic is finalized or interrupted (checks and update in one
        transaction; ``store_step(session)`` runs after the checks, before the commit).

        Three round trips (py-spy on small sequences: six took half of ``session_finalize``'s
        wall time): BEGIN with the session's and its topics' locks; the pending change (its own
        connection, in ``store_step``); the updates with the COMMIT (both pipelined, straight to
        the driver).

        With a pending change, the COMMIT does not wait for the WAL flush (py-spy: the flush was
        a tenth of the action's wall time under load).  That commit lost in a crash of
        PostgreSQL is recovered from the store: the pending change was committed durably before
        the store write (flushing every earlier commit of the session with it) and the session
        document in the store says completed, so the recovery finalizes the session and its
        interrupted topics with that time (docs/failure-semantics.md)."""
        params = {"uuid": session_uuid}
        with self._transaction([(_LOCK_SESSION, params), (_LOCK_SESSION_TOPICS, params)]) as tx:
            locked, listed = tx.opened
            sess = locked.fetchone()
            if sess is None:
                raise errors.not_found(f"Session `{session_uuid}`")
            if sess["completion_unix_tstamp"] is not None:
                raise errors.precondition(f"Session `{sess['locator_name']}` already finalized.")
            topics = listed.fetchall()
            if not topics:
                raise errors.precondition(f"Session `{sess['locator_name']}` is empty.")
            interrupted = []
            for t in topics:
                if t["path_in_store"] is None:
                    raise errors.precondition(
                        f"DoPut not called for topic `{t['locator_name']}`. At least one with an "
                        "empty batch is required to finalize the topic.")
                if t["completion_unix_tstamp"] is None:
                    if t["interrupted_unix_tstamp"] is None:
                        raise errors.precondition(f"Topic `{t['locator_name']}` is already uploading data.")
                    interrupted.append(t["topic_id"])
            change = store_step(sess) if store_step else None
            if change is not None:  # recorded durably, store written: a lost commit is recovered
                tx.last.append((_ASYNC_COMMIT_LOCAL, None))
            tx.last.extend(_complete_session(sess["session_id"], interrupted, completed_at_ns, change))
            return sess

    @staticmethod
    def _complete_session(conn: Connection, session_id: int, interrupted: list[int],
                          completed_at_ns: int, change_id: int | None = None) -> None:
        """Finalize a session and its interrupted topics in ``conn``'s transaction, clearing the
        pending change ``change_id``."""
        for statement in _complete_session(session_id, interrupted, completed_at_ns, change_id):
            conn.exec_driver_sql(*statement)

    def delete_session(self, locator: str, store_step: StoreStep | None = None) -> tuple[RowMapping, list[str]]:
        """Delete a session with its topics; returns (session row, topic folders).
        ``store_step(session, folders)`` runs before the commit."""
        with self.engine.begin() as conn:
            sess = conn.execute(self._session_query().where(session_t.c.locator_name == locator)
                                .with_for_update(of=session_t)).mappings().first()
            if sess is None:
                raise errors.not_found(f"Session `{locator}`")
            folders = list(conn.execute(sa.select(topic_t.c.path_in_store).where(
                topic_t.c.session_id == sess["session_id"], topic_t.c.path_in_store.is_not(None))).scalars())
            _clear(conn, store_step(sess, folders) if store_step else None)
            conn.execute(session_t.delete().where(session_t.c.session_id == sess["session_id"]))
            return sess, folders

    # -- topics -------------------------------------------------------------------------------
    def create_topic(self, *, session_uuid: uuidlib.UUID, locator: str, uuid: uuidlib.UUID,
                     serialization_format: str, ontology_tag: str, user_metadata: Any,
                     created_at_ns: int, sequence_locator: str) -> None:
        try:
            with self._one_statement_step() as conn:
                inserted = conn.exec_driver_sql(_INSERT_TOPIC, {
                    "uuid": uuid, "locator": locator, "fmt": serialization_format, "tag": ontology_tag,
                    "md": None if user_metadata is None else Jsonb(user_metadata), "at": created_at_ns,
                    "session": session_uuid, "sequence": sequence_locator}).first()
                if inserted is None:  # say why: the session is unknown, finalized or of another sequence
                    sess = self._lock_open_session(conn, session_uuid)
                    raise errors.unauthorized(
                        f"topic `{locator}` does not belong to the sequence `{sess['sequence_locator']}` "
                        "of the session")
        except sa.exc.IntegrityError as exc:
            if _unique_violation(exc):
                raise errors.already_exists(f"Topic `{locator}`") from None
            raise

    @staticmethod
    def _topic_query() -> sa.Select:
        return (sa.select(topic_t, session_t.c.locator_name.label("session_locator"),
                          session_t.c.session_uuid, sequence_t.c.locator_name.label("sequence_locator"),
                          sequence_t.c.path_in_store.label("sequence_folder"))
                .join(session_t, session_t.c.session_id == topic_t.c.session_id)
                .join(sequence_t, sequence_t.c.sequence_id == topic_t.c.sequence_id))

    def topic(self, locator: str, conn: Connection | None = None) -> RowMapping:
        row = self._first_row(conn, self._topic_query().where(topic_t.c.locator_name == locator))
        if row is None:
            raise errors.not_found(f"Topic `{locator}`")
        return row

    def topics_of_sequence(self, sequence_id: int) -> list[RowMapping]:
        with self._read() as conn:
            return list(conn.execute(self._topic_query().where(topic_t.c.sequence_id == sequence_id)
                                     .order_by(topic_t.c.creation_unix_tstamp, topic_t.c.topic_id))
                        .mappings())

    def claim_upload(self, locator: str, topic_uuid: uuidlib.UUID,
                     claim: Callable[[Connection, RowMapping], int]) -> tuple[RowMapping, int]:
        """The single-writer barrier of a DoPut stream: lock the topic, then read it (its row as
        ``topic`` returns it), check that it is EMPTY and not claimed by another stream, then
        ``claim(conn, topic)`` records the pending upload in the same transaction (returns its
        change id).  Returns (topic, change id).  The topic gets its folder
        (``set_upload_folder``) once the store holds it.

        The row is read by a statement after the locking one: a claim that waited for another
        claim's lock sees the pending upload that one committed (read by the locking statement
        itself, it would be read from before the wait, and both claims would win)."""
        with self._locked(_LOCK_TOPIC, {"locator": locator}) as conn:
            row = conn.execute(self._claimed_row(), {"locator": locator}).mappings().first()
            if row is None:
                raise errors.not_found(f"Topic `{locator}`")
            if row["topic_uuid"] != topic_uuid:
                raise errors.unauthorized(f"wrong topic uuid for topic `{locator}`")
            if row["completion_unix_tstamp"] is not None:
                raise errors.precondition(f"Topic `{locator}` has already been uploaded and finalized.")
            if row["interrupted_unix_tstamp"] is not None:
                raise errors.precondition(
                    f"Topic `{locator}`: its upload was interrupted; what was received is kept and "
                    "readable. Finalize the session to keep it, or delete the topic to upload again.")
            if row["path_in_store"] is not None or row["upload_pending"]:
                raise errors.precondition(f"Topic `{locator}` is already uploading data.")
            return row, claim(conn, row)

    @classmethod
    @functools.cache
    def _claimed_row(cls) -> sa.Select:
        """The topic row a claim reads (``topic``'s columns and whether an upload of it is
        pending), for a ``locator`` parameter: built once."""
        pending = (sa.select(pending_change_t.c.change_id).where(
            pending_change_t.c.kind == "upload",
            sa.cast(pending_change_t.c.target["topic_id"].astext, sa.Integer) == topic_t.c.topic_id).exists())
        return (cls._topic_query().add_columns(pending.label("upload_pending"))
                .where(topic_t.c.locator_name == sa.bindparam("locator")))

    def set_upload_folder(self, topic_id: int, folder: str, schema_ipc: bytes) -> None:
        with self._one_statement_step() as conn:
            conn.exec_driver_sql(_SET_UPLOAD_FOLDER, {"folder": folder, "schema": schema_ipc, "topic": topic_id})

    def finalize_topic(self, topic_id: int, completed_at_ns: int, change_id: int | None = None,
                       chunks: Sequence[dict] = ()) -> None:
        """Close an upload in one step of one round trip: index its last chunks (``chunks``:
        ``insert_chunk_rows`` arguments), then completion time and exact timestamp range from the
        chunk rows, and its pending change cleared."""
        self._pipelined_step([*((_INSERT_CHUNK, _chunk_params(topic_id=topic_id, **chunk)) for chunk in chunks),
                              _finalize_topic(topic_id, completed_at_ns, change_id)])

    @staticmethod
    def _chunk_range(conn: Connection, topic_id: int) -> tuple[int | None, int | None]:
        """Exact timestamp range of a topic's indexed chunks."""
        lo, hi = conn.execute(sa.select(sa.func.min(chunk_t.c.start_timestamp_ns),
                                        sa.func.max(chunk_t.c.end_timestamp_ns))
                              .where(chunk_t.c.topic_id == topic_id)).one()
        return lo, hi

    @staticmethod
    def _complete_topic(conn: Connection, topic_id: int, completed_at_ns: int) -> None:
        conn.exec_driver_sql(*_finalize_topic(topic_id, completed_at_ns, None))

    def interrupt_upload(self, topic_id: int, interrupted_at_ns: int, message: str,
                         change_id: int | None = None, conn: Connection | None = None,
                         chunks: Sequence[dict] = (), store_step: Callable[[], None] | None = None) -> bool:
        """Record that the DoPut stream of an uploading topic broke (the chunks indexed so far
        stay, ``chunks`` -- ``insert_chunk_rows`` arguments -- are indexed with it, except those
        already indexed: an end whose commit was reported failed) and leave a topic notification
        saying so; False if it was not uploading.  ``store_step()`` (the store documents saying
        *interrupted*) runs with the topic row locked, and only when the topic is still uploading:
        an end whose COMMIT reached the database although its answer was lost left the topic
        finalized, and its store documents must keep saying so (a COMMIT still in flight holds the
        row lock until it is applied or rolled back, so the check cannot race it)."""
        if conn is None:
            with self.engine.begin() as c:
                return self.interrupt_upload(topic_id, interrupted_at_ns, message, change_id, c, chunks, store_step)
        if store_step is not None:
            state = conn.execute(sa.select(topic_t.c.path_in_store, topic_t.c.completion_unix_tstamp,
                                           topic_t.c.interrupted_unix_tstamp)
                                 .where(topic_t.c.topic_id == topic_id).with_for_update()).first()
            if (state is None or state.path_in_store is None or state.completion_unix_tstamp is not None
                    or state.interrupted_unix_tstamp is not None):
                _clear(conn, change_id)
                return False
            store_step()
        if chunks:  # the end of the upload failed: index its last chunks unless it did commit them
            indexed = set(conn.execute(sa.select(chunk_t.c.data_file).where(chunk_t.c.topic_id == topic_id))
                          .scalars())
            for chunk in chunks:
                if chunk["data_file"] not in indexed:
                    insert_chunk_rows(conn, topic_id=topic_id, **chunk)
        _clear(conn, change_id)
        lo, hi = self._chunk_range(conn, topic_id)
        done = conn.execute(topic_t.update().where(
            topic_t.c.topic_id == topic_id, topic_t.c.path_in_store.is_not(None),
            topic_t.c.completion_unix_tstamp.is_(None), topic_t.c.interrupted_unix_tstamp.is_(None))
            .values(interrupted_unix_tstamp=interrupted_at_ns, start_index_timestamp=lo,
                    end_index_timestamp=hi)).rowcount
        if done:
            conn.execute(topic_notification_t.insert().values(
                topic_id=topic_id, topic_notification_uuid=uuidlib.uuid4(), notification_type="error",
                msg=message, creation_unix_tstamp=interrupted_at_ns))
        return bool(done)

    def delete_topic(self, locator: str, store_step: StoreStep | None = None) -> str | None:
        """Delete a topic; returns its store folder (None if it had no data).
        ``store_step(folders)`` runs before the commit."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(topic_t.c.topic_id, topic_t.c.path_in_store)
                               .where(topic_t.c.locator_name == locator).with_for_update()).first()
            if row is None:
                raise errors.not_found(f"Topic `{locator}`")
            if store_step is not None:
                _clear(conn, store_step([row.path_in_store] if row.path_in_store else []))
            conn.execute(topic_t.delete().where(topic_t.c.topic_id == row.topic_id))
            return row.path_in_store

    # -- chunks and statistics ----------------------------------------------------------------
    def insert_chunk(self, *, topic_id: int, ontology_tag: str, data_file: str, size_bytes: int,
                     stats: ChunkStats) -> None:
        """Index one closed chunk of an upload (its own session step, one round trip)."""
        self._pipelined_step([(_INSERT_CHUNK, _chunk_params(topic_id=topic_id, ontology_tag=ontology_tag,
                                                            data_file=data_file, size_bytes=size_bytes,
                                                            stats=stats))])

    def chunks_of(self, topic_id: int, start: int | None = None, end: int | None = None) -> list[RowMapping]:
        q = sa.select(chunk_t).where(chunk_t.c.topic_id == topic_id, *chunk_overlaps(start, end))
        with self._read() as conn:
            return list(conn.execute(q.order_by(chunk_t.c.chunk_id)).mappings())

    def data_info(self, topic_ids: Sequence[int]) -> dict[int, RowMapping]:
        """Whole-topic totals per topic id: chunks, bytes, rows, and the timestamp range of the
        indexed chunks (``ts_min``/``ts_max``; for an upload still running)."""
        if not topic_ids:
            return {}
        q = (sa.select(chunk_t.c.topic_id, sa.func.count().label("chunks"),
                       sa.func.coalesce(sa.func.sum(chunk_t.c.size_bytes), 0).label("bytes"),
                       sa.func.coalesce(sa.func.sum(chunk_t.c.row_count), 0).label("rows"),
                       sa.func.min(chunk_t.c.start_timestamp_ns).label("ts_min"),
                       sa.func.max(chunk_t.c.end_timestamp_ns).label("ts_max"))
             .where(chunk_t.c.topic_id.in_(list(topic_ids))).group_by(chunk_t.c.topic_id))
        with self._read() as conn:
            return {r["topic_id"]: r for r in conn.execute(q).mappings()}

    # -- notifications ------------------------------------------------------------------------
    def add_notification(self, kind: str, owner_id: int, notification_type: str, msg: str, now_ns: int) -> None:
        table, id_col, uuid_col = self._notification_table(kind)
        with self.engine.begin() as conn:
            conn.execute(table.insert().values({id_col: owner_id, uuid_col: uuidlib.uuid4(),
                                                "notification_type": notification_type, "msg": msg,
                                                "creation_unix_tstamp": now_ns}))

    def notifications(self, kind: str, owner_id: int) -> list[RowMapping]:
        table, id_col, _ = self._notification_table(kind)
        pk = table.c[f"{kind}_notification_id"]
        with self._read() as conn:
            return list(conn.execute(sa.select(table).where(table.c[id_col] == owner_id)
                                     .order_by(table.c.creation_unix_tstamp, pk)).mappings())

    def purge_notifications(self, kind: str, owner_id: int) -> None:
        table, id_col, _ = self._notification_table(kind)
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c[id_col] == owner_id))

    @staticmethod
    def _notification_table(kind: str) -> tuple[sa.Table, str, str]:
        if kind == "sequence":
            return sequence_notification_t, "sequence_id", "sequence_notification_uuid"
        return topic_notification_t, "topic_id", "topic_notification_uuid"

    # -- helpers ------------------------------------------------------------------------------
    def _first_row(self, conn: Connection | None, query: sa.Select) -> RowMapping | None:
        if conn is not None:
            return conn.execute(query).mappings().first()
        with self._read() as c:
            return c.execute(query).mappings().first()
