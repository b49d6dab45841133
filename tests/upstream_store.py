"""Test helpers that write stores by hand, as the servers write them (docs/storage.md#object-store-layout):

* ``write_upstream_store``: a store as upstream mosaicod 0.7 writes it — anonymous
  ``sq_<ULID>/metadata.json`` = ``{"user_metadata": ...}``, ``tp_<ULID>/metadata.json`` in the 0.7
  shape (no catalog block), one Parquet file per do_put batch in ``data/NNNNN.parquet``, no
  schema/commit/session files; plus an optimizer duplicate (same topic, two folders), a crashed
  optimizer copy (fewer rows), a folder marked ``TO_DELETE`` and a legacy ``manifest.json`` topic.
* ``write_topic_v1``: one topic folder in our layout v1 (for damage tests).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from ulid import ULID

from mosaicod.store import layout
from mosaicod.store.objstore import ObjectStore

MS = 1_000_000
T0_MS = 1_767_225_600_000  # 2026-01-01


def folder_at(prefix: str, ms: int) -> str:
    return prefix + str(ULID.from_timestamp(ms / 1000))


def imu_table(n: int, start_ns: int, seed: float = 0.0) -> pa.Table:
    return pa.table({
        "timestamp_ns": pa.array([start_ns + i * 1000 for i in range(n)], pa.int64()),
        "acceleration": pa.array([{"x": seed + i, "y": -float(i), "z": 9.81} for i in range(n)],
                                 pa.struct([("x", pa.float64()), ("y", pa.float64()), ("z", pa.float64())])),
        "frame_id": pa.array([f"f{i % 3}" for i in range(n)], pa.string()),
    })


def write_parquet(store: ObjectStore, key: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.put_bytes(key, sink.getvalue().to_pybytes())


def upstream_topic_doc(locator: str, session_locator: str, created: int, completed: int | None,
                       tag: str = "IMU", fmt: str = "default", user_metadata=None) -> dict:
    return {"properties": {"created_at": created, "completed_at": completed, "session_locator": session_locator,
                           "resource_locator": locator},
            "ontology_metadata": {"properties": {"serialization_format": fmt, "ontology_tag": tag},
                                  "user_metadata": user_metadata},
            "interval_props": None}


@dataclass
class UpstreamStore:
    sequences: dict[str, str] = field(default_factory=dict)  # name -> sq_ folder (ground truth)
    topics: dict[str, str] = field(default_factory=dict)  # locator -> chosen tp_ folder
    rows: dict[str, int] = field(default_factory=dict)  # locator -> row count
    orphaned: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)


def write_upstream_store(store: ObjectStore) -> UpstreamStore:
    out = UpstreamStore()
    # two sequences, created 1 s apart; sessions start 100 ms after their sequence
    for k, (name, meta) in enumerate([("alpha", {"site": "A"}), ("beta", {"site": "B", "n": 2})]):
        seq_ms = T0_MS + k * 1000
        sq = folder_at("sq_", seq_ms)
        store.put_json(layout.metadata_key(sq), {"user_metadata": meta})
        out.sequences[name] = sq
        sess = f"{name}:{ULID.from_timestamp((seq_ms + 100) / 1000)}"
        tp = folder_at("tp_", seq_ms + 200)
        loc = f"{name}/imu"
        store.put_json(layout.metadata_key(tp), upstream_topic_doc(
            loc, sess, (seq_ms + 150) * MS, (seq_ms + 500) * MS, user_metadata={"vendor": name}))
        for i in range(3):  # one file per do_put batch
            write_parquet(store, layout.data_key(tp, i), imu_table(50, (seq_ms + i) * MS, seed=k))
        out.topics[loc], out.rows[loc] = tp, 150
    # alpha/imu was optimized: a complete copy in a newer folder (same rows, one file) ...
    old = out.topics["alpha/imu"]
    doc = store.get_json(layout.metadata_key(old))
    new = folder_at("tp_", T0_MS + 50_000)
    store.put_json(layout.metadata_key(new), doc)
    write_parquet(store, layout.data_key(new, 0), pa.concat_tables(
        [pq.read_table(store.open_read(layout.data_key(old, i))) for i in range(3)]))
    # ... and a crashed optimizer copy, even newer, with fewer rows
    crashed = folder_at("tp_", T0_MS + 60_000)
    store.put_json(layout.metadata_key(crashed), doc)
    write_parquet(store, layout.data_key(crashed, 0), imu_table(10, T0_MS * MS))
    out.topics["alpha/imu"] = new
    out.orphaned += [old, crashed]
    # a deleted sequence whose cleanup already marked it
    dead = folder_at("sq_", T0_MS + 5000)
    store.put_json(layout.metadata_key(dead), {"user_metadata": {"site": "gone"}})
    store.put_bytes(layout.to_delete_key(dead), b"")
    out.dead.append(dead)
    # a legacy manifest.json topic of a sequence without any folder (session_uuid shape)
    legacy = folder_at("tp_", T0_MS + 9000)
    legacy_doc = upstream_topic_doc("gamma/old/imu", "", (T0_MS + 9000) * MS, (T0_MS + 9100) * MS)
    del legacy_doc["properties"]["session_locator"]
    legacy_doc["properties"]["session_uuid"] = str(uuid.UUID(int=7))
    store.put_json(f"{legacy}/manifest.json", legacy_doc)
    write_parquet(store, f"{legacy}/data/data-00000.parquet", imu_table(20, (T0_MS + 9000) * MS))
    out.topics["gamma/old/imu"], out.rows["gamma/old/imu"] = legacy, 20
    # an empty sequence (no topics): anonymous, name unknowable
    lonely = folder_at("sq_", T0_MS + 20_000)
    store.put_json(layout.metadata_key(lonely), {"user_metadata": {"empty": True}})
    out.sequences["?"] = lonely
    return out


def write_topic_v1(store: ObjectStore, *, seq: str, seq_folder: str, session_locator: str, session_uuid: str,
                   name: str, tables: list[pa.Table], committed: bool = True, tag: str = "IMU") -> str:
    """One topic folder as our server writes it (metadata, schema.arrow, chunks, _COMMIT.json)."""
    from mosaicod.store.stats import ChunkStats

    tp = layout.new_topic_folder()
    created = T0_MS * MS
    completed = created + 1000 if committed else None

    def doc(done):
        return layout.topic_metadata_doc(
            locator=f"{seq}/{name}", session_locator=session_locator, created_at_ns=created, completed_at_ns=done,
            serialization_format="default", ontology_tag=tag, user_metadata={"k": name},
            topic_uuid=str(uuid.uuid4()), session_uuid=session_uuid, sequence_folder=seq_folder)

    d = doc(None)
    store.put_json(layout.metadata_key(tp), d)
    store.put_bytes(layout.schema_key(tp), tables[0].schema.serialize().to_pybytes())
    files = []
    for i, t in enumerate(tables):
        write_parquet(store, layout.data_key(tp, i), t)
        cs = ChunkStats(t.schema)
        for b in t.to_batches():
            cs.update(b)
        files.append({"name": layout.data_file_name(i), "size_bytes": store.size(layout.data_key(tp, i)),
                      "row_count": cs.row_count, "arrow_size_bytes": cs.arrow_size_bytes})
    if committed:
        d["properties"]["completed_at"] = completed
        store.put_json(layout.metadata_key(tp), d)
        store.put_json(layout.commit_key(tp), layout.commit_doc(
            state="finalized", committed_at_ns=completed, row_count=sum(f["row_count"] for f in files),
            timestamp_range=None, files=files))
    return tp


def write_sequence_v1(store: ObjectStore, name: str, *, sessions: int = 1) -> tuple[str, list[tuple[str, str]]]:
    sq = layout.new_sequence_folder()
    store.put_json(layout.metadata_key(sq), layout.sequence_metadata_doc(
        locator=name, uuid=str(uuid.uuid4()), created_at_ns=T0_MS * MS, user_metadata={"name": name}))
    out = []
    for _ in range(sessions):
        loc = f"{name}:{layout.new_ulid()}"
        su = str(uuid.uuid4())
        store.put_json(layout.session_key(sq, loc), layout.session_doc(
            locator=loc, uuid=su, created_at_ns=T0_MS * MS + 5, completed_at_ns=None))
        out.append((loc, su))
    return sq, out
