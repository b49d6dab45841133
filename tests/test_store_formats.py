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


def test_default_format_dictionary_on_strings_only(store):
    schema = pa.schema([pa.field("timestamp_ns", pa.int64()), pa.field("blob", pa.binary()),
                        pa.field("label", pa.string()), pa.field("v", pa.float64()),
                        pa.field("h", pa.struct([pa.field("frame_id", pa.string()), pa.field("n", pa.int32())])),
                        pa.field("tags", pa.list_(pa.string()))])
    batch = pa.record_batch([pa.array(np.arange(50, dtype=np.int64)), pa.array([os.urandom(500) for _ in range(50)]),
                             pa.array(["a", "b"] * 25), pa.array(np.ones(50)),
                             pa.array([{"frame_id": "imu", "n": i % 3} for i in range(50)], schema.field("h").type),
                             pa.array([["x", "y"]] * 50)], schema=schema)
    chunks = write(store, schema, "default", [batch])
    meta = column_meta(store, chunks[0].data_file)
    for col in ("label", "h.frame_id", "tags.list.element"):
        assert meta[col] == {("LZ4", True, True)}, col
    for col in ("timestamp_ns", "blob", "v", "h.n"):
        assert meta[col] == {("LZ4", False, True)}, col
    got = pa.Table.from_batches(list(read_topic(store, [c.data_file for c in chunks], schema)))
    assert got.equals(pa.Table.from_batches([batch]))
    assert formats.parquet_options(pa.schema([pa.field("v", pa.float64())]), "default")["use_dictionary"] is False


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
    # a row group as received: several batches, sampled in place (same bytes as the concatenation)
    chunked = pa.chunked_array([values.slice(i, 1000) for i in range(0, 10_000, 1000)])
    assert formats._sample(chunked, budget=64_000, spots=8) == sample


def test_leaf_column_keeps_the_received_chunks():
    batches = [image_batch(i * 5, 5, random_bytes) for i in range(3)]
    table = pa.Table.from_batches(batches)
    data = formats._leaf_column(table, "data")
    assert data.num_chunks == 3 and data.equals(table.column("data"))
    seq = formats._leaf_column(table, "header.seq")
    assert seq.num_chunks == 3 and seq.to_pylist() == list(range(15))


def test_only_default_topics_stay_in_the_page_cache():
    assert formats.keep_cached("default")
    assert not formats.keep_cached("image") and not formats.keep_cached("ragged")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError):
        formats.parquet_options(IMAGE, "jpeg")


# -- page sizes -------------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return out, pos


def _skip(buf: bytes, pos: int, ttype: int) -> int:
    """Skip one thrift compact-protocol value of type ``ttype`` starting at ``pos``."""
    if ttype in (1, 2):  # bool inside a struct: in the field header
        return pos
    if ttype == 3:
        return pos + 1
    if ttype in (4, 5, 6):
        return _varint(buf, pos)[1]
    if ttype == 7:
        return pos + 8
    if ttype == 8:
        n, pos = _varint(buf, pos)
        return pos + n
    if ttype in (9, 10):
        head = buf[pos]
        pos += 1
        n, elem = head >> 4, head & 0x0F
        if n == 15:
            n, pos = _varint(buf, pos)
        for _ in range(n):
            pos = pos + 1 if elem in (1, 2) else _skip(buf, pos, elem)
        return pos
    if ttype == 12:
        return _struct(buf, pos)[1]
    raise AssertionError(f"thrift type {ttype} not expected in a page header")


def _struct(buf: bytes, pos: int) -> tuple[dict, int]:
    """The i32 fields of a compact-protocol struct (by field id) and the position after it."""
    fields, last = {}, 0
    while True:
        head = buf[pos]
        pos += 1
        if head == 0:
            return fields, pos
        ttype, delta = head & 0x0F, head >> 4
        if delta:
            fid = last + delta
        else:
            z, pos = _varint(buf, pos)
            fid = (z >> 1) ^ -(z & 1)
        last = fid
        if ttype == 5:
            z, pos = _varint(buf, pos)
            fields[fid] = (z >> 1) ^ -(z & 1)
        else:
            pos = _skip(buf, pos, ttype)


def page_sizes(path, row_group: int, column: str) -> list[int]:
    """Uncompressed sizes of the data pages of one column chunk, read from the page headers."""
    md = pq.ParquetFile(path).metadata.row_group(row_group)
    col = next(md.column(i) for i in range(md.num_columns) if md.column(i).path_in_schema == column)
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    with open(path, "rb") as f:
        f.seek(start)
        buf = f.read(col.total_compressed_size)
    sizes, pos = [], 0
    while pos < len(buf):
        header, pos = _struct(buf, pos)
        sizes.append(header[2])  # uncompressed_page_size
        pos += header[3]  # compressed_page_size
    return sizes


def test_large_incompressible_rows_make_pages_of_about_a_megabyte(store):
    big = lambda i: np.random.default_rng(i).integers(0, 256, 100_000, dtype=np.uint8).tobytes()  # noqa: E731
    batches = [image_batch(i * 40, 40, big) for i in range(3)]  # 12 MB: one row group
    chunks = write(store, IMAGE, "image", batches, row_group_bytes=64 << 20)
    path = store.local_path(chunks[0].data_file)
    sizes = page_sizes(path, 0, "data")
    assert len(sizes) >= 8 and max(sizes) <= 2 * formats.PAGE_BYTES, sizes  # not one 12 MB page
    assert column_meta(store, chunks[0].data_file)["data"] == {("UNCOMPRESSED", False, False)}
    got = pa.Table.from_batches(list(read_topic(store, [c.data_file for c in chunks], IMAGE)))
    assert got.equals(pa.Table.from_batches(batches))


def test_write_batch_size_follows_the_row_size():
    def table(row_bytes: int, n: int = 100) -> pa.Table:
        return pa.table({"timestamp_ns": pa.array(np.arange(n, dtype=np.int64)),
                         "data": pa.array([b"x" * row_bytes] * n, pa.binary())})

    assert formats.write_batch_size(None) is None
    assert formats.write_batch_size(table(100)) is None  # small rows: Parquet's default batches
    assert formats.write_batch_size(table(100_000)) == 11  # 1.1 MB: just over a page
    assert formats.write_batch_size(table(4 << 20)) == 1
    # zstd-compressed large columns keep the default batches (their ratio needs large pages)
    smooth = pa.table({"timestamp_ns": pa.array(np.arange(40, dtype=np.int64)),
                       "data": pa.array([smooth_bytes(i) * 5 for i in range(40)], pa.binary())})
    assert "write_batch_size" not in formats.parquet_options(smooth.schema, "image", smooth)
    noisy = pa.table({"timestamp_ns": pa.array(np.arange(40, dtype=np.int64)),
                      "data": pa.array([os.urandom(100_000) for _ in range(40)], pa.binary())})
    assert formats.parquet_options(noisy.schema, "image", noisy)["write_batch_size"] == 11
    assert formats.parquet_options(noisy.schema, "default", noisy)["write_batch_size"] == 11


def test_the_per_schema_analysis_is_done_once_per_schema():
    from mosaicod.store import stats

    def schema():  # the same schema, built anew by each upload
        return pa.schema([("timestamp_ns", pa.int64()), ("v", pa.struct([("x", pa.float64())])),
                          ("data", pa.binary())])

    assert formats._leaves(schema()) is formats._leaves(schema())
    assert stats.leaves(schema()) is stats.leaves(schema())
    other = pa.schema([("timestamp_ns", pa.int64()), ("v", pa.struct([("y", pa.float64())]))])
    assert [leaf.name for leaf in stats.leaves(other)] == ["timestamp_ns", "v.y"]  # keyed by content
    assert formats._leaf_paths(other) == ["timestamp_ns", "v.y"]
