"""Parquet chunks of a topic: the streaming writer used by ingest (and the optimizer); opening a
chunk file for reading (the time-ordered reader is ``store/reader.py``).

Writer: incoming batches are buffered up to ``row_group_bytes`` of Arrow data, sorted by
``timestamp_ns`` (stable) and written as one row group to the open chunk file; the file is closed
and a new one started once it reaches ``max_chunk_size`` bytes.  Each closed chunk is reported
(with its statistics) through ``on_chunk`` so the catalog can index it right away.  Memory is
bounded by one row group plus the batch being received, whatever the size of the topic.  The
statistics include the order of the rows (``ChunkStats.ts_order``), checked as they are written.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import layout
from .directfile import open_direct
from .formats import SERIALIZATION_FORMATS, TS, keep_cached, parquet_options  # noqa: F401 - format rules
from .objstore import ObjectStore
from .stats import ChunkStats

@dataclass
class ChunkInfo:
    index: int
    data_file: str  # key relative to the store root
    size_bytes: int
    stats: ChunkStats

    @property
    def row_count(self) -> int:
        return self.stats.row_count

    def commit_entry(self) -> dict:
        return {"name": layout.data_file_name(self.index), "size_bytes": self.size_bytes,
                "row_count": self.stats.row_count, "arrow_size_bytes": self.stats.arrow_size_bytes}


def commit_doc_for(chunks: list[ChunkInfo], *, state: str, committed_at_ns: int,
                   interrupted_at_ns: int | None = None) -> dict:
    """The ``_COMMIT.json`` document of a topic folder holding ``chunks``."""
    lo = min((c.stats.ts_min for c in chunks if c.stats.ts_min is not None), default=None)
    hi = max((c.stats.ts_max for c in chunks if c.stats.ts_max is not None), default=None)
    return layout.commit_doc(state=state, committed_at_ns=committed_at_ns,
                             row_count=sum(c.row_count for c in chunks),
                             timestamp_range=(lo, hi) if lo is not None else None,
                             files=[c.commit_entry() for c in chunks], interrupted_at_ns=interrupted_at_ns)


def _is_sorted(ts: pa.Array) -> bool:
    if len(ts) < 2:
        return True
    a = ts.to_numpy(zero_copy_only=False)
    return bool(np.all(a[1:] >= a[:-1]))


def sort_by_timestamp(table: pa.Table) -> pa.Table:
    ts = table.column(TS).combine_chunks() if table.num_rows else None
    if ts is None or _is_sorted(ts):
        return table
    return table.take(pc.sort_indices(table, sort_keys=[(TS, "ascending")]))


# Row groups from this size on get their statistics computed on a side thread while they are
# encoded; smaller ones (the last row group of an upload, small uploads) inline: starting the
# thread and handing the table over cost more than the overlap saves.
STATS_ASIDE_BYTES = 1 << 20


class ChunkWriter:
    """Streams the batches of one topic upload into rolling Parquet chunk files."""

    def __init__(self, store: ObjectStore, folder: str, schema: pa.Schema, serialization_format: str,
                 *, max_chunk_size: int, row_group_bytes: int,
                 on_chunk: Callable[[ChunkInfo], None] | None = None):
        self.store = store
        self.folder = folder
        self.schema = schema
        self.serialization_format = serialization_format
        self.max_chunk_size = max_chunk_size
        self.row_group_bytes = row_group_bytes
        self.on_chunk = on_chunk
        self.chunks: list[ChunkInfo] = []
        self._next_index = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        self._current: ChunkInfo | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._folder_made = False  # the data folder of a local store exists

    # -- public -------------------------------------------------------------------------------
    @property
    def chunk_open(self) -> bool:
        """A chunk file holds row groups but is not closed yet (no Parquet footer)."""
        return self._writer is not None

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self._buffer.append(batch)
        self._buffered += batch.nbytes
        if self._buffered >= self.row_group_bytes:
            self._flush_row_group()

    def close(self) -> list[ChunkInfo]:
        """Flush what is buffered and close the open chunk; returns every chunk written."""
        try:
            self._flush_row_group()
            self._close_chunk()
        finally:
            self._shutdown_pool()
        return self.chunks

    def abort(self) -> None:
        """Drop the buffer and close the open file without reporting it (upload failed)."""
        self._buffer.clear()
        self._buffered = 0
        self._shutdown_pool()
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
        finally:
            try:
                self._close_sink()  # may fail (a direct file's gathered bytes): the file goes anyway
            finally:
                if self._current is not None:  # never indexed: do not leave a valid-looking file
                    current, self._current = self._current, None
                    self.store.delete(current.data_file)

    # -- internals ----------------------------------------------------------------------------
    def _flush_row_group(self) -> None:
        if not self._buffer:
            return
        table = sort_by_timestamp(pa.Table.from_batches(self._buffer, schema=self.schema))
        self._buffer.clear()
        self._buffered = 0
        if self._writer is None:
            self._open_chunk(table)
        assert self._writer is not None and self._current is not None
        if table.nbytes < STATS_ASIDE_BYTES:  # a small row group: a thread hand-off costs more than it saves
            _update_stats(self._current.stats, table)
            self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        else:  # statistics and encoding both release the GIL: compute them side by side
            stats = self._stats_pool().submit(_update_stats, self._current.stats, table)
            try:
                self._writer.write_table(table, row_group_size=max(1, table.num_rows))
            finally:
                stats.result()
        if not keep_cached(self.serialization_format):
            _release_cache(self._sink)
        if self._sink_position() >= self.max_chunk_size:
            self._close_chunk()

    def _stats_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-stats")
        return self._pool

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _open_chunk(self, first: pa.Table) -> None:
        """A new chunk file; ``first`` (its first row group) decides the per-column encoding."""
        index = self._next_index
        self._next_index += 1
        key = layout.data_key(self.folder, index)
        local = self.store.local_path(key)
        if local is not None:
            if not self._folder_made:  # once per upload, not per chunk
                os.makedirs(os.path.dirname(local), exist_ok=True)
                self._folder_made = True
            # large topics around the page cache (store/directfile.py); otherwise a native file
            # (no GIL round-trips per page)
            direct = None if keep_cached(self.serialization_format) else open_direct(local)
            self._sink = direct if direct is not None else pa.OSFile(local, "wb")
        else:
            self._sink = self.store.open_write(key)
        options = parquet_options(self.schema, self.serialization_format, first)
        self._writer = pq.ParquetWriter(self._sink, self.schema, **options)
        self._current = ChunkInfo(index, key, 0, ChunkStats(self.schema))

    def _sink_position(self) -> int:
        return self._sink.tell() if self._sink is not None else 0

    def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()

    def _close_chunk(self) -> None:
        if self._writer is None or self._current is None:
            return
        self._writer.close()
        self._writer = None
        if not keep_cached(self.serialization_format):
            _release_cache(self._sink)
        self._close_sink()
        info = self._current
        self._current = None
        info.size_bytes = self.store.size(info.data_file)
        self.chunks.append(info)
        if self.on_chunk is not None:
            self.on_chunk(info)


def _release_cache(sink) -> None:
    """Start write-back of a local chunk file and drop its clean pages from the page cache."""
    if isinstance(sink, pa.OSFile) and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(sink.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _update_stats(stats: ChunkStats, table: pa.Table) -> None:
    stats.start_row_group()  # one table = one row group
    for batch in table.to_batches():
        stats.update(batch)


# ------------------------------------------------------------------------------------------------
# reading (the time-ordered reader itself: store/reader.py)

def open_parquet(store: ObjectStore, key: str, metadata: pq.FileMetaData | None = None,
                 buffer_size: int = 0) -> pq.ParquetFile:
    """A chunk file: a native file for a local store, fsspec otherwise.  ``metadata``: the footer
    already read once (not fetched and parsed again).  ``buffer_size`` > 0: column chunks are read
    through buffers of that size (pages stream through; 0: each column chunk is read whole).
    Never memory-mapped: a file truncated under a mapping would kill the process with SIGBUS
    (the reader loads a local row group with ``rowgroup.RowGroupBuffer`` instead)."""
    local = store.local_path(key)
    return pq.ParquetFile(local if local is not None else store.open_read(key), metadata=metadata,
                          memory_map=False, buffer_size=buffer_size)
