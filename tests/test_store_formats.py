"""Per-column Parquet encoding rules (store/formats.py), checked on the chunk files the writer
produces: which columns are compressed, with what, dictionary-encoded or not."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mosaicod.store import formats
from mosaicod.store.chunks import ChunkWriter
from mosaicod.store.reader import read_topic
from mosaicod.store.objstore import ObjectStore

IMAGE = pa.schema([
    pa.field("timestamp_ns", pa.int64(), nullable=False),
    pa.field("header", pa.struct([pa.field("frame_id", pa.string()), pa.field("seq", pa.uint64())])),
    pa.field("data", pa.binary(), nullable=False),
    pa.field("format", pa.string(), nullable=False),
])


def image_batch(start: int, n: int, payload) -> pa.RecordBatch:
    return pa.record_batch([
        pa.array(np.arange(start, start + n, dtype=np.int64)),
        pa.array([{"frame_id": "cam", "seq": i} for i in range(start, start + n)], IMAGE.field("header").type),
        pa.array([payload(i) for i in range(start, start + n)], pa.binary()),
        pa.array(["jpeg"] * n),
    ], schema=IMAGE)


def random_bytes(i: int) -> bytes:
    return np.random.default_rng(i).integers(0, 256, 20_000, dtype=np.uint8).tobytes()


def smooth_bytes(i: int) -> bytes:  # a raw frame: a gradient with a little noise, compresses well
    rng = np.random.default_rng(i)
    row = (np.arange(20_000) // 80 % 256).astype(np.int16) + rng.integers(0, 2, 20_000)
    return row.clip(0, 255).astype(np.uint8).tobytes()


@pytest.fixture
def store(tmp_path):
    return ObjectStore.local(str(tmp_path / "store"))


def write(store, schema, fmt, batches, **kw):
    w = ChunkWriter(store, "tp_F", schema, fmt, max_chunk_size=kw.get("max_chunk_size", 1 << 30),
                    row_group_bytes=kw.get("row_group_bytes", 1 << 20))
    for b in batches:
        w.write(b)
    return w.close()


def column_meta(store, key) -> dict:
    md = pq.ParquetFile(store.local_path(key)).metadata
    out = {}
    for rg in range(md.num_row_groups):
        for i in range(md.num_columns):
            c = md.row_group(rg).column(i)
            out.setdefault(c.path_in_schema, set()).add(
                (c.compression, "RLE_DICTIONARY" in c.encodings, c.is_stats_set))
    return out


def test_image_incompressible_binary_is_stored_uncompressed(store):
    batches = [image_batch(i * 40, 40, random_bytes) for i in range(5)]
    chunks = write(store, IMAGE, "image", batches, row_group_bytes=300_000)
    meta = column_meta(store, chunks[0].data_file)
    assert meta["data"] == {("UNCOMPRESSED", False, False)}
    assert meta["timestamp_ns"] == {("UNCOMPRESSED", False, True)}
    # the small columns, nested ones included, are still zstd, without dictionary or statistics
    for col in ("header.frame_id", "header.seq", "format"):
        assert meta[col] == {("ZSTD", False, False)}, col
    got = pa.Table.from_batches(list(read_topic(store, [c.data_file for c in chunks], IMAGE)))
    assert got.equals(pa.Table.from_batches(batches))


def test_image_compressible_binary_keeps_zstd(store):
    batches = [image_batch(i * 40, 40, smooth_bytes) for i in range(3)]
    chunks = write(store, IMAGE, "image", batches)
    meta = column_meta(store, chunks[0].data_file)
    assert meta["data"] == {("ZSTD", False, False)}
    assert chunks[0].size_bytes < 0.6 * sum(b.column("data").nbytes for b in batches)


def test_decision_is_taken_per_chunk_file(store):
    """A topic whose payloads change nature: each chunk decides from its own first rows."""
    batches = [image_batch(0, 60, smooth_bytes), image_batch(60, 60, random_bytes)]
    chunks = write(store, IMAGE, "ragged", batches, row_group_bytes=1, max_chunk_size=1)
    assert len(chunks) == 2
    assert column_meta(store, chunks[0].data_file)["data"] == {("ZSTD", False, False)}
    assert column_meta(store, chunks[1].data_file)["data"] == {("UNCOMPRESSED", False, False)}


def test_default_format_binary_columns_skip_the_dictionary(store):
    schema = pa.schema([pa.field("timestamp_ns", pa.int64()), pa.field("blob", pa.binary()),
                        pa.field("label", pa.string()), pa.field("v", pa.float64())])
    batch = pa.record_batch([pa.array(np.arange(50, dtype=np.int64)), pa.array([os.urandom(500) for _ in range(50)]),
                             pa.array(["a", "b"] * 25), pa.array(np.ones(50))], schema=schema)
    chunks = write(store, schema, "default", [batch])
    meta = column_meta(store, chunks[0].data_file)
    assert meta["blob"] == {("LZ4", False, True)}
    for col in ("timestamp_ns", "label", "v"):
        assert meta[col] == {("LZ4", True, True)}, col


def test_compresses_judges_the_bytes():
    assert not formats.compresses(os.urandom(1 << 16))
    assert formats.compresses(bytes(1 << 16))
    assert formats.compresses(b"")  # nothing to judge: keep the format's codec


def test_sample_spreads_over_the_array_and_is_bounded():
    values = pa.array([bytes([i % 256]) * 1000 for i in range(10_000)], pa.binary())
    sample = formats._sample(values, budget=64_000, spots=8)
    assert len(sample) <= 64_000
    assert len(set(sample)) >= 8  # bytes from several places, not only the first values
    assert formats._sample(pa.array([None, None], pa.binary())) == b""


def test_only_default_topics_stay_in_the_page_cache():
    assert formats.keep_cached("default")
    assert not formats.keep_cached("image") and not formats.keep_cached("ragged")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError):
        formats.parquet_options(IMAGE, "jpeg")
