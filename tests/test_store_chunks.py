"""Chunk writer (rolling files, sorted row groups, statistics) and the time-ordered reader."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mosaicod.store import layout
from mosaicod.store.chunks import ChunkWriter
from mosaicod.store.reader import read_topic
from mosaicod.store.objstore import ObjectStore
from mosaicod.store.stats import NUMERIC_EMPTY, ChunkStats

SCHEMA = pa.schema([
    pa.field("timestamp_ns", pa.int64(), nullable=False, metadata={"description": "record time"}),
    pa.field("v", pa.float64()),
    pa.field("samples", pa.list_(pa.field("item", pa.float32(), nullable=False))),
    pa.field("pose", pa.struct([pa.field("x", pa.float64()), pa.field("frame", pa.string())])),
])


def make_batch(ts) -> pa.RecordBatch:
    ts = np.asarray(ts, dtype=np.int64)
    return pa.record_batch([
        pa.array(ts), pa.array(ts.astype(float) / 10),
        pa.array([[float(t), float(t) + 1] for t in ts], SCHEMA.field("samples").type),
        pa.array([{"x": float(t), "frame": f"f{t % 3}"} for t in ts], SCHEMA.field("pose").type),
    ], schema=SCHEMA)


@pytest.fixture
def store(tmp_path):
    return ObjectStore.local(str(tmp_path / "store"))


def write(store, batches, **kw):
    seen = []
    w = ChunkWriter(store, "tp_T", SCHEMA, kw.pop("fmt", "default"),
                    max_chunk_size=kw.pop("max_chunk_size", 1 << 30),
                    row_group_bytes=kw.pop("row_group_bytes", 1 << 20), on_chunk=seen.append)
    for b in batches:
        w.write(b)
    chunks = w.close()
    assert [c.data_file for c in seen] == [c.data_file for c in chunks]
    return chunks


@pytest.mark.parametrize("fmt", ["default", "ragged", "image"])
def test_round_trip_is_sorted_and_schema_exact(store, fmt):
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 10_000, 700) for _ in range(6)]
    chunks = write(store, [make_batch(p) for p in parts], fmt=fmt, row_group_bytes=40_000)
    files = [c.data_file for c in chunks]
    assert all(layout.data_file_index(f) is not None for f in files)
    out = list(read_topic(store, files, SCHEMA, batch_rows=512))
    assert all(b.schema.equals(SCHEMA, check_metadata=True) for b in out)
    assert all(0 < b.num_rows <= 512 for b in out)
    got = pa.Table.from_batches(out)
    expected = np.sort(np.concatenate(parts))
    assert got.column("timestamp_ns").to_numpy().tolist() == expected.tolist()
    # every row keeps its own values (v = ts / 10)
    assert np.allclose(got.column("v").to_numpy(), got.column("timestamp_ns").to_numpy() / 10)
    # windows are half-open
    win = pa.Table.from_batches(read_topic(store, files, SCHEMA, 100, 200, batch_rows=64), schema=SCHEMA)
    ts = win.column("timestamp_ns").to_numpy()
    assert ts.tolist() == expected[(expected >= 100) & (expected < 200)].tolist()
    assert list(read_topic(store, files, SCHEMA, 20_000, None)) == []


def test_files_roll_by_size_and_stats_cover_each_chunk(store):
    batches = [make_batch(np.arange(i * 5000, (i + 1) * 5000)) for i in range(8)]
    chunks = write(store, batches, max_chunk_size=300_000, row_group_bytes=200_000)
    assert len(chunks) > 1
    assert sum(c.row_count for c in chunks) == 40_000
    for c in chunks:
        assert c.size_bytes == store.size(c.data_file)
        pf = pq.ParquetFile(store.local_path(c.data_file))
        assert pf.metadata.num_rows == c.row_count
        st = c.stats.columns
        assert (c.stats.ts_min, c.stats.ts_max) == (st["timestamp_ns"].min, st["timestamp_ns"].max)
        assert st["samples"].kind == "numeric" and st["pose.frame"].kind == "textual"
        assert st["pose.frame"].min == "f0" and st["pose.frame"].max == "f2"
    assert [c.stats.ts_min for c in chunks] == sorted(c.stats.ts_min for c in chunks)


def test_abort_leaves_no_unindexed_file(store):
    w = ChunkWriter(store, "tp_A", SCHEMA, "default", max_chunk_size=1 << 30, row_group_bytes=10_000)
    w.write(make_batch(np.arange(2000)))  # flushed into an open, unindexed chunk
    w.abort()
    assert store.walk_files("tp_A") == []


def test_statistics_nan_null_and_empty():
    schema = pa.schema([("timestamp_ns", pa.int64()), ("f", pa.float64()), ("s", pa.string()),
                        ("big", pa.int64())])
    st = ChunkStats(schema)
    st.update(pa.record_batch([pa.array([1, 2, 3]), pa.array([float("nan"), 2.5, None]),
                               pa.array([None, None, None], pa.string()),
                               pa.array([2**62 + 1, 5, 2**53 + 1])], schema=schema))
    f = st.columns["f"].row()
    assert (f["min_value"], f["max_value"], f["has_nan"], f["has_null"]) == (2.5, 2.5, True, True)
    s = st.columns["s"].row()
    assert (s["min_value"], s["max_value"], s["has_null"]) == ("", "", True)
    big = st.columns["big"].row()
    assert big["min_value"] <= 5 and big["max_value"] >= 2**62 + 1  # rounded outwards
    empty = ChunkStats(schema).columns["f"].row()
    assert (empty["min_value"], empty["max_value"]) == NUMERIC_EMPTY


def test_statistics_are_the_same_computed_inline_or_on_the_side_thread(store, monkeypatch):
    import threading

    from mosaicod.store import chunks as chunks_mod

    batches = [make_batch(np.arange(i * 3000, (i + 1) * 3000)[::-1]) for i in range(4)]
    threads = []
    real = chunks_mod._update_stats
    monkeypatch.setattr(chunks_mod, "_update_stats",
                        lambda *a: (threads.append(threading.current_thread().name), real(*a)))
    results = {}
    for aside in (0, 1 << 40):  # every row group on the side thread / every one inline
        monkeypatch.setattr(chunks_mod, "STATS_ASIDE_BYTES", aside)
        threads.clear()
        results[aside] = write(store, batches, max_chunk_size=100_000, row_group_bytes=100_000)
        on_side = [t.startswith("chunk-stats") for t in threads]
        assert on_side and all(on_side) if aside == 0 else not any(on_side)
    a, b = results.values()
    assert len(a) == len(b) > 1
    for x, y in zip(a, b):
        assert (x.row_count, x.stats.ts_min, x.stats.ts_max, x.stats.ts_order) == \
            (y.row_count, y.stats.ts_min, y.stats.ts_max, y.stats.ts_order)
        assert {n: s.row() for n, s in x.stats.items()} == {n: s.row() for n, s in y.stats.items()}


def test_statistics_of_unaligned_buffers():
    """Flight hands over buffers at any address: min/max/NaN are the same as for aligned ones."""
    import numpy as np

    from mosaicod.store.stats import _numeric_min_max

    values = np.array([3.5, -2.0, np.nan, 7.25, 0.0])
    raw = np.zeros(values.nbytes + 1, np.uint8)
    raw[1:] = values.view(np.uint8)
    unaligned = pa.Array.from_buffers(pa.float64(), len(values), [None, pa.py_buffer(raw).slice(1)])
    assert not unaligned.to_numpy(zero_copy_only=False).flags.aligned
    assert _numeric_min_max(unaligned) == _numeric_min_max(pa.array(values)) == (-2.0, 7.25, True)


def _reference_leaf(rows: list, path: tuple) -> tuple[list, bool]:
    """Values of a leaf and whether a null was on the way, from Python objects (lists flattened)."""
    values, saw_null = [], False

    def walk(v, rest):
        nonlocal saw_null
        if v is None:
            saw_null = True
        elif isinstance(v, list):
            for item in v:
                walk(item, rest)
        elif rest:
            walk(v[rest[0]], rest[1:])
        else:
            values.append(v)

    for row in rows:
        walk(row, path)
    return values, saw_null


def test_statistics_of_nested_leaves_sharing_structs_and_lists():
    """Leaves under one struct or list (an SDK IMU has 33 under a few structs) each get their own
    values: the same as walking the rows in Python, with null structs and lists counted as nulls."""
    import math

    point = pa.struct([("x", pa.float64()), ("y", pa.int32())])
    schema = pa.schema([
        ("timestamp_ns", pa.int64()),
        ("pose", pa.struct([("position", point), ("orientation", point), ("frame", pa.string())])),
        ("tags", pa.list_(pa.struct([("name", pa.string()), ("score", pa.float64()), ("at", point)]))),
        ("readings", pa.list_(pa.float32())),
    ])
    rows = [
        {"timestamp_ns": 1, "pose": {"position": {"x": 1.5, "y": 7}, "orientation": {"x": -2.0, "y": 1},
                                     "frame": "map"},
         "tags": [{"name": "b", "score": 0.5, "at": {"x": 9.0, "y": -4}}], "readings": [1.0, 2.0]},
        {"timestamp_ns": 2, "pose": None, "tags": None, "readings": []},
        {"timestamp_ns": 3, "pose": {"position": None, "orientation": {"x": float("nan"), "y": 3},
                                     "frame": None},
         "tags": [{"name": "a", "score": None, "at": None}, {"name": "c", "score": 2.5, "at": {"x": 0.0, "y": 2}}],
         "readings": None},
    ]
    table = pa.Table.from_pylist(rows, schema=schema)
    st = ChunkStats(schema)
    for batch in table.to_batches(max_chunksize=2):  # two batches: accumulated across them
        st.update(batch)
    names = dict(st.items())
    assert set(names) == {"timestamp_ns", "pose.position.x", "pose.position.y", "pose.orientation.x",
                          "pose.orientation.y", "pose.frame", "tags.name", "tags.score", "tags.at.x",
                          "tags.at.y", "readings"}
    for name, cs in names.items():
        values, saw_null = _reference_leaf(rows, tuple(name.split(".")))
        present = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
        assert cs.has_null == saw_null, name
        assert cs.has_nan == (len(present) < len(values)), name
        assert (cs.min, cs.max) == ((min(present), max(present)) if present else (None, None)), name
