"""Business logic behind the Flight endpoints: actions, uploads (do_put) and reads.

The server (mosaicod/server.py) only parses the wire format (``wirejson``, ``descriptors``,
``tickets``) and dispatches here (docs/architecture.md#one-upload).  Order of effects: the store
first, the catalog second -- a change is recorded as pending (catalog/journal.py), written to the
store, then applied to the catalog with its pending record cleared; a crash in between is
completed by the recovery (mosaicod/recovery.py).  See docs/failure-semantics.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
import uuid as uuidlib
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from . import __version__, errors, legacy, locators, query, views
from .catalog.journal import Journal
from .catalog.repo import Catalog
from .maintenance.faults import crash_point
from .config import Settings
from .logs import get as get_logger
from .store import layout
from .store.chunks import SERIALIZATION_FORMATS, TS, ChunkInfo, ChunkWriter, commit_doc_for, open_parquet
from .store.objstore import STORE_OUTAGES, ObjectStore
from .store.pipeline import BackgroundWriter
from .store.reader import read_topic
from .tickets import TopicTicket
from .wirejson import member

log = get_logger(__name__)

NOTIFICATION_TYPES = ("error",)
MAX_ONTOLOGY_TAG = 256


def now_ns() -> int:
    return time.time_ns()


# -- request parsing helpers ------------------------------------------------------------------

def _metadata(body: dict) -> Any:
    md = body.get("user_metadata")
    if md is None:
        return {}
    if not isinstance(md, dict):
        raise errors.bad_request("body deserialization error: field `user_metadata` must be a JSON object")
    locators.validate_user_metadata(md)
    return md


def upload_state(topic) -> str:
    """Where a topic is in its upload life cycle (see docs/failure-semantics.md):
    empty -> uploading -> finalized, or uploading -> interrupted -> finalized (with its session)."""
    if topic["completion_unix_tstamp"] is not None:
        return "finalized"
    if topic["interrupted_unix_tstamp"] is not None:
        return "interrupted"
    return "uploading" if topic["path_in_store"] is not None else "empty"


def _check_storable(raw_schema: bytes) -> None:
    """Refuse, before anything is recorded, a schema (IPC-serialized) that Parquet cannot hold (a
    union type, ...): the chunk writer would fail only when its first chunk opens.  The answer is
    remembered per schema (clients send the same few)."""
    problem = _storage_problem(raw_schema)
    if problem is not None:
        raise errors.bad_request(f"the schema cannot be stored: {errors.shown(problem, 300)}")


@functools.lru_cache(maxsize=256)
def _storage_problem(raw_schema: bytes) -> str | None:
    """Why Parquet cannot hold this serialized schema, or None (cached: building a Parquet writer
    costs about half a millisecond, paid once per distinct schema)."""
    try:
        pq.ParquetWriter(pa.BufferOutputStream(), pa.ipc.read_schema(pa.py_buffer(raw_schema))).close()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        return errors.first_line(exc)
    return None


def interval(lo: int | None, hi: int | None) -> dict | None:
    return None if lo is None or hi is None else {"start_ns": int(lo), "end_ns": int(hi)}


class Service:
    """What each action, upload and read does: one instance per server process, holding the
    settings, the catalog and the store (no other state across calls)."""

    def __init__(self, settings: Settings, catalog: Catalog, store: ObjectStore, journal: Journal):
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.journal = journal

    # ------------------------------------------------------------------------------------------
    # actions
    def info(self, _body: dict) -> dict:
        major, minor, patch = (int(p) for p in __version__.split(".")[:3])
        return {"version": __version__,
                "semver": {"major": major, "minor": minor, "patch": patch, "pre": None},
                "config": {"grpc_max_decode_message_size": self.settings.max_grpc_decode_message_size,
                           "grpc_max_encode_message_size": 512 * 1024 * 1024,
                           "grpc_target_encode_message_size": self.settings.target_grpc_encode_message_size}}

    def sequence_create(self, body: dict) -> None:
        locator = locators.sequence(member(body, "locator"))
        metadata = _metadata(body)
        uuid, folder, created = uuidlib.uuid4(), layout.new_sequence_folder(), now_ns()
        # recorded unless the name is taken: an early answer that leaves the store untouched
        # (the insert decides a race)
        change = self.journal.begin_sequence_create({"folder": folder, "locator": locator}, locator, now_ns())
        if change is None:
            raise errors.already_exists(f"Sequence `{locator}`")
        key = layout.metadata_key(folder)
        doc = layout.sequence_metadata_doc(locator=locator, uuid=str(uuid), created_at_ns=created,
                                           user_metadata=metadata)
        self._store_journaled("sequence_create", change, key, doc)
        try:
            self.catalog.create_sequence(locator=locator, uuid=uuid, user_metadata=metadata,
                                         path_in_store=folder, created_at_ns=created, change_id=change)
        except BaseException:
            self._undo_store_first(change, [key])
            raise

    def session_create(self, body: dict) -> dict:
        sequence = locators.sequence(member(body, "locator"))
        uuid, created = uuidlib.uuid4(), now_ns()
        locator = f"{sequence}:{layout.new_ulid()}"
        recorded = self.journal.begin_session_create(sequence, locator, now_ns())  # looks the sequence up
        if recorded is None:
            raise errors.not_found(f"Sequence `{sequence}`")
        change, sequence_id, key = recorded
        doc = layout.session_doc(locator=locator, uuid=str(uuid), created_at_ns=created, completed_at_ns=None)
        self._store_journaled("session_create", change, key, doc)
        try:
            self.catalog.create_session(sequence_id=sequence_id, uuid=uuid, locator=locator,
                                        created_at_ns=created, change_id=change)
        except BaseException:
            self._undo_store_first(change, [key])
            raise
        return {"uuid": str(uuid), "locator": locator}

    def topic_create(self, body: dict) -> dict:
        session_uuid = locators.parse_uuid(member(body, "session_uuid"))
        locator = locators.topic(member(body, "locator"))
        fmt = member(body, "serialization_format")
        if fmt not in SERIALIZATION_FORMATS:
            raise errors.bad_request(f"invalid serialization format `{errors.shown(fmt, 40)}` "
                                     f"(expected one of {', '.join(SERIALIZATION_FORMATS)})")
        tag = member(body, "ontology_tag")
        if (not tag or len(tag) > MAX_ONTOLOGY_TAG or not tag.isascii() or "." in tag
                or any(c.isspace() for c in tag)):
            raise errors.bad_request(f"invalid ontology tag `{errors.shown(tag, 80)}`: must be non-empty ASCII "
                                     "without '.' or whitespace")
        metadata = _metadata(body)
        uuid = uuidlib.uuid4()
        self.catalog.create_topic(session_uuid=session_uuid, locator=locator, uuid=uuid,
                                  serialization_format=fmt, ontology_tag=tag, user_metadata=metadata,
                                  created_at_ns=now_ns(), sequence_locator=locators.topic_sequence(locator))
        return {"uuid": str(uuid)}

    def session_finalize(self, body: dict) -> None:
        session_uuid = locators.parse_uuid(member(body, "session_uuid"))
        completed = now_ns()

        def store_step(sess) -> int:  # the session row is locked and checked: commit point in the store
            key = layout.session_key(sess["sequence_folder"], sess["locator_name"])
            doc = layout.session_doc(locator=sess["locator_name"], uuid=str(sess["session_uuid"]),
                                     created_at_ns=sess["creation_unix_tstamp"], completed_at_ns=completed)
            return self._store_first("session_finalize", {"key": key, "locator": sess["locator_name"]}, key, doc)

        self.catalog.finalize_session(session_uuid, completed, store_step)

    def session_delete(self, body: dict) -> None:
        locator = locators.session(member(body, "locator"))

        self.catalog.delete_session(locator, lambda sess, folders: self._mark_deleted(
            "session_delete", locator, folders, layout.session_key(sess["sequence_folder"], locator)))

    def sequence_delete(self, body: dict) -> None:
        locator = locators.sequence(member(body, "locator"))
        folders = self.catalog.delete_sequence(
            locator, lambda folders: self._mark_deleted("sequence_delete", locator, folders))
        if folders is None:
            raise errors.not_found(f"Sequence `{locator}`")

    def topic_delete(self, body: dict) -> None:
        locator = locators.topic(member(body, "locator"))
        self.catalog.delete_topic(locator, lambda folders: self._mark_deleted("topic_delete", locator, folders))

    def _notification_owner(self, kind: str, body: dict) -> int:
        if kind == "sequence":
            return self.catalog.sequence(locators.sequence(member(body, "locator")))["sequence_id"]
        return self.catalog.topic(locators.topic(member(body, "locator")))["topic_id"]

    def notification_create(self, kind: str, body: dict) -> None:
        owner = self._notification_owner(kind, body)
        ntype = member(body, "notification_type")
        if ntype not in NOTIFICATION_TYPES:
            raise errors.bad_request(f"invalid notification type `{errors.shown(ntype, 40)}` "
                                     f"(expected one of {', '.join(NOTIFICATION_TYPES)})")
        msg = member(body, "msg")
        self.catalog.add_notification(kind, owner, ntype, msg, now_ns())

    def notification_list(self, kind: str, body: dict) -> dict:
        try:
            owner = self._notification_owner(kind, body)
        except errors.MosaicoError as exc:
            if exc.kind is errors.Kind.NOT_FOUND:
                return {"notifications": []}
            raise
        name = locators.sequence(body["locator"]) if kind == "sequence" else locators.topic(body["locator"])
        return {"notifications": [
            {"name": name, "notification_type": n["notification_type"], "msg": n["msg"] or "",
             "created_datetime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(n["creation_unix_tstamp"] // 10**9))
             + f".{(n['creation_unix_tstamp'] // 1000) % 10**6:06d} UTC"}
            for n in self.catalog.notifications(kind, owner)]}

    def notification_purge(self, kind: str, body: dict) -> None:
        self.catalog.purge_notifications(kind, self._notification_owner(kind, body))

    # ------------------------------------------------------------------------------------------
    # queries (docs/query.md)
    def query(self, body: dict) -> dict:
        return query.run_query(self.catalog.engine, self.store, body)

    def clusterize(self, body: dict) -> Iterator[dict]:
        return query.clusterize(self.catalog.engine, self.store, body)

    def intersect(self, body: dict) -> Iterator[dict]:
        return query.intersect(self.catalog.engine, self.store, body)

    def sequence_names(self) -> list[str]:
        return self.catalog.sequence_names()

    # ------------------------------------------------------------------------------------------
    # store helpers: every change reaches the store before the catalog (catalog/journal.py)
    def _store_first(self, kind: str, target: dict, key: str, doc: Any) -> int:
        """Record a pending change, then write its document: the catalog may apply it next."""
        return self._store_journaled(kind, self.journal.begin(kind, target, now_ns()), key, doc)

    def _store_journaled(self, kind: str, change: int, key: str, doc: Any) -> int:
        """Write the document of a pending change just recorded (``_store_first``)."""
        crash_point(f"{kind}:journaled")
        try:
            self.store.put_json(key, doc)
        except Exception as exc:
            log.error("store write failed; nothing changed", key=key, error=errors.first_line(exc))
            self._undo_store_first(change, [])
            raise errors.MosaicoError(errors.Kind.UNAVAILABLE,
                                      "the object store is unavailable; nothing was changed, retry later") from None
        crash_point(f"{kind}:stored")
        return change

    def _undo_store_first(self, change: int, keys: list[str]) -> None:
        """The catalog refused a change already written to the store: take it back."""
        try:
            for key in keys:
                self.store.delete(key)
            self.journal.forget(change)
        except Exception as exc:  # noqa: BLE001 - left to the recovery at the next start
            log.error("could not take back a refused change", error=errors.first_line(exc))

    def _mark_deleted(self, kind: str, locator: str, folders: list[str], doc_key: str | None = None) -> int:
        """Store step of a delete: TO_DELETE in each folder, then the resource's own document
        (``doc_key``) removed; the catalog rows go next."""
        change = self.journal.begin(kind, {"locator": locator, "folders": folders, "key": doc_key}, now_ns())
        crash_point("delete:journaled")
        try:
            for folder in folders:
                self.store.mark_deleted(folder)
            if doc_key is not None:
                self.store.delete(doc_key)
        except Exception as exc:
            log.error("store write failed; nothing deleted", locator=locator, error=errors.first_line(exc))
            self._undo_store_first(change, [layout.to_delete_key(f) for f in folders])
            raise errors.MosaicoError(errors.Kind.UNAVAILABLE,
                                      "the object store is unavailable; nothing was deleted, retry later") from None
        crash_point("delete:stored")
        return change

    # ------------------------------------------------------------------------------------------
    # uploads
    def begin_upload(self, locator: str, topic_uuid: uuidlib.UUID, schema: pa.Schema) -> "Upload":
        """Claim an empty topic for one DoPut stream with this schema."""
        idx = schema.get_field_index(TS)
        if idx < 0:
            raise errors.bad_request("missing timestamp field in schema: a `timestamp_ns` int64 column is required")
        if schema.field(idx).type != pa.int64():
            raise errors.bad_request(f"wrong timestamp field type, expected int64, got {schema.field(idx).type}")
        raw_schema = schema.serialize().to_pybytes()
        _check_storable(raw_schema)
        folder = layout.new_topic_folder()

        def claim(conn, topic) -> int:
            target = {"topic_id": topic["topic_id"], "topic_uuid": str(topic["topic_uuid"]), "folder": folder}
            return self.journal.begin("upload", target, now_ns(), conn)

        topic, change = self.catalog.claim_upload(locator, topic_uuid, claim)
        crash_point("upload:journaled")
        try:  # schema first: a folder with metadata.json has everything a rebuild needs
            self.store.put_bytes(layout.schema_key(folder), raw_schema)
            self.store.put_json(layout.metadata_key(folder), self._topic_doc(topic, None))
        except Exception as exc:
            log.error("could not start an upload in the store", topic=locator, error=errors.first_line(exc))
            self._undo_store_first(change, [layout.metadata_key(folder), layout.schema_key(folder)])
            raise errors.MosaicoError(errors.Kind.UNAVAILABLE,
                                      "the object store is unavailable; the upload did not start, retry later") from None
        crash_point("upload:stored")
        self.catalog.set_upload_folder(topic["topic_id"], folder, raw_schema)
        return Upload(self, topic, folder, schema, change)

    def _topic_doc(self, topic, completed_at_ns: int | None) -> dict:
        return layout.topic_metadata_doc(
            locator=topic["locator_name"], session_locator=topic["session_locator"],
            created_at_ns=topic["creation_unix_tstamp"], completed_at_ns=completed_at_ns,
            serialization_format=topic["serialization_format"], ontology_tag=topic["ontology_tag"],
            user_metadata=topic["user_metadata"], topic_uuid=str(topic["topic_uuid"]),
            session_uuid=str(topic["session_uuid"]), sequence_folder=topic["sequence_folder"])

    # ------------------------------------------------------------------------------------------
    # reads
    @staticmethod
    def topic_schema(topic) -> pa.Schema:
        raw = topic["arrow_schema"]
        return pa.ipc.read_schema(pa.py_buffer(raw)) if raw else pa.schema([])

    def sequence_view(self, locator: str, window) -> tuple[pa.Schema, dict, list[tuple[bytes, dict]]]:
        """A sequence's FlightInfo: (legacy schema, app_metadata, one (ticket, app_metadata) per topic)."""
        seq = self.catalog.sequence(locator)
        sessions = self.catalog.sessions_of(seq["sequence_id"])
        topics = self.catalog.topics_of_sequence(seq["sequence_id"])
        infos = self.catalog.data_info([t["topic_id"] for t in topics])
        by_session: dict[int, list[str]] = {}
        for t in topics:
            by_session.setdefault(t["session_id"], []).append(t["locator_name"])
        app = {"resource_locator": seq["locator_name"], "created_at_ns": seq["creation_unix_tstamp"],
               "user_metadata": seq["user_metadata"] if seq["user_metadata"] is not None else {},
               "sessions": [{"locator": s["locator_name"], "created_at_ns": s["creation_unix_tstamp"],
                             "completed_at_ns": s["completion_unix_tstamp"],
                             "locked": s["completion_unix_tstamp"] is not None,
                             "topics": by_session.get(s["session_id"], [])} for s in sessions]}
        endpoints = [self.topic_endpoint(t, infos.get(t["topic_id"]), window) for t in topics]
        return legacy.sequence_flight_schema(seq["user_metadata"]), app, endpoints

    def topic_view(self, locator: str, window) -> tuple[pa.Schema, tuple[bytes, dict]]:
        """A topic's FlightInfo: (legacy schema, its one (ticket, app_metadata) endpoint)."""
        topic = self.catalog.topic(locator)
        info = self.catalog.data_info([topic["topic_id"]]).get(topic["topic_id"])
        schema = legacy.topic_flight_schema(self.topic_schema(topic), ontology_tag=topic["ontology_tag"],
                                            serialization_format=topic["serialization_format"],
                                            user_metadata=topic["user_metadata"])
        return schema, self.topic_endpoint(topic, info, window)

    def topic_endpoint(self, topic, info, window) -> tuple[bytes, dict]:
        start, end = window
        meta = {
            "created_at_ns": topic["creation_unix_tstamp"],
            "completed_at_ns": topic["completion_unix_tstamp"],
            "locked": topic["completion_unix_tstamp"] is not None,
            "resource_locator": topic["locator_name"],
            "ontology_tag": topic["ontology_tag"],
            "serialization_format": topic["serialization_format"],
            "user_metadata": topic["user_metadata"] if topic["user_metadata"] is not None else {},
            "session_locator": topic["session_locator"],
            "upload_state": upload_state(topic),  # ours, like interrupted_at_ns
            "interrupted_at_ns": topic["interrupted_unix_tstamp"],
            "data_info": {
                "interval": None, "total_row_count": int(info["rows"]) if info else 0,
                "total_bytes": int(info["bytes"]) if info else 0,
                "total_chunks_count": int(info["chunks"]) if info else 0},
            "time_window_info": None,
        }
        if info and info["rows"]:
            lo, hi = topic["start_index_timestamp"], topic["end_index_timestamp"]
            if lo is None:  # still uploading: range from the chunks indexed so far
                lo, hi = info["ts_min"], info["ts_max"]
            meta["data_info"]["interval"] = interval(lo, hi)
        meta["info"] = legacy.info_block(meta["data_info"])  # the older dialect's statistics
        if start is not None or end is not None:
            meta["time_window_info"] = self._window_info(topic, start, end)
        return TopicTicket(topic["locator_name"], start, end).encode(), meta

    def _window_info(self, topic, start: int | None, end: int | None) -> dict:
        rows, lo, hi = 0, None, None
        for c in self.catalog.chunks_of(topic["topic_id"], start, end):
            c_lo, c_hi = c["start_timestamp_ns"], c["end_timestamp_ns"]
            if c_lo is None:
                continue
            inside = (start is None or c_lo >= start) and (end is None or c_hi < end)
            if inside:
                n, a, b = c["row_count"], c_lo, c_hi
            else:
                n, a, b = self._count_in_file(c["data_file"], start, end)
            if n:
                rows += n
                lo = a if lo is None else min(lo, a)
                hi = b if hi is None else max(hi, b)
        return {"interval": interval(lo, hi), "row_count": rows}

    def _count_in_file(self, key: str, start, end) -> tuple[int, int | None, int | None]:
        pf = open_parquet(self.store, key)
        n, lo, hi = 0, None, None
        for batch in pf.iter_batches(columns=[TS], batch_size=1 << 20):
            ts = batch.column(0).to_numpy(zero_copy_only=False)
            mask = np.ones(len(ts), dtype=bool)
            if start is not None:
                mask &= ts >= start
            if end is not None:
                mask &= ts < end
            sel = ts[mask]
            if len(sel):
                n += len(sel)
                lo = int(sel.min()) if lo is None else min(lo, int(sel.min()))
                hi = int(sel.max()) if hi is None else max(hi, int(sel.max()))
        return n, lo, hi

    def returned_schema(self, locator: str) -> pa.Schema:
        """The schema GetSchema returns: the stored one with upstream's top-level view types."""
        return views.view_schema(self.topic_schema(self.catalog.topic(locator)))

    def read(self, ticket: TopicTicket, should_stop: Callable[[], bool] | None = None
             ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The DoGet stream of a ticket: its schema and batches, top-level string/binary columns
        as view types (mosaicod/views.py).  ``should_stop``: polled while reading; true ends the read."""
        topic = self.catalog.topic(ticket.locator)
        if topic["arrow_schema"] is None:
            raise errors.precondition(f"DoPut not called for topic `{ticket.locator}`: it has no data to read "
                                      "(upload data with DoPut first)")
        schema = self.topic_schema(topic)
        chunks = self.catalog.chunks_of(topic["topic_id"], ticket.start, ticket.end)
        if not chunks:
            return views.view_schema(schema), iter(())
        rows = sum(c["row_count"] for c in chunks) or 1
        arrow_bytes = sum(c["arrow_size_bytes"] or c["size_bytes"] for c in chunks)
        per_row = max(1, arrow_bytes // rows)
        batch_rows = max(1, min(self.settings.max_batch_size,
                                self.settings.target_grpc_encode_message_size // per_row))
        files = [(c["data_file"], c["timestamp_order"]) for c in chunks]
        batches = read_topic(self.store, files, schema, ticket.start, ticket.end, batch_rows=batch_rows,
                             should_stop=should_stop)
        return views.view_schema(schema), views.view_batches(_outages_in(batches, "reading the topic"), schema)


STOPPING = ("the server was stopped; every row received is kept in the interrupted topic: "
            "send the rest to a new topic once the server is back")
OUTAGES = STORE_OUTAGES + (sa.exc.OperationalError, sa.exc.InterfaceError)  # store or catalog down


@contextlib.contextmanager
def _outages(doing: str) -> Iterator[None]:
    """A store or catalog outage becomes a clear UNAVAILABLE (the detail goes to the log)."""
    try:
        yield
    except OUTAGES as exc:
        log.error(f"{doing} failed", error=errors.first_line(exc))
        raise errors.MosaicoError(errors.Kind.UNAVAILABLE,
                                  f"{doing} failed: the object store or the catalog database is unavailable; "
                                  "retry later") from None


def _outages_in(batches: Iterator[pa.RecordBatch], doing: str) -> Iterator[pa.RecordBatch]:
    with _outages(doing):
        yield from batches


class Upload:
    """One DoPut stream: batches go to rolling Parquet chunks, each indexed as it closes."""

    def __init__(self, service: Service, topic, folder: str, schema: pa.Schema, change: int | None = None):
        self.service = service
        self.change = change  # the pending upload (catalog/journal.py), cleared when it ends
        if change is not None:
            service.journal.active_uploads.add(change)
        self.topic = topic
        self.folder = folder
        self.schema = schema
        s = service.settings
        chunks = ChunkWriter(service.store, folder, schema, topic["serialization_format"],
                             max_chunk_size=s.max_chunk_size, row_group_bytes=s.row_group_size,
                             on_chunk=self._index_chunk)
        # encoding and store writes on a writer thread, overlapping the receiving of the next batches
        self.writer = BackgroundWriter(chunks, max_bytes=s.row_group_size, name=f"upload-{folder}")
        self.rows = 0
        self.bytes_in = 0
        self.ended = False  # finished or interrupted
        # chunks closed while the upload ends: indexed in the catalog step that ends it (None:
        # each chunk is indexed as it closes)
        self._held: list[dict] | None = None
        # write/finish/interrupt never overlap: a stopping server interrupts an idle stream from
        # another thread than the one reading it (MosaicoFlightServer.shutdown)
        self._lock = threading.Lock()

    def _index_chunk(self, chunk: ChunkInfo) -> None:
        crash_point("upload:chunk_stored")  # the chunk file is closed, not indexed yet
        row = {"ontology_tag": self.topic["ontology_tag"], "data_file": chunk.data_file,
               "size_bytes": chunk.size_bytes, "stats": chunk.stats}
        if self._held is not None:  # the upload is ending: indexed with its end, one catalog step
            self._held.append(row)
            return
        self.service.catalog.insert_chunk(topic_id=self.topic["topic_id"], **row)

    def write(self, batch: pa.RecordBatch) -> None:
        with self._lock:
            self._check_open()
            self._write(batch)

    def _check_open(self) -> None:
        if self.ended:  # interrupted meanwhile by the server's stop
            raise errors.MosaicoError(errors.Kind.UNAVAILABLE, STOPPING)

    def _write(self, batch: pa.RecordBatch) -> None:
        if not batch.schema.equals(self.schema, check_metadata=False):
            raise errors.bad_request("the batch schema differs from the schema sent at the start of the "
                                     "upload; send every batch of a topic with the same schema")
        nulls = batch.column(TS).null_count
        if nulls:
            raise errors.bad_request(f"{nulls} of the {batch.num_rows} rows of a batch have a null `timestamp_ns`; "
                                     "every row needs a timestamp (the batch was not stored)")
        self.rows += batch.num_rows
        self.bytes_in += batch.nbytes
        with _outages("storing the upload"):
            self.writer.write(batch)
        if self.writer.chunk_open and self.writer.chunks:
            crash_point("upload:chunk_open")  # a chunk is indexed; the next one has no footer yet

    def finish(self) -> None:
        """Clean end of stream: close the last chunk, commit the folder, then finalize the topic."""
        with self._lock, _outages("finishing the upload"):
            self._check_open()
            self._finish()

    def _finish(self) -> None:
        self._held = []  # the last chunk (and any closing meanwhile) is indexed by finalize_topic below
        chunks = self.writer.close()
        completed = now_ns()
        svc = self.service
        svc.store.put_json(layout.metadata_key(self.folder), svc._topic_doc(self.topic, completed))
        crash_point("upload:finishing")
        svc.store.put_json(layout.commit_key(self.folder),
                           commit_doc_for(chunks, state="finalized", committed_at_ns=completed))
        crash_point("upload:committed")
        try:
            svc.catalog.finalize_topic(self.topic["topic_id"], completed, self.change, chunks=self._held)
        except Exception:
            if not self._end_was_recorded(completed):
                raise
            # the COMMIT was applied, only its answer was lost: the upload ended, say so
            log.warning("the end of an upload was recorded although the database's answer was lost",
                        topic=self.topic["locator_name"])
        self.ended = True
        svc.journal.active_uploads.discard(self.change)

    def _end_was_recorded(self, completed_at_ns: int) -> bool:
        """Whether the catalog has this upload finalized at ``completed_at_ns`` (the time only this
        end writes): its finalizing step failed on the way back, yet was applied.  False when
        that cannot be read either (the failure is then reported as it is)."""
        try:
            topic = self.service.catalog.topic(self.topic["locator_name"])
        except Exception:  # noqa: BLE001 - the database is still away: report the first failure
            return False
        return (topic["topic_id"] == self.topic["topic_id"]
                and topic["completion_unix_tstamp"] == completed_at_ns)

    def interrupt(self, reason: str) -> None:
        """The stream broke (client gone, call cancelled, transport or server error): keep every
        row received -- the buffer is flushed and the open chunk closed and indexed like any
        other -- commit the folder as *interrupted*, then mark the topic (state ``interrupted``
        plus a topic notification).  Never raises: each step that fails is logged, and what the
        store holds is recovered at the next start."""
        with self._lock:
            if self.ended:
                return
            self.ended = True
            try:
                self._interrupt(reason)
            finally:  # whatever could not be recorded is completed by the recovery (mosaicod/recovery.py)
                self.service.journal.active_uploads.discard(self.change)

    def _interrupt(self, reason: str) -> None:
        svc, locator = self.service, self.topic["locator_name"]
        try:
            chunks = self.writer.close()
        except Exception as exc:  # noqa: BLE001 - the store or catalog failed under us
            log.error("could not store the rest of an interrupted upload", topic=locator,
                      error=errors.first_line(exc))
            try:
                self.writer.abort()  # the open file was never indexed: do not leave it behind
            except Exception as exc2:  # noqa: BLE001
                log.error("could not drop the open chunk file", topic=locator, error=errors.first_line(exc2))
            chunks = self.writer.chunks
        at = now_ns()
        kept = sum(c.row_count for c in chunks)
        message = (f"Upload interrupted after {self.rows} rows ({kept} stored and readable): {reason}. "
                   "Finalize the session to keep them, or delete the topic")

        def store_step() -> None:  # run by the catalog with the topic row locked, if still uploading
            svc.store.put_json(layout.metadata_key(self.folder), svc._topic_doc(self.topic, None))
            svc.store.put_json(layout.commit_key(self.folder),
                               commit_doc_for(chunks, state="interrupted", committed_at_ns=at, interrupted_at_ns=at))
            crash_point("upload:interrupt_committed")

        try:
            interrupted = svc.catalog.interrupt_upload(self.topic["topic_id"], at, message, self.change,
                                                       chunks=self._held or (), store_step=store_step)
        except Exception as exc:  # noqa: BLE001
            log.error("could not record an interrupted upload; the recovery will", topic=locator,
                      error=errors.first_line(exc))
            return
        if not interrupted:  # e.g. the end's COMMIT applied although its answer was lost
            log.warning("upload not interrupted: the catalog no longer has it uploading (finalized or deleted); "
                        "its store documents were left as they are", topic=locator, reason=reason)
            return
        log.warning("upload interrupted", topic=locator, rows_received=self.rows, rows_kept=kept,
                    chunks=len(chunks), reason=reason)
