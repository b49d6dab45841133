"""SQLAlchemy Core description of the catalog (STORAGE_AND_QUERY.md §3.2, plus our additions).

The schema itself is created by the Alembic migrations in ``migrations/``; this module only
describes it for queries.  Additions to upstream are marked "ours".
"""

import sqlalchemy as sa
from sqlalchemy import (BigInteger, Boolean, Column, Float, ForeignKey, Integer, LargeBinary,
                        MetaData, SmallInteger, Table, Text)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()

sequence_t = Table(
    "sequence_t", metadata,
    Column("sequence_id", Integer, primary_key=True),
    Column("sequence_uuid", UUID(as_uuid=True), nullable=False, unique=True),
    Column("locator_name", Text, nullable=False, unique=True),
    Column("user_metadata", JSONB),
    Column("path_in_store", Text, nullable=False),
    Column("creation_unix_tstamp", BigInteger, nullable=False),
)

session_t = Table(
    "session_t", metadata,
    Column("session_id", Integer, primary_key=True),
    Column("session_uuid", UUID(as_uuid=True), nullable=False, unique=True),
    Column("locator_name", Text, nullable=False, unique=True),
    Column("sequence_id", Integer, ForeignKey("sequence_t.sequence_id", ondelete="CASCADE"), nullable=False),
    Column("creation_unix_tstamp", BigInteger, nullable=False),
    Column("completion_unix_tstamp", BigInteger),
)

topic_t = Table(
    "topic_t", metadata,
    Column("topic_id", Integer, primary_key=True),
    Column("topic_uuid", UUID(as_uuid=True), nullable=False, unique=True),
    Column("sequence_id", Integer, ForeignKey("sequence_t.sequence_id", ondelete="CASCADE"), nullable=False),
    Column("session_id", Integer, ForeignKey("session_t.session_id", ondelete="CASCADE"), nullable=False),
    Column("locator_name", Text, nullable=False, unique=True),
    Column("user_metadata", JSONB),
    Column("path_in_store", Text),
    Column("serialization_format", Text, nullable=False),
    Column("ontology_tag", Text, nullable=False),
    Column("creation_unix_tstamp", BigInteger, nullable=False),
    Column("completion_unix_tstamp", BigInteger),
    Column("start_index_timestamp", BigInteger),
    Column("end_index_timestamp", BigInteger),
    Column("optimization_end_unix_tstamp", BigInteger),
    Column("arrow_schema", LargeBinary),  # ours: IPC-serialised do_put schema
    Column("interrupted_unix_tstamp", BigInteger),  # ours: when its DoPut stream broke (kept data)
)

sequence_notification_t = Table(
    "sequence_notification_t", metadata,
    Column("sequence_notification_id", Integer, primary_key=True),
    Column("sequence_notification_uuid", UUID(as_uuid=True), nullable=False, unique=True),
    Column("sequence_id", Integer, ForeignKey("sequence_t.sequence_id", ondelete="CASCADE"), nullable=False),
    Column("notification_type", Text, nullable=False),
    Column("msg", Text),
    Column("creation_unix_tstamp", BigInteger, nullable=False),
)

topic_notification_t = Table(
    "topic_notification_t", metadata,
    Column("topic_notification_id", Integer, primary_key=True),
    Column("topic_notification_uuid", UUID(as_uuid=True), nullable=False, unique=True),
    Column("topic_id", Integer, ForeignKey("topic_t.topic_id", ondelete="CASCADE"), nullable=False),
    Column("notification_type", Text, nullable=False),
    Column("msg", Text),
    Column("creation_unix_tstamp", BigInteger, nullable=False),
)

column_t = Table(
    "column_t", metadata,
    Column("column_id", Integer, primary_key=True),
    Column("column_name", Text, nullable=False),
    Column("ontology_tag", Text, nullable=False),
)

chunk_t = Table(
    "chunk_t", metadata,
    Column("chunk_id", Integer, primary_key=True),
    Column("chunk_uuid", UUID(as_uuid=True), nullable=False, unique=True),
    Column("topic_id", Integer, ForeignKey("topic_t.topic_id", ondelete="CASCADE"), nullable=False),
    Column("data_file", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("row_count", BigInteger, nullable=False),
    Column("arrow_size_bytes", BigInteger),
    Column("start_timestamp_ns", BigInteger),  # ours: exact min timestamp_ns in the file
    Column("end_timestamp_ns", BigInteger),  # ours: exact max timestamp_ns in the file
    Column("timestamp_order", SmallInteger),  # ours: store.chunks.Order of the rows (NULL: unknown)
)


def chunk_overlaps(start: int | None, end: int | None) -> list:
    """WHERE clauses keeping the chunks that may hold rows in ``[start, end)`` (a chunk without a
    recorded range is kept)."""
    clauses = []
    if start is not None:
        clauses.append(sa.or_(chunk_t.c.end_timestamp_ns.is_(None), chunk_t.c.end_timestamp_ns >= start))
    if end is not None:
        clauses.append(sa.or_(chunk_t.c.start_timestamp_ns.is_(None), chunk_t.c.start_timestamp_ns < end))
    return clauses

column_chunk_numeric_t = Table(
    "column_chunk_numeric_t", metadata,
    Column("column_id", Integer, ForeignKey("column_t.column_id"), primary_key=True),
    Column("chunk_id", Integer, ForeignKey("chunk_t.chunk_id", ondelete="CASCADE"), primary_key=True),
    Column("min_value", Float(53), nullable=False),
    Column("max_value", Float(53), nullable=False),
    Column("has_null", Boolean, nullable=False),
    Column("has_nan", Boolean, nullable=False),
)

column_chunk_textual_t = Table(
    "column_chunk_textual_t", metadata,
    Column("column_id", Integer, ForeignKey("column_t.column_id"), primary_key=True),
    Column("chunk_id", Integer, ForeignKey("chunk_t.chunk_id", ondelete="CASCADE"), primary_key=True),
    Column("min_value", Text, nullable=False),
    Column("max_value", Text, nullable=False),
    Column("has_null", Boolean, nullable=False),
)

api_key_t = Table(
    "api_key_t", metadata,
    Column("fingerprint", Text, primary_key=True),
    Column("payload_hash", LargeBinary, nullable=False),  # ours: hash only, never the key
    Column("permissions", SmallInteger, nullable=False),
    Column("description", Text, nullable=False),
    Column("creation_unix_timestamp", BigInteger, nullable=False),
    Column("expiration_unix_timestamp", BigInteger),
    Column("revocation_unix_timestamp", BigInteger),  # ours
)

instance_registry_t = Table(
    "instance_registry_t", metadata,
    Column("instance_id", Integer, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_unix_tstamp_secs", BigInteger, nullable=False),
    Column("last_heartbeat_unix_tstamp_secs", BigInteger, nullable=False),
    Column("one_shot", Boolean, nullable=False),
    Column("address", Text),  # ours: where a server listens
)

cleanup_log_t = Table(
    "cleanup_log_t", metadata,
    Column("cleanup_id", Integer, primary_key=True),
    Column("start_unix_tstamp_secs", BigInteger, nullable=False),
    Column("end_unix_tstamp_secs", BigInteger),
    Column("marked_folders", JSONB, nullable=False),
    Column("deleted_folders", JSONB, nullable=False),
    Column("failed_folders", JSONB, nullable=False),
    Column("instance_id", Integer, ForeignKey("instance_registry_t.instance_id", ondelete="SET NULL")),
)

topic_optimization_t = Table(
    "topic_optimization_t", metadata,
    Column("topic_id", Integer, ForeignKey("topic_t.topic_id", ondelete="CASCADE"), primary_key=True),
    Column("opt_path_in_store", Text),
    Column("start_unix_tstamp", BigInteger),
)

pending_change_t = Table(  # ours: changes written to the store, not yet to the catalog (catalog/journal.py)
    "pending_change_t", metadata,
    Column("change_id", Integer, primary_key=True),
    Column("owner", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("target", JSONB, nullable=False),
    Column("created_unix_tstamp", BigInteger, nullable=False),
)

# Tables rebuilt from the store by `rebuild-catalog` (replace mode truncates exactly these).
DERIVED_TABLES = (sequence_t, session_t, topic_t, chunk_t, column_t,
                  column_chunk_numeric_t, column_chunk_textual_t, topic_optimization_t)
