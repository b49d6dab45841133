"""Catalog side of a rebuild: the rows a sequence should have (from the plan + decoded files), the
rows it has (read back from PostgreSQL), their difference, and the inserts.

Rows are compared in a canonical form keyed by natural keys (locators, data-file keys, column
names), never by serial ids or chunk UUIDs, which the store does not keep.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from ..catalog.tables import (chunk_t, column_chunk_numeric_t, column_chunk_textual_t, column_t,
                              sequence_notification_t, sequence_t, session_t, topic_notification_t,
                              topic_t)
from .decode import FileResult
from .plan import SequencePlan, TopicPlan, stable_uuid
from .scan import Problem

TABLE_ORDER = ("sequence_t", "session_t", "topic_t", "chunk_t", "column_chunk_numeric_t",
               "column_chunk_textual_t")


@dataclass
class Rows:
    """Canonical rows of one or more sequences: table -> natural key -> {column: value}."""

    tables: dict[str, dict[Any, dict]] = field(default_factory=lambda: {t: {} for t in TABLE_ORDER})
    inexact: dict[tuple[str, Any], set[str]] = field(default_factory=dict)  # fields not comparable

    def add(self, table: str, key: Any, row: dict, inexact: set[str] | None = None) -> None:
        self.tables[table][key] = row
        if inexact:
            self.inexact[(table, key)] = inexact


def _stats_key(data_file: str, tag: str, column: str) -> str:
    return f"{data_file}#{tag}.{column}"


def desired_rows(seq: SequencePlan, sessions: list, topics: list[TopicPlan],
                 results: dict[str, FileResult], problems: list[Problem]) -> Rows:
    """Rows the catalog should hold for one sequence; updates topic time ranges and schemas."""
    rows = Rows()
    rows.add("sequence_t", seq.locator, {"sequence_uuid": seq.uuid, "user_metadata": seq.user_metadata,
                                         "path_in_store": seq.path_in_store,
                                         "creation_unix_tstamp": seq.created})
    for s in sessions:
        rows.add("session_t", s.locator, {"session_uuid": s.uuid, "sequence": s.sequence,
                                          "creation_unix_tstamp": s.created,
                                          "completion_unix_tstamp": s.completed})
    for t in topics:
        schema_bytes = t.schema_bytes
        schema = _read_schema(schema_bytes)
        lo = hi = None
        for fp in t.files:
            r = results.get(fp.key)
            if r is None or r.error:
                continue
            if r.row_count == 0:
                problems.append(Problem("empty-file", fp.key, "zero-row data file: no chunk row"))
                continue
            file_schema = _read_schema(r.schema_bytes)
            if schema is None:
                schema, schema_bytes = file_schema, r.schema_bytes
            elif file_schema is not None and not file_schema.equals(schema, check_metadata=False):
                problems.append(Problem("schema-mismatch", fp.key, "schema differs from the topic's; indexed anyway"))
            c = fp.committed or {}
            exact_arrow = isinstance(c.get("arrow_size_bytes"), int)
            rows.add("chunk_t", fp.key, {
                "topic": t.locator, "size_bytes": fp.size, "row_count": r.row_count,
                "arrow_size_bytes": c["arrow_size_bytes"] if exact_arrow else r.arrow_size_bytes,
                "start_timestamp_ns": r.ts_min, "end_timestamp_ns": r.ts_max, "timestamp_order": r.ts_order,
            }, None if exact_arrow else {"arrow_size_bytes"})
            if isinstance(c.get("row_count"), int) and c["row_count"] != r.row_count:
                problems.append(Problem("commit-mismatch", fp.key,
                                        f"_COMMIT.json says {c['row_count']} rows, file has {r.row_count}"))
            for name, st in r.columns.items():
                table = "column_chunk_numeric_t" if st["kind"] == "numeric" else "column_chunk_textual_t"
                row = {k: v for k, v in st.items() if k != "kind"}
                rows.add(table, _stats_key(fp.key, t.ontology_tag, name), row)
            if r.ts_min is not None:
                lo = r.ts_min if lo is None else min(lo, r.ts_min)
                hi = r.ts_max if hi is None else max(hi, r.ts_max)
        rows.add("topic_t", t.locator, {
            "topic_uuid": t.uuid, "sequence": t.sequence, "session": t.session,
            "user_metadata": t.user_metadata, "path_in_store": t.path_in_store,
            "serialization_format": t.serialization_format, "ontology_tag": t.ontology_tag,
            "creation_unix_tstamp": t.created, "completion_unix_tstamp": t.completed,
            "start_index_timestamp": lo, "end_index_timestamp": hi,
            "optimization_end_unix_tstamp": t.optimization_end, "arrow_schema": schema_bytes,
            "interrupted_unix_tstamp": t.interrupted,
        }, {"optimization_end_unix_tstamp"})
    return rows


def _read_schema(b: bytes | None) -> pa.Schema | None:
    if not b:
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(b))
    except Exception:  # noqa: BLE001
        return None


def _s(v: Any) -> Any:
    return str(v) if isinstance(v, uuidlib.UUID) else v


def current_rows(conn: sa.Connection, sequence_locators: list[str]) -> Rows:
    """What the catalog holds for these sequences, in the canonical form of ``desired_rows``."""
    rows = Rows()
    if not sequence_locators:
        return rows
    sq, se, tp, ch, co = sequence_t, session_t, topic_t, chunk_t, column_t
    for r in conn.execute(sa.select(sq).where(sq.c.locator_name.in_(sequence_locators))).mappings():
        rows.add("sequence_t", r["locator_name"], {
            "sequence_uuid": _s(r["sequence_uuid"]), "user_metadata": r["user_metadata"],
            "path_in_store": r["path_in_store"], "creation_unix_tstamp": r["creation_unix_tstamp"]})
    q = (sa.select(se, sq.c.locator_name.label("sequence")).join(sq, se.c.sequence_id == sq.c.sequence_id)
         .where(sq.c.locator_name.in_(sequence_locators)))
    for r in conn.execute(q).mappings():
        rows.add("session_t", r["locator_name"], {
            "session_uuid": _s(r["session_uuid"]), "sequence": r["sequence"],
            "creation_unix_tstamp": r["creation_unix_tstamp"], "completion_unix_tstamp": r["completion_unix_tstamp"]})
    q = (sa.select(tp, sq.c.locator_name.label("sequence"), se.c.locator_name.label("session"))
         .join(sq, tp.c.sequence_id == sq.c.sequence_id).join(se, tp.c.session_id == se.c.session_id)
         .where(sq.c.locator_name.in_(sequence_locators)))
    for r in conn.execute(q).mappings():
        rows.add("topic_t", r["locator_name"], {
            "topic_uuid": _s(r["topic_uuid"]), "sequence": r["sequence"], "session": r["session"],
            "user_metadata": r["user_metadata"], "path_in_store": r["path_in_store"],
            "serialization_format": r["serialization_format"], "ontology_tag": r["ontology_tag"],
            "creation_unix_tstamp": r["creation_unix_tstamp"], "completion_unix_tstamp": r["completion_unix_tstamp"],
            "start_index_timestamp": r["start_index_timestamp"], "end_index_timestamp": r["end_index_timestamp"],
            "optimization_end_unix_tstamp": r["optimization_end_unix_tstamp"],
            "arrow_schema": bytes(r["arrow_schema"]) if r["arrow_schema"] is not None else None,
            "interrupted_unix_tstamp": r["interrupted_unix_tstamp"]})
    base = (sa.select(ch.c.data_file, tp.c.locator_name.label("topic"))
            .join(tp, ch.c.topic_id == tp.c.topic_id).join(sq, tp.c.sequence_id == sq.c.sequence_id)
            .where(sq.c.locator_name.in_(sequence_locators)))
    q = base.add_columns(ch.c.size_bytes, ch.c.row_count, ch.c.arrow_size_bytes, ch.c.start_timestamp_ns,
                         ch.c.end_timestamp_ns, ch.c.timestamp_order)
    for r in conn.execute(q).mappings():
        rows.add("chunk_t", r["data_file"], {k: r[k] for k in ("topic", "size_bytes", "row_count", "arrow_size_bytes",
                                                               "start_timestamp_ns", "end_timestamp_ns",
                                                               "timestamp_order")})
    for table, stats in (("column_chunk_numeric_t", column_chunk_numeric_t),
                         ("column_chunk_textual_t", column_chunk_textual_t)):
        cols = [stats.c.min_value, stats.c.max_value, stats.c.has_null]
        if table == "column_chunk_numeric_t":
            cols.append(stats.c.has_nan)
        q = (sa.select(ch.c.data_file, co.c.ontology_tag, co.c.column_name, *cols)
             .join(ch, stats.c.chunk_id == ch.c.chunk_id).join(co, stats.c.column_id == co.c.column_id)
             .join(tp, ch.c.topic_id == tp.c.topic_id).join(sq, tp.c.sequence_id == sq.c.sequence_id)
             .where(sq.c.locator_name.in_(sequence_locators)))
        for r in conn.execute(q).mappings():
            rows.add(table, _stats_key(r["data_file"], r["ontology_tag"], r["column_name"]),
                     {c.name: r[c.name] for c in cols})
    return rows


def diff(want: Rows, have: Rows) -> list[dict]:
    """Differences, table by table: missing_in_catalog / only_in_catalog / different."""
    out: list[dict] = []
    for table in TABLE_ORDER:
        w, h = want.tables[table], have.tables[table]
        for key in sorted(w.keys() - h.keys(), key=str):
            out.append({"table": table, "key": key, "change": "missing_in_catalog"})
        for key in sorted(h.keys() - w.keys(), key=str):
            if table == "topic_t" and h[key].get("path_in_store") is None:
                continue  # created but never uploaded: no folder exists, cannot be restored (known limit)
            out.append({"table": table, "key": key, "change": "only_in_catalog"})
        for key in sorted(w.keys() & h.keys(), key=str):
            skip = want.inexact.get((table, key), set())
            fields = {c: {"catalog": _show(h[key].get(c)), "store": _show(v)}
                      for c, v in w[key].items() if c not in skip and h[key].get(c) != v}
            if fields:
                out.append({"table": table, "key": key, "change": "different", "fields": fields})
    return out


def _show(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(v))} bytes>"
    return v


# -- writing ---------------------------------------------------------------------------------------

class Loader:
    """Inserts canonical rows (all of them, or only the missing ones in merge mode)."""

    def __init__(self) -> None:
        self._columns: dict[tuple[str, str], int] = {}

    def reset_cache(self) -> None:
        self._columns.clear()

    def column_id(self, conn: sa.Connection, name: str, tag: str) -> int:
        key = (name, tag)
        cid = self._columns.get(key)
        if cid is None:
            cid = conn.execute(sa.text(
                "INSERT INTO column_t (column_name, ontology_tag) VALUES (:n, :t) "
                "ON CONFLICT (column_name, ontology_tag) DO UPDATE SET column_name = EXCLUDED.column_name "
                "RETURNING column_id"), {"n": name, "t": tag}).scalar_one()
            self._columns[key] = cid
        return cid

    def insert(self, conn: sa.Connection, rows: Rows, only: set[tuple[str, Any]] | None = None) -> None:
        """Insert rows (``only``: the (table, key) pairs to insert; parents not inserted here are looked
        up once each and remembered)."""

        def wanted(table: str, key: Any) -> bool:
            return only is None or (table, key) in only

        seq_ids = {}
        for loc, r in rows.tables["sequence_t"].items():
            if wanted("sequence_t", loc):
                seq_ids[loc] = conn.execute(sa.insert(sequence_t).values(
                    sequence_uuid=r["sequence_uuid"], locator_name=loc, user_metadata=_json(r["user_metadata"]),
                    path_in_store=r["path_in_store"], creation_unix_tstamp=r["creation_unix_tstamp"])
                    .returning(sequence_t.c.sequence_id)).scalar_one()
            else:
                seq_ids[loc] = conn.execute(sa.select(sequence_t.c.sequence_id)
                                            .where(sequence_t.c.locator_name == loc)).scalar_one()
        sess_ids = {}
        for loc, r in rows.tables["session_t"].items():
            if wanted("session_t", loc):
                sess_ids[loc] = conn.execute(sa.insert(session_t).values(
                    session_uuid=r["session_uuid"], locator_name=loc, sequence_id=seq_ids[r["sequence"]],
                    creation_unix_tstamp=r["creation_unix_tstamp"],
                    completion_unix_tstamp=r["completion_unix_tstamp"]).returning(session_t.c.session_id)).scalar_one()
        topic_ids, topic_tags = {}, {}
        for loc, r in rows.tables["topic_t"].items():
            topic_tags[loc] = r["ontology_tag"]
            if not wanted("topic_t", loc):
                continue
            sid = sess_ids.get(r["session"])
            if sid is None:
                sid = sess_ids[r["session"]] = conn.execute(
                    sa.select(session_t.c.session_id).where(session_t.c.locator_name == r["session"])).scalar_one()
            topic_ids[loc] = conn.execute(sa.insert(topic_t).values(
                topic_uuid=r["topic_uuid"], sequence_id=seq_ids[r["sequence"]], session_id=sid, locator_name=loc,
                user_metadata=_json(r["user_metadata"]), path_in_store=r["path_in_store"],
                serialization_format=r["serialization_format"], ontology_tag=r["ontology_tag"],
                creation_unix_tstamp=r["creation_unix_tstamp"], completion_unix_tstamp=r["completion_unix_tstamp"],
                start_index_timestamp=r["start_index_timestamp"], end_index_timestamp=r["end_index_timestamp"],
                optimization_end_unix_tstamp=r["optimization_end_unix_tstamp"], arrow_schema=r["arrow_schema"],
                interrupted_unix_tstamp=r["interrupted_unix_tstamp"])
                .returning(topic_t.c.topic_id)).scalar_one()
        chunk_ids, chunk_tag = {}, {}
        new_chunks = [(k, r) for k, r in rows.tables["chunk_t"].items() if wanted("chunk_t", k)]
        for key, r in rows.tables["chunk_t"].items():
            chunk_tag[key] = topic_tags[r["topic"]]
        if new_chunks:
            params = []
            for key, r in new_chunks:
                tid = topic_ids.get(r["topic"])
                if tid is None:
                    tid = topic_ids[r["topic"]] = conn.execute(
                        sa.select(topic_t.c.topic_id).where(topic_t.c.locator_name == r["topic"])).scalar_one()
                params.append({"chunk_uuid": stable_uuid("chunk", key), "topic_id": tid, "data_file": key,
                               "size_bytes": r["size_bytes"], "row_count": r["row_count"],
                               "arrow_size_bytes": r["arrow_size_bytes"],
                               "start_timestamp_ns": r["start_timestamp_ns"], "end_timestamp_ns": r["end_timestamp_ns"],
                               "timestamp_order": r["timestamp_order"]})
            res = conn.execute(sa.insert(chunk_t).returning(chunk_t.c.chunk_id, chunk_t.c.data_file,
                                                            sort_by_parameter_order=True), params)
            for cid, key in res:
                chunk_ids[key] = cid
        for table, t in (("column_chunk_numeric_t", column_chunk_numeric_t),
                         ("column_chunk_textual_t", column_chunk_textual_t)):
            params = []
            for key, r in rows.tables[table].items():
                if not wanted(table, key):
                    continue
                data_file, _, col = key.partition("#")
                tag = chunk_tag[data_file]
                name = col[len(tag) + 1:]
                cid = chunk_ids.get(data_file)
                if cid is None:
                    cid = chunk_ids[data_file] = conn.execute(
                        sa.select(chunk_t.c.chunk_id).where(chunk_t.c.data_file == data_file)).scalar_one()
                params.append({"column_id": self.column_id(conn, name, tag), "chunk_id": cid, **r})
            if params:
                conn.execute(sa.insert(t), params)


def _json(v: Any) -> Any:
    return sa.null() if v is None else v


# -- notifications survive a replace (re-attached by locator) ------------------------------------

def save_notifications(conn: sa.Connection) -> list[tuple[str, dict]]:
    sq, tp = sequence_t, topic_t
    out = []
    q = sa.select(sequence_notification_t, sq.c.locator_name).join(
        sq, sequence_notification_t.c.sequence_id == sq.c.sequence_id)
    for r in conn.execute(q).mappings():
        out.append(("sequence", dict(r)))
    q = sa.select(topic_notification_t, tp.c.locator_name).join(tp, topic_notification_t.c.topic_id == tp.c.topic_id)
    for r in conn.execute(q).mappings():
        out.append(("topic", dict(r)))
    return out


def restore_notifications(conn: sa.Connection, saved: list[tuple[str, dict]]) -> list[str]:
    """Re-insert saved notifications whose resource still exists; returns the locators dropped."""
    dropped = []
    for kind, r in saved:
        table, parent = (sequence_notification_t, sequence_t) if kind == "sequence" else (topic_notification_t, topic_t)
        pid = conn.execute(sa.select(parent.c[f"{kind}_id"]).where(parent.c.locator_name == r["locator_name"])).scalar()
        if pid is None:
            dropped.append(r["locator_name"])
            continue
        values = {c.name: r[c.name] for c in table.columns}
        values[f"{kind}_id"] = pid
        conn.execute(sa.insert(table).values(**values))
    for table, pk in ((sequence_notification_t, "sequence_notification_id"),
                      (topic_notification_t, "topic_notification_id")):
        conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table.name}', '{pk}'), "
                             f"COALESCE((SELECT max({pk}) FROM {table.name}), 0) + 1, false)"))
    return dropped
