"""Build catalogs for query tests and benchmarks directly with the catalog/store code (many chunks
per topic, overlapping chunk time ranges), bypassing Flight."""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from mosaicod.catalog.db import migrate
from mosaicod.catalog.repo import Catalog
from mosaicod.store.objstore import ObjectStore
from mosaicod.store.stats import ChunkStats


def open_catalog(db_url: str, store_root: str) -> tuple[sa.Engine, ObjectStore, Catalog]:
    engine = sa.create_engine(db_url, pool_size=4)
    migrate(engine)
    return engine, ObjectStore.local(store_root), Catalog(engine)


def add_sequence(cat: Catalog, name: str, metadata: dict, created_at_ns: int | None = None) -> uuid.UUID:
    now = created_at_ns if created_at_ns is not None else time.time_ns()
    sid = cat.create_sequence(locator=name, uuid=uuid.uuid4(), user_metadata=metadata,
                              path_in_store="sq_" + uuid.uuid4().hex, created_at_ns=now)
    sess = uuid.uuid4()
    cat.create_session(sequence_id=sid, uuid=sess, locator=f"{name}:{uuid.uuid4().hex}", created_at_ns=now)
    return sess


def add_topic(cat: Catalog, store: ObjectStore, seq: str, session: uuid.UUID, path: str, tag: str,
              metadata: dict, schema: pa.Schema, chunks: list[pa.Table]) -> None:
    """One Parquet file per table in ``chunks`` (each sorted by timestamp_ns), with statistics."""
    locator = f"{seq}/{path}"
    tuuid = uuid.uuid4()
    cat.create_topic(session_uuid=session, locator=locator, uuid=tuuid, serialization_format="default",
                     ontology_tag=tag, user_metadata=metadata, created_at_ns=time.time_ns(),
                     sequence_locator=seq)
    topic_id = cat.topic(locator)["topic_id"]
    folder = "tp_" + uuid.uuid4().hex
    cat.set_upload_folder(topic_id, folder, schema.serialize().to_pybytes())
    for i, table in enumerate(chunks):
        table = table.cast(schema).sort_by("timestamp_ns")
        key = f"{folder}/data/{i:05d}.parquet"
        with store.open_write(key) as fh:
            pq.write_table(table, fh)
        stats = ChunkStats(schema)
        for batch in table.to_batches():
            stats.update(batch)
        cat.insert_chunk(topic_id=topic_id, ontology_tag=tag, data_file=key, size_bytes=store.size(key),
                         stats=stats)
    cat.finalize_topic(topic_id, time.time_ns())
