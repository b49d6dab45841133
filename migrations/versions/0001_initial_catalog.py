"""Initial catalog: the upstream 0.7 end-state schema plus our columns (docs/storage.md#catalog-schema).

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE sequence_t (
    sequence_id          SERIAL PRIMARY KEY,
    sequence_uuid        UUID   NOT NULL UNIQUE,
    locator_name         TEXT   NOT NULL UNIQUE,
    user_metadata        JSONB,
    path_in_store        TEXT   NOT NULL,
    creation_unix_tstamp BIGINT NOT NULL
);
CREATE TABLE session_t (
    session_id             SERIAL PRIMARY KEY,
    session_uuid           UUID    NOT NULL UNIQUE,
    locator_name           TEXT    NOT NULL UNIQUE,
    sequence_id            INTEGER NOT NULL REFERENCES sequence_t(sequence_id) ON DELETE CASCADE,
    creation_unix_tstamp   BIGINT  NOT NULL,
    completion_unix_tstamp BIGINT
);
CREATE INDEX session_t_sequence_id_idx ON session_t(sequence_id);
CREATE TABLE topic_t (
    topic_id                     SERIAL PRIMARY KEY,
    topic_uuid                   UUID    NOT NULL UNIQUE,
    sequence_id                  INTEGER NOT NULL REFERENCES sequence_t(sequence_id) ON DELETE CASCADE,
    session_id                   INTEGER NOT NULL REFERENCES session_t(session_id) ON DELETE CASCADE,
    locator_name                 TEXT    NOT NULL UNIQUE,
    user_metadata                JSONB,
    path_in_store                TEXT,
    serialization_format         TEXT    NOT NULL,
    ontology_tag                 TEXT    NOT NULL,
    creation_unix_tstamp         BIGINT  NOT NULL,
    completion_unix_tstamp       BIGINT,
    start_index_timestamp        BIGINT,
    end_index_timestamp          BIGINT,
    optimization_end_unix_tstamp BIGINT,
    arrow_schema                 BYTEA
);
CREATE INDEX topic_t_session_id_idx ON topic_t(session_id);
CREATE INDEX topic_t_sequence_id_idx ON topic_t(sequence_id);
CREATE INDEX topic_t_ontology_tag_idx ON topic_t(ontology_tag);
CREATE TABLE sequence_notification_t (
    sequence_notification_id   SERIAL PRIMARY KEY,
    sequence_notification_uuid UUID    NOT NULL UNIQUE,
    sequence_id                INTEGER NOT NULL REFERENCES sequence_t(sequence_id) ON DELETE CASCADE,
    notification_type          TEXT    NOT NULL,
    msg                        TEXT,
    creation_unix_tstamp       BIGINT  NOT NULL
);
CREATE INDEX sequence_notification_t_sequence_id_idx ON sequence_notification_t(sequence_id);
CREATE TABLE topic_notification_t (
    topic_notification_id   SERIAL PRIMARY KEY,
    topic_notification_uuid UUID    NOT NULL UNIQUE,
    topic_id                INTEGER NOT NULL REFERENCES topic_t(topic_id) ON DELETE CASCADE,
    notification_type       TEXT    NOT NULL,
    msg                     TEXT,
    creation_unix_tstamp    BIGINT  NOT NULL
);
CREATE INDEX topic_notification_t_topic_id_idx ON topic_notification_t(topic_id);
CREATE TABLE column_t (
    column_id    SERIAL PRIMARY KEY,
    column_name  TEXT NOT NULL,
    ontology_tag TEXT NOT NULL,
    UNIQUE (column_name, ontology_tag)
);
CREATE TABLE chunk_t (
    chunk_id           SERIAL PRIMARY KEY,
    chunk_uuid         UUID    NOT NULL UNIQUE,
    topic_id           INTEGER NOT NULL REFERENCES topic_t(topic_id) ON DELETE CASCADE,
    data_file          TEXT    NOT NULL,
    size_bytes         BIGINT  NOT NULL,
    row_count          BIGINT  NOT NULL,
    arrow_size_bytes   BIGINT,
    start_timestamp_ns BIGINT,
    end_timestamp_ns   BIGINT
);
CREATE INDEX chunk_t_topic_id_idx ON chunk_t(topic_id);
CREATE TABLE column_chunk_numeric_t (
    column_id INTEGER          NOT NULL REFERENCES column_t(column_id),
    chunk_id  INTEGER          NOT NULL REFERENCES chunk_t(chunk_id) ON DELETE CASCADE,
    min_value DOUBLE PRECISION NOT NULL,
    max_value DOUBLE PRECISION NOT NULL,
    has_null  BOOLEAN          NOT NULL,
    has_nan   BOOLEAN          NOT NULL,
    PRIMARY KEY (column_id, chunk_id)
);
CREATE INDEX column_chunk_numeric_t_chunk_id_idx ON column_chunk_numeric_t(chunk_id);
CREATE TABLE column_chunk_textual_t (
    column_id INTEGER NOT NULL REFERENCES column_t(column_id),
    chunk_id  INTEGER NOT NULL REFERENCES chunk_t(chunk_id) ON DELETE CASCADE,
    min_value TEXT COLLATE "C" NOT NULL,
    max_value TEXT COLLATE "C" NOT NULL,
    has_null  BOOLEAN NOT NULL,
    PRIMARY KEY (column_id, chunk_id)
);
CREATE INDEX column_chunk_textual_t_chunk_id_idx ON column_chunk_textual_t(chunk_id);
CREATE TABLE api_key_t (
    fingerprint               TEXT     PRIMARY KEY,
    payload_hash              BYTEA    NOT NULL,
    permissions               SMALLINT NOT NULL CHECK (permissions BETWEEN 0 AND 255),
    description               TEXT     NOT NULL,
    creation_unix_timestamp   BIGINT   NOT NULL,
    expiration_unix_timestamp BIGINT,
    revocation_unix_timestamp BIGINT
);
CREATE TABLE instance_registry_t (
    instance_id                     SERIAL  PRIMARY KEY,
    kind                            TEXT    NOT NULL,
    hostname                        TEXT    NOT NULL,
    pid                             INTEGER NOT NULL,
    started_unix_tstamp_secs        BIGINT  NOT NULL,
    last_heartbeat_unix_tstamp_secs BIGINT  NOT NULL,
    one_shot                        BOOLEAN NOT NULL DEFAULT false,
    address                         TEXT
);
CREATE INDEX instance_registry_last_heartbeat_idx ON instance_registry_t(last_heartbeat_unix_tstamp_secs);
CREATE TABLE cleanup_log_t (
    cleanup_id             SERIAL PRIMARY KEY,
    start_unix_tstamp_secs BIGINT NOT NULL,
    end_unix_tstamp_secs   BIGINT,
    marked_folders         JSONB  NOT NULL,
    deleted_folders        JSONB  NOT NULL,
    failed_folders         JSONB  NOT NULL,
    instance_id            INTEGER REFERENCES instance_registry_t(instance_id) ON DELETE SET NULL
);
CREATE TABLE topic_optimization_t (
    topic_id          INT PRIMARY KEY REFERENCES topic_t(topic_id) ON DELETE CASCADE,
    opt_path_in_store TEXT,
    start_unix_tstamp BIGINT
);
CREATE OR REPLACE FUNCTION mosaico_regex_match(value TEXT, pattern TEXT) RETURNS BOOLEAN
    AS $$ SELECT value ~ pattern $$ LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
"""

DOWNGRADE = """
DROP FUNCTION IF EXISTS mosaico_regex_match(TEXT, TEXT);
DROP TABLE IF EXISTS topic_optimization_t, cleanup_log_t, instance_registry_t, api_key_t,
    column_chunk_textual_t, column_chunk_numeric_t, chunk_t, column_t, topic_notification_t,
    sequence_notification_t, topic_t, session_t, sequence_t CASCADE;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
