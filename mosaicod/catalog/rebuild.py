"""Bulk reads and writes of the data tables for ``rebuild-catalog`` (docs/operations.md#rebuilding-the-catalog).

Rows travel in a canonical form keyed by natural keys (locators, data-file keys, column names),
never by serial ids or chunk UUIDs, which the store does not keep: ``current_rows`` reads what the
catalog holds in that form, ``insert_rows`` writes it.  Notifications live only in the database;
``save_notifications`` / ``restore_notifications`` carry them across a replace by locator.
"""

from __future__ import annotations

import uuid as uuidlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .locks import REBUILD_LOCK_KEY
from .repo import column_ids
from .tables import (DERIVED_TABLES, chunk_t, column_chunk_numeric_t, column_chunk_textual_t, column_t,
                     sequence_notification_t, sequence_t, session_t, topic_notification_t, topic_t)

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


def stats_key(data_file: str, tag: str, column: str) -> str:
    """Natural key of one statistics row."""
    return f"{data_file}#{tag}.{column}"


@contextmanager
def exclusive(engine: Engine) -> Iterator[Connection | None]:
    """Hold the rebuild advisory lock for the block; yields its connection, or None when another
    rebuild holds it."""
    with engine.connect() as conn:
        got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(REBUILD_LOCK_KEY))).scalar()
        conn.commit()
        if not got:
            yield None
            return
        try:
            yield conn
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(REBUILD_LOCK_KEY)))
            conn.commit()


def truncate_data_tables(conn: Connection) -> None:
    """Empty every table rebuilt from the store (ids restart at 1)."""
    names = ", ".join(conn.dialect.identifier_preparer.quote(t.name) for t in DERIVED_TABLES)
    conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


def table_counts(conn: Connection) -> dict[str, int]:
    """Row counts of the data tables (for the report)."""
    tables = {t.name: t for t in DERIVED_TABLES}
    return {name: conn.execute(sa.select(sa.func.count()).select_from(tables[name])).scalar_one()
            for name in (*TABLE_ORDER, "column_t")}


def other_sequences(conn: Connection, known: list[str]) -> list[str]:
    """Sequences in the catalog that are not in ``known``."""
    q = sa.select(sequence_t.c.locator_name)
    if known:
        q = q.where(sequence_t.c.locator_name.not_in(known))
    return list(conn.execute(q).scalars())


def _s(v: Any) -> Any:
    return str(v) if isinstance(v, uuidlib.UUID) else v


def current_rows(conn: sa.Connection, sequence_locators: list[str]) -> Rows:
    """What the catalog holds for these sequences, in the canonical form of ``desired_rows``."""
    rows = Rows()
    if not sequence_locators:
        return rows
    for r in conn.execute(sa.select(sequence_t).where(sequence_t.c.locator_name.in_(sequence_locators))).mappings():
        rows.add("sequence_t", r["locator_name"], {
            "sequence_uuid": _s(r["sequence_uuid"]), "user_metadata": r["user_metadata"],
            "path_in_store": r["path_in_store"], "creation_unix_tstamp": r["creation_unix_tstamp"]})
    q = (sa.select(session_t, sequence_t.c.locator_name.label("sequence")).join(sequence_t, session_t.c.sequence_id == sequence_t.c.sequence_id)
         .where(sequence_t.c.locator_name.in_(sequence_locators)))
    for r in conn.execute(q).mappings():
        rows.add("session_t", r["locator_name"], {
            "session_uuid": _s(r["session_uuid"]), "sequence": r["sequence"],
            "creation_unix_tstamp": r["creation_unix_tstamp"], "completion_unix_tstamp": r["completion_unix_tstamp"]})
    q = (sa.select(topic_t, sequence_t.c.locator_name.label("sequence"), session_t.c.locator_name.label("session"))
         .join(sequence_t, topic_t.c.sequence_id == sequence_t.c.sequence_id).join(session_t, topic_t.c.session_id == session_t.c.session_id)
         .where(sequence_t.c.locator_name.in_(sequence_locators)))
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
    base = (sa.select(chunk_t.c.data_file, topic_t.c.locator_name.label("topic"))
            .join(topic_t, chunk_t.c.topic_id == topic_t.c.topic_id).join(sequence_t, topic_t.c.sequence_id == sequence_t.c.sequence_id)
            .where(sequence_t.c.locator_name.in_(sequence_locators)))
    q = base.add_columns(chunk_t.c.size_bytes, chunk_t.c.row_count, chunk_t.c.arrow_size_bytes,
                         chunk_t.c.start_timestamp_ns, chunk_t.c.end_timestamp_ns, chunk_t.c.timestamp_order)
    for r in conn.execute(q).mappings():
        rows.add("chunk_t", r["data_file"], {k: r[k] for k in ("topic", "size_bytes", "row_count", "arrow_size_bytes",
                                                               "start_timestamp_ns", "end_timestamp_ns",
                                                               "timestamp_order")})
    for table, stats in (("column_chunk_numeric_t", column_chunk_numeric_t),
                         ("column_chunk_textual_t", column_chunk_textual_t)):
        cols = [stats.c.min_value, stats.c.max_value, stats.c.has_null]
        if table == "column_chunk_numeric_t":
            cols.append(stats.c.has_nan)
        q = (sa.select(chunk_t.c.data_file, column_t.c.ontology_tag, column_t.c.column_name, *cols)
             .join(chunk_t, stats.c.chunk_id == chunk_t.c.chunk_id).join(column_t, stats.c.column_id == column_t.c.column_id)
             .join(topic_t, chunk_t.c.topic_id == topic_t.c.topic_id).join(sequence_t, topic_t.c.sequence_id == sequence_t.c.sequence_id)
             .where(sequence_t.c.locator_name.in_(sequence_locators)))
        for r in conn.execute(q).mappings():
            rows.add(table, stats_key(r["data_file"], r["ontology_tag"], r["column_name"]),
                     {c.name: r[c.name] for c in cols})
    return rows


def insert_rows(conn: sa.Connection, rows: Rows, *, chunk_uuid: Callable[[str], str],
            only: set[tuple[str, Any]] | None = None) -> None:
    """Insert canonical rows in the caller's transaction: all of them, or only the (table, key)
    pairs in ``only`` (merge mode; parents not inserted here are looked up once each).
    ``chunk_uuid(data_file)`` names each new chunk (the store keeps no chunk uuid)."""

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
            params.append({"chunk_uuid": chunk_uuid(key), "topic_id": tid, "data_file": key,
                           "size_bytes": r["size_bytes"], "row_count": r["row_count"],
                           "arrow_size_bytes": r["arrow_size_bytes"],
                           "start_timestamp_ns": r["start_timestamp_ns"], "end_timestamp_ns": r["end_timestamp_ns"],
                           "timestamp_order": r["timestamp_order"]})
        res = conn.execute(sa.insert(chunk_t).returning(chunk_t.c.chunk_id, chunk_t.c.data_file,
                                                        sort_by_parameter_order=True), params)
        for cid, key in res:
            chunk_ids[key] = cid
    stats_rows = []  # (table, data_file, tag, column name, values)
    for table, t in (("column_chunk_numeric_t", column_chunk_numeric_t),
                     ("column_chunk_textual_t", column_chunk_textual_t)):
        for key, r in rows.tables[table].items():
            if wanted(table, key):
                data_file, _, col = key.partition("#")
                tag = chunk_tag[data_file]
                stats_rows.append((t, data_file, tag, col[len(tag) + 1:], r))
    names_by_tag: dict[str, set[str]] = {}
    for _, _, tag, name, _ in stats_rows:
        names_by_tag.setdefault(tag, set()).add(name)
    ids = {tag: column_ids(conn, tag, names) for tag, names in names_by_tag.items()}
    params_by_table: dict[sa.Table, list[dict]] = {}
    for t, data_file, tag, name, r in stats_rows:
        cid = chunk_ids.get(data_file)
        if cid is None:
            cid = chunk_ids[data_file] = conn.execute(
                sa.select(chunk_t.c.chunk_id).where(chunk_t.c.data_file == data_file)).scalar_one()
        params_by_table.setdefault(t, []).append({"column_id": ids[tag][name], "chunk_id": cid, **r})
    for t, params in params_by_table.items():
        conn.execute(sa.insert(t), params)


def _json(v: Any) -> Any:
    return sa.null() if v is None else v


def save_notifications(conn: sa.Connection) -> list[tuple[str, dict]]:
    out = []
    q = sa.select(sequence_notification_t, sequence_t.c.locator_name).join(
        sequence_t, sequence_notification_t.c.sequence_id == sequence_t.c.sequence_id)
    for r in conn.execute(q).mappings():
        out.append(("sequence", dict(r)))
    q = sa.select(topic_notification_t, topic_t.c.locator_name).join(topic_t, topic_notification_t.c.topic_id == topic_t.c.topic_id)
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
