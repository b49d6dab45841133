"""Recovery: complete the changes a dead server left pending (catalog/journal.py); run at every
start, and periodically by a running server for its own abandoned changes.

A change reaches the store before the catalog.  When its server dies in between, its pending
record stays; the next server that starts on the catalog brings the catalog up to what the store
holds, change by change, so that a rebuild from the store would find nothing different:

* ``sequence_create`` / ``session_create``: the document is in the store -> the row is inserted
  (a sequence name taken since by another server -> the orphan folder is marked TO_DELETE);
  not in the store -> nothing happened.
* ``session_finalize``: the session document says completed -> the session (and its
  interrupted topics) are finalized with that time.
* ``*_delete``: a delete that started is completed (markers written, rows deleted).
* ``upload``: the DoPut stream died with its server.  A finalized or interrupted ``_COMMIT.json``
  -> the catalog catches up with it.  No commit -> the upload is *interrupted* here: complete
  chunk files are indexed, a partial trailing file (no Parquet footer) is removed, the folder is
  committed as interrupted and the topic gets its notification.  No ``metadata.json`` -> the
  upload never started: the topic is empty again.

Each change is handled in its own transaction, with its pending row locked (``SKIP LOCKED``:
two servers starting together never handle the same change) and only if its owner is dead.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import errors, logs
from .catalog.journal import Journal, live_owners
from .catalog.repo import Catalog, insert_chunk_rows
from .catalog.tables import chunk_t, pending_change_t, sequence_t, session_t, topic_t
from .store import layout
from .store.chunks import open_parquet
from .store.objstore import ObjectStore
from .store.stats import ChunkStats

log = logs.get(__name__)


OWN_GRACE_NS = 60 * 10**9  # our own pending change older than this (not an upload) was abandoned


def recover(catalog: Catalog, store: ObjectStore, journal: Journal | None = None) -> list[dict]:
    """Complete every pending change whose owner is dead -- and, given this process's
    ``journal``, its own changes that were abandoned (a request that failed half way while the
    store or the database was down; an upload is abandoned once its stream has ended).  Returns
    what was done (also logged).  A change that cannot be completed now stays for the next pass."""
    engine = catalog.engine

    def orphan(row, alive: set[int]) -> bool:
        if journal is not None and row["owner"] == journal.owner_key:
            if row["kind"] == "upload":
                return row["change_id"] not in journal.active_uploads
            return row["created_unix_tstamp"] < time.time_ns() - OWN_GRACE_NS
        return row["owner"] not in alive

    with engine.connect() as conn:
        alive = live_owners(conn)
        ids = [r["change_id"] for r in conn.execute(sa.select(pending_change_t)
                                                    .order_by(pending_change_t.c.change_id)).mappings()
               if orphan(r, alive)]
    done = []
    for change_id in ids:
        try:
            with engine.begin() as conn:
                row = conn.execute(sa.select(pending_change_t).where(pending_change_t.c.change_id == change_id)
                                   .with_for_update(skip_locked=True)).mappings().first()
                if row is None or not orphan(row, live_owners(conn)):
                    continue
                outcome = HANDLERS[row["kind"]](conn, catalog, store, row["target"])
                conn.execute(pending_change_t.delete().where(pending_change_t.c.change_id == change_id))
        except Exception as exc:  # noqa: BLE001 - retried at the next start
            log.error("could not recover a pending change", change=change_id, error=errors.first_line(exc))
            continue
        entry = {"change": row["kind"], **{k: v for k, v in row["target"].items() if k in ("locator", "folder")},
                 "outcome": outcome}
        log.warning("completed a pending change left by a failure", **entry)
        done.append(entry)
    done += _unclaimed_uploads(catalog, store)
    return done


def _unclaimed_uploads(catalog: Catalog, store: ObjectStore) -> list[dict]:
    """Topics left *uploading* with no pending upload (no stream can be writing them: a live
    stream always has one), e.g. restored so by `rebuild-catalog` from a store where the upload
    never committed: interrupted like an upload whose server died."""
    claimed = sa.exists().where(pending_change_t.c.kind == "upload",
                                pending_change_t.c.target["topic_id"].astext == sa.cast(topic_t.c.topic_id, sa.Text))
    open_upload = sa.and_(topic_t.c.path_in_store.is_not(None), topic_t.c.completion_unix_tstamp.is_(None),
                          topic_t.c.interrupted_unix_tstamp.is_(None), ~claimed)
    with catalog.engine.connect() as conn:
        found = conn.execute(sa.select(topic_t.c.topic_id, topic_t.c.path_in_store).where(open_upload)).all()
    done = []
    for topic_id, folder in found:
        try:
            with catalog.engine.begin() as conn:
                if conn.execute(sa.select(topic_t.c.topic_id).where(topic_t.c.topic_id == topic_id, open_upload)
                                .with_for_update(skip_locked=True)).first() is None:
                    continue
                outcome = _upload(conn, catalog, store, {"topic_id": topic_id, "folder": folder})
        except Exception as exc:  # noqa: BLE001 - next pass
            log.error("could not recover an unclaimed upload", folder=folder, error=errors.first_line(exc))
            continue
        entry = {"change": "upload", "folder": folder, "outcome": outcome}
        log.warning("completed an upload nobody was writing", **entry)
        done.append(entry)
    return done


def _get_json(store: ObjectStore, key: str) -> Any | None:
    try:
        return store.get_json(key)
    except FileNotFoundError:
        return None


def _sequence_create(conn: Connection, catalog: Catalog, store: ObjectStore, t: dict) -> str:
    folder = t["folder"]
    doc = _get_json(store, layout.metadata_key(folder))
    if doc is None:
        return "not stored: nothing to do"
    row = conn.execute(sa.select(sequence_t.c.path_in_store)
                       .where(sequence_t.c.locator_name == t["locator"])).first()
    if row is not None:
        if row.path_in_store != folder:
            store.mark_deleted(folder)
            return "name taken since: folder marked TO_DELETE"
        return "already in the catalog"
    c = doc["catalog"]
    conn.execute(sequence_t.insert().values(
        sequence_uuid=c["uuid"], locator_name=t["locator"], user_metadata=doc.get("user_metadata"),
        path_in_store=folder, creation_unix_tstamp=c["created_at_ns"]))
    return "created"


def _session_create(conn: Connection, catalog: Catalog, store: ObjectStore, t: dict) -> str:
    key, locator = t["key"], t["locator"]
    doc = _get_json(store, key)
    if doc is None:
        return "not stored: nothing to do"
    seq = conn.execute(sa.select(sequence_t.c.sequence_id, sequence_t.c.path_in_store)
                       .where(sequence_t.c.locator_name == locator.partition(":")[0])).first()
    if seq is None or not key.startswith(seq.path_in_store + "/"):
        store.delete(key)
        return "sequence gone: session document removed"
    if conn.execute(sa.select(session_t.c.session_id).where(session_t.c.locator_name == locator)).first():
        return "already in the catalog"
    conn.execute(session_t.insert().values(
        session_uuid=doc["uuid"], locator_name=locator, sequence_id=seq.sequence_id,
        creation_unix_tstamp=doc["created_at_ns"], completion_unix_tstamp=doc.get("completed_at_ns")))
    return "created"


def _session_finalize(conn: Connection, catalog: Catalog, store: ObjectStore, t: dict) -> str:
    doc = _get_json(store, t["key"])
    completed = (doc or {}).get("completed_at_ns")
    if completed is None:
        return "not stored: nothing to do"
    sess = conn.execute(sa.select(session_t.c.session_id, session_t.c.completion_unix_tstamp)
                        .where(session_t.c.locator_name == t["locator"]).with_for_update()).first()
    if sess is None or sess.completion_unix_tstamp is not None:
        return "nothing to do"
    interrupted = list(conn.execute(sa.select(topic_t.c.topic_id).where(
        topic_t.c.session_id == sess.session_id, topic_t.c.completion_unix_tstamp.is_(None),
        topic_t.c.interrupted_unix_tstamp.is_not(None))).scalars())
    catalog._complete_session(conn, sess.session_id, interrupted, completed)  # noqa: SLF001
    return "finalized"


def _delete(kind: str):
    table = {"sequence_delete": sequence_t, "session_delete": session_t, "topic_delete": topic_t}[kind]

    def handle(conn: Connection, catalog: Catalog, store: ObjectStore, t: dict) -> str:
        for folder in t["folders"]:
            store.mark_deleted(folder)
        if t.get("key"):
            store.delete(t["key"])
        n = conn.execute(table.delete().where(table.c.locator_name == t["locator"])).rowcount
        return "deleted" if n else "already deleted"
    return handle


def _file_stats(store: ObjectStore, key: str, schema: pa.Schema) -> ChunkStats:
    """Statistics of a chunk file read back from the store; raises if it is not a complete
    Parquet file (a chunk that was being written when the server died has no footer)."""
    stats = ChunkStats(schema)
    pf = open_parquet(store, key)
    for rg in range(pf.metadata.num_row_groups):  # per row group, as the writer and rebuild-catalog do
        stats.start_row_group()
        for batch in pf.iter_batches(batch_size=65536, row_groups=[rg]):
            stats.update(batch)
    return stats


def _upload(conn: Connection, catalog: Catalog, store: ObjectStore, t: dict) -> str:
    folder = t["folder"]
    which = (topic_t.c.topic_uuid == t["topic_uuid"]) if t.get("topic_uuid") else (topic_t.c.topic_id == t["topic_id"])
    topic = conn.execute(sa.select(topic_t).where(which).with_for_update()).mappings().first()
    if topic is None:
        return "topic deleted: nothing to do"
    topic_id = topic["topic_id"]
    meta = _get_json(store, layout.metadata_key(folder))
    if meta is None:
        store.delete(layout.schema_key(folder))
        return "not stored: the topic is empty again"
    if topic["path_in_store"] is None:
        raw = store.get_bytes(layout.schema_key(folder))
        conn.execute(topic_t.update().where(topic_t.c.topic_id == topic_id)
                     .values(path_in_store=folder, arrow_schema=raw))
        schema_bytes = raw
    elif topic["path_in_store"] != folder:
        return "the topic has another folder: nothing to do"
    else:
        schema_bytes = bytes(topic["arrow_schema"])
    if topic["completion_unix_tstamp"] is not None or topic["interrupted_unix_tstamp"] is not None:
        return "already ended"
    schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
    indexed = {r.data_file: r for r in conn.execute(
        sa.select(chunk_t.c.data_file, chunk_t.c.row_count, chunk_t.c.size_bytes, chunk_t.c.arrow_size_bytes)
        .where(chunk_t.c.topic_id == topic_id))}
    commit = _get_json(store, layout.commit_key(folder))

    def index(key: str, size: int, arrow_size: int | None = None) -> ChunkStats:
        stats = _file_stats(store, key, schema)
        if arrow_size is not None:
            stats.arrow_size_bytes = arrow_size  # as committed (what the writer measured)
        insert_chunk_rows(conn, topic_id=topic_id, ontology_tag=topic["ontology_tag"], data_file=key,
                          size_bytes=size, stats=stats)
        return stats

    if commit is not None and commit.get("state") in ("finalized", "interrupted"):
        for entry in commit.get("files", []):
            key = f"{folder}/{layout.DATA_DIR}/{entry['name']}"
            if key not in indexed:
                index(key, int(entry["size_bytes"]), entry.get("arrow_size_bytes"))
        if commit["state"] == "finalized":
            catalog._complete_topic(conn, topic_id, int(meta["properties"]["completed_at"]))  # noqa: SLF001
            return "finalized (the commit was stored)"
        catalog.interrupt_upload(topic_id, int(commit["interrupted_at_ns"]), _message(commit["row_count"], False),
                                 conn=conn)
        return "interrupted (the commit was stored)"

    entries, lost = [], False
    for key, size in store.walk_files(f"{folder}/{layout.DATA_DIR}"):
        index_no = layout.data_file_index(key)
        if index_no is None:
            continue
        row = indexed.get(key)
        if row is not None:
            entries.append((index_no, {"size_bytes": row.size_bytes, "row_count": row.row_count,
                                       "arrow_size_bytes": row.arrow_size_bytes}, None))
            continue
        try:
            stats = _file_stats(store, key, schema)
        except Exception:  # noqa: BLE001 - partial trailing file: removed
            store.delete(key)
            lost = True
            continue
        if stats.row_count == 0:
            store.delete(key)
            continue
        insert_chunk_rows(conn, topic_id=topic_id, ontology_tag=topic["ontology_tag"], data_file=key,
                          size_bytes=size, stats=stats)
        entries.append((index_no, {"size_bytes": size, "row_count": stats.row_count,
                                   "arrow_size_bytes": stats.arrow_size_bytes}, stats))
    entries.sort(key=lambda e: e[0])
    rows = sum(e[1]["row_count"] for e in entries)
    lo, hi = catalog._chunk_range(conn, topic_id)  # noqa: SLF001
    at = time.time_ns()
    if meta.get("properties", {}).get("completed_at") is not None:  # died while finishing
        meta["properties"]["completed_at"] = None
        store.put_json(layout.metadata_key(folder), meta)
    store.put_json(layout.commit_key(folder), layout.commit_doc(
        state="interrupted", committed_at_ns=at, row_count=rows,
        timestamp_range=(lo, hi) if lo is not None else None,
        files=[{"name": layout.data_file_name(i), **e} for i, e, _ in entries], interrupted_at_ns=at))
    catalog.interrupt_upload(topic_id, at, _message(rows, lost), conn=conn)
    return f"interrupted by the recovery: {len(entries)} chunks, {rows} rows kept" + (
        "; a partial chunk file was removed" if lost else "")


def _message(rows: int, lost: bool) -> str:
    head = f"Upload interrupted after {'at least ' if lost else ''}{rows} rows ({rows} stored and readable"
    return (head + ("; the chunk being written was lost" if lost else "")
            + "): the stream broke with its server (stopped, or its store or database failed); recovered "
              "by the server. Finalize the session to keep them, or delete the topic")


HANDLERS = {
    "sequence_create": _sequence_create,
    "session_create": _session_create,
    "session_finalize": _session_finalize,
    "upload": _upload,
    "sequence_delete": _delete("sequence_delete"),
    "session_delete": _delete("session_delete"),
    "topic_delete": _delete("topic_delete"),
}


class RecoveryLoop:
    """A running server's periodic recovery pass: its own abandoned changes (a store or database
    outage broke a request half way) and those of servers that died meanwhile."""

    def __init__(self, runtime, *, interval: float):
        self.runtime = runtime
        self.interval = max(1.0, float(interval))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recovery", daemon=True)

    def start(self) -> "RecoveryLoop":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                recover(self.runtime.catalog, self.runtime.store, self.runtime.journal)
            except Exception as exc:  # noqa: BLE001 - catalog unreachable: next pass
                log.warning("recovery pass failed", error=errors.first_line(exc))
