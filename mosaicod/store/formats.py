"""Parquet encoding rules per serialization format and column: the one place that decides which
columns are compressed, with what, and which are dictionary-encoded (README: "Storage format").

* every format: Parquet 2.6, data pages v2, page index, Arrow schema stored; ``timestamp_ns``
  always has statistics (readers prune row groups with them).
* ``default`` (numeric sensor topics): lz4 on every column, statistics on, dictionary encoding
  on string columns only.  Measured values (floats), timestamps and counters hardly ever repeat
  and blobs never do: the dictionary only cost hashing until Parquet abandoned it at its size
  limit -- encoding an IMU row group took 5x as long with it (``perf``/``py-spy`` on an upload:
  the writer thread in ``write_table`` the whole time while the receiving thread waited), and
  the file was 10% larger.
* ``ragged`` and ``image``: ``timestamp_ns`` uncompressed; every other column zstd level 5 without
  dictionary or statistics, **except binary columns whose values do not compress** (JPEG/PNG/H.264
  payloads, encrypted or already compressed blobs): they are stored uncompressed.  zstd spends
  most of a large-binary upload's CPU on such bytes and saves nothing.

Chunk files of ``ragged`` and ``image`` topics on a local store do not go through the page cache:
they are written with ``O_DIRECT`` (``store/directfile.py``), or, where the file system does not
take it, their written pages are released after each row group (``posix_fadvise(DONTNEED)``,
which also starts their write-back).  Large payloads, written once and read seldom, then cost the
kernel recycled cache pages instead of fresh ones (``perf``: half of an image upload's CPU was
the copy into fresh cache pages), and do not push other data out of the cache.  ``default``
topics (small, often read right away) stay cached.

Pages of large rows: Parquet's writer encodes ``write_batch_size`` rows (default 1024) before it
checks the page size, so with 100 KB images one page held a whole row group (~32 MiB), built in a
buffer grown by doubling and copied again into the page.  When the first row group's rows are
large, the batch is cut to about ``PAGE_BYTES`` of Arrow data (at least one row): pages stay near
``PAGE_BYTES`` and the buffers of each copy stay in the CPU cache (``bench/bench_image.py``: the
encode + store write of 100 KB JPEG-like payloads went from 0.5-0.8 to 0.45 CPU s/GB).  This
applies to ``default`` files (lz4 works on 64 KiB blocks: page size does not change its ratio)
and to ``ragged`` / ``image`` files with a binary column stored uncompressed; files whose large
columns are zstd-compressed keep Parquet's default batches (zstd level 5 looks back 2 MiB: raw
images took 1.7% more disk in 1-row pages).

Whether a binary column compresses is decided per chunk file from the first row group written to
it (``sample``): up to ``SAMPLE_BYTES`` of its values, taken from a few places spread over the
row group, are compressed with zstd level 1; a column that does not shrink below
``INCOMPRESSIBLE_RATIO`` of its size is stored uncompressed.  Level 1 compresses less than level
5, so a column that passes the check compresses with level 5 at least as well as measured.
"""

from __future__ import annotations

import functools

import pyarrow as pa

TS = "timestamp_ns"

SERIALIZATION_FORMATS = ("default", "ragged", "image")

ZSTD_LEVEL = 5
SAMPLE_BYTES = 1 << 20  # per binary column and chunk
SAMPLE_SPOTS = 8  # places of the row group the sample is taken from
INCOMPRESSIBLE_RATIO = 0.97  # compressed / original above this: store uncompressed
PAGE_BYTES = 1 << 20  # Parquet's default data page size
DEFAULT_WRITE_BATCH = 1024  # Parquet's default write_batch_size

_COMMON = {"version": "2.6", "data_page_version": "2.0", "write_page_index": True, "store_schema": True}


def keep_cached(serialization_format: str) -> bool:
    """Whether chunk files of this format stay in the page cache once written (local store)."""
    return serialization_format == "default"


def is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
        or pa.types.is_binary_view(t)


def _binary_paths(schema: pa.Schema) -> list[str]:
    """Dotted Parquet column paths of the binary leaves outside lists and maps (``data``, ``a.b``)."""
    return [path for path, t, repeated in _leaves(schema) if is_binary(t) and not repeated]


def _leaf_column(table: pa.Table, path: str) -> pa.ChunkedArray:
    """The values of a leaf column, chunk by chunk as received (never concatenated: the
    ``data`` column of a row group is ~32 MiB, of which ``_sample`` reads ~1 MiB)."""
    names = path.split(".")
    chunks = []
    for arr in table.column(names[0]).chunks:
        for name in names[1:]:
            arr = arr.field(name)
        chunks.append(arr)
    return pa.chunked_array(chunks, type=chunks[0].type) if chunks else pa.chunked_array([], pa.binary())


def _sample(values: pa.Array | pa.ChunkedArray, budget: int = SAMPLE_BYTES, spots: int = SAMPLE_SPOTS) -> bytes:
    """About ``budget`` bytes of values, from up to ``spots`` disjoint places spread over the
    array (never the same value twice: repeats would look compressible)."""
    n = len(values)
    if n == 0 or values.null_count == n:
        return b""
    per_value = max(1, (values.nbytes or 1) // n)
    count = max(1, min(n // spots, budget // spots // per_value + 1))
    if count * spots >= n or n <= spots:
        starts, count = [0], n  # small: all of it
    else:
        starts = [(n - count) * k // (spots - 1) for k in range(spots)]
    parts: list[bytes] = []
    for start in starts:
        parts.extend(v[: budget // len(starts)] for v in values.slice(start, count).to_pylist() if v)
    return b"".join(parts)[:budget]


def compresses(data: bytes) -> bool:
    """Whether zstd (level 1) shrinks ``data`` below INCOMPRESSIBLE_RATIO of its size."""
    if len(data) < 4096:
        return True  # too little to judge: keep the format's default
    codec = pa.Codec("zstd", compression_level=1)
    return codec.compress(data).size < INCOMPRESSIBLE_RATIO * len(data)


def incompressible_columns(schema: pa.Schema, sample: pa.Table | None) -> list[str]:
    """Binary columns of ``sample`` whose values do not compress."""
    if sample is None or sample.num_rows == 0:
        return []
    return [p for p in _binary_paths(schema) if not compresses(_sample(_leaf_column(sample, p)))]


def write_batch_size(sample: pa.Table | None) -> int | None:
    """Rows Parquet encodes between two page-size checks, for rows like ``sample``'s: about
    ``PAGE_BYTES`` of them; None (Parquet's default) for small rows or no sample."""
    if sample is None or sample.num_rows == 0:
        return None
    # just over PAGE_BYTES: the writer closes a page once it holds more than PAGE_BYTES
    rows = -(-PAGE_BYTES * sample.num_rows // max(1, sample.nbytes))
    return rows if rows < DEFAULT_WRITE_BATCH else None


def parquet_options(schema: pa.Schema, serialization_format: str, sample: pa.Table | None = None) -> dict:
    """``pyarrow.parquet.ParquetWriter`` options for a chunk file of a topic in
    ``serialization_format``; ``sample``: the first rows going into the file (binary columns
    that do not compress are then stored uncompressed; large rows get small write batches)."""
    batch = write_batch_size(sample)
    paging = {"write_batch_size": batch} if batch is not None else {}
    if serialization_format == "default":
        return {**_COMMON, "compression": "lz4", "use_dictionary": _dictionary_paths(schema) or False,
                "write_statistics": True, **paging}
    if serialization_format not in SERIALIZATION_FORMATS:
        raise ValueError(f"unknown serialization format {serialization_format!r}")
    raw = set(incompressible_columns(schema, sample))
    compression: dict[str, str] = {}
    levels: dict[str, int] = {}
    for c in _leaf_paths(schema):
        if c == TS or c in raw:
            compression[c] = "none"
        else:
            compression[c] = "zstd"
            levels[c] = ZSTD_LEVEL
    if not raw:  # zstd's ratio suffers from small pages (raw images: +1.7% on disk with 1-row pages)
        paging = {}
    return {**_COMMON, "compression": compression, "compression_level": levels, "use_dictionary": False,
            "write_statistics": [TS], **paging}


def _dictionary_paths(schema: pa.Schema) -> list[str]:
    """Leaves worth a dictionary: strings (frame ids, labels, states spelled out)."""
    return [path for path, t, _repeated in _leaves(schema)
            if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)]


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Dotted paths of every Parquet leaf column."""
    return [path for path, _t, _repeated in _leaves(schema)]


@functools.lru_cache(maxsize=256)  # per schema: every chunk file of a topic type asks
def _leaves(schema: pa.Schema) -> tuple[tuple[str, pa.DataType, bool], ...]:
    """(Parquet column path, type, inside a list or map) of every leaf column."""
    out: list[tuple[str, pa.DataType, bool]] = []

    def walk(t: pa.DataType, path: str, repeated: bool) -> None:
        if pa.types.is_struct(t):
            for i in range(t.num_fields):
                walk(t.field(i).type, f"{path}.{t.field(i).name}", repeated)
        elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            walk(t.value_type, f"{path}.list.element", True)  # Parquet's compliant list layout
        elif pa.types.is_map(t):
            walk(t.key_type, f"{path}.key_value.key", True)
            walk(t.item_type, f"{path}.key_value.value", True)
        else:
            out.append((path, t, repeated))

    for f in schema:
        walk(f.type, f.name, False)
    return tuple(out)
