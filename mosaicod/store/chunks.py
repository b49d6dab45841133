"""Parquet chunks of a topic: the streaming writer used by ingest (and the optimizer) and the
time-ordered reader used by do_get, clusterize and the optimizer.

Writer: incoming batches are buffered up to ``row_group_bytes`` of Arrow data, sorted by
``timestamp_ns`` (stable) and written as one row group to the open chunk file; the file is closed
and a new one started once it reaches ``max_chunk_size`` bytes.  Each closed chunk is reported
(with its statistics) through ``on_chunk`` so the catalog can index it right away.  Memory is
bounded by one row group plus the batch being received, whatever the size of the topic.

Reader: every row group is a sorted run.  Runs whose time ranges do not overlap are streamed one
after the other; overlapping runs are merged with a bounded k-way merge (only the runs that
overlap the current position are open).  The half-open window ``[start, end)`` is applied by
binary search on the sorted timestamps.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import errors, logs
from . import layout
from .formats import SERIALIZATION_FORMATS, TS, keep_cached, parquet_options  # noqa: F401 - format rules
from .objstore import ObjectStore
from .stats import ChunkStats, Order

log = logs.get(__name__)

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

    # -- public -------------------------------------------------------------------------------
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
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._close_sink()
                self._writer = None
                if self._current is not None:  # never indexed: do not leave a valid-looking file
                    self.store.delete(self._current.data_file)
                    self._current = None

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
        # statistics and encoding both release the GIL: compute them side by side
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
            os.makedirs(os.path.dirname(local), exist_ok=True)
            self._sink = pa.OSFile(local, "wb")  # native file: no GIL round-trips per page
        else:
            self._sink = self.store.open_write(key)
        options = parquet_options(self.schema, self.serialization_format, first)
        self._writer = pq.ParquetWriter(self._sink, self.schema, **options)
        self._current = ChunkInfo(index, key, 0, ChunkStats(self.schema))

    def _sink_position(self) -> int:
        return self._sink.tell() if self._sink is not None else 0

    def _close_sink(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

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
# reading


@dataclass
class _Run:
    key: str  # chunk file; opened only while the run is being read (readers hold decoded data)
    row_group: int
    ts_min: int
    ts_max: int
    sorted: bool  # rows known to be in timestamp order (checked when the chunk was indexed)


def _row_group_runs(key: str, pf: pq.ParquetFile, start: int | None, end: int | None,
                    sorted_rows: bool) -> list[_Run]:
    md = pf.metadata
    ts_col = pf.schema_arrow.get_field_index(TS)
    runs = []
    for rg in range(md.num_row_groups):
        g = md.row_group(rg)
        if g.num_rows == 0:
            continue
        st = g.column(ts_col).statistics
        if st is None or not st.has_min_max:
            lo, hi = -(2**63), 2**63 - 1  # unknown: must read it
        else:
            lo, hi = int(st.min), int(st.max)
        if (end is not None and lo >= end) or (start is not None and hi < start):
            continue
        runs.append(_Run(key, rg, lo, hi, sorted_rows))
    return runs


class OrderViolation(Exception):
    """A run indexed as sorted is not: reading on would give wrong answers (or never end)."""


def _sorted_row_group(pf: pq.ParquetFile, run: _Run, columns, start, end, batch_rows) -> Iterator[pa.RecordBatch]:
    """The rows of a row group not known to be sorted: read whole, cut to the window, sorted (stable;
    rows without a timestamp have no place in time and are dropped).  Memory: one row group."""
    table = pf.read_row_group(run.row_group, columns=columns, use_threads=True)
    ts = table.column(TS)
    keep = None
    if ts.null_count:
        keep = pc.is_valid(ts)
    for bound, op in ((start, pc.greater_equal), (end, pc.less)):
        if bound is not None:
            m = op(ts, pa.scalar(bound, pa.int64()))
            keep = m if keep is None else pc.and_(keep, m)
    if keep is not None:
        table = table.filter(keep)
    table = sort_by_timestamp(table)
    return iter(table.combine_chunks().to_batches(max_chunksize=batch_rows))


class _RunCursor:
    """Reads one run in timestamp order, batch by batch, window-sliced; ``head`` is the current
    slice.  Every batch is checked to continue the order (an unsorted run raises OrderViolation
    instead of giving wrong rows)."""

    def __init__(self, pf: pq.ParquetFile, run: _Run, columns, batch_rows, start, end, schema):
        self.run = run
        if run.sorted:
            self._it = pf.iter_batches(batch_size=batch_rows, row_groups=[run.row_group],
                                       columns=columns, use_threads=True)
        else:
            self._it = _sorted_row_group(pf, run, columns, start, end, batch_rows)
        self.start, self.end, self.schema = start, end, schema
        self.head: pa.RecordBatch | None = None
        self.ts: np.ndarray | None = None
        self.done = False
        self._prev: int | None = None  # last timestamp read from the run
        self._advance()

    def _checked_ts(self, batch: pa.RecordBatch) -> np.ndarray:
        col = batch.column(TS)
        if col.null_count:
            raise OrderViolation(f"{self.run.key}: null timestamp_ns in row group {self.run.row_group}")
        ts = col.to_numpy(zero_copy_only=False)
        if (self._prev is not None and ts[0] < self._prev) or bool(np.any(ts[1:] < ts[:-1])):
            raise OrderViolation(f"{self.run.key}: row group {self.run.row_group} is not sorted by timestamp_ns")
        self._prev = int(ts[-1])
        return ts

    def _finish(self) -> None:
        self.head, self.ts, self.done = None, None, True
        self._it = iter(())  # release the file reader and its buffers

    def _advance(self) -> None:
        while True:
            try:
                batch = next(self._it)
            except StopIteration:
                self._finish()
                return
            if batch.num_rows == 0:
                continue
            ts = self._checked_ts(batch)
            lo, hi = 0, len(ts)
            if self.start is not None:
                lo = int(np.searchsorted(ts, self.start, side="left"))
            if self.end is not None:
                hi = int(np.searchsorted(ts, self.end, side="left"))
                if hi < len(ts):
                    self._it = iter(())  # sorted: nothing after this batch is in the window
            if hi > lo:
                self.head = batch.slice(lo, hi - lo)
                self.ts = ts[lo:hi]
                return

    def drain(self) -> Iterator[pa.RecordBatch]:
        """Everything left in the run (when no other run overlaps it)."""
        inside = ((self.start is None or self.run.ts_min >= self.start)
                  and (self.end is None or self.run.ts_max < self.end))
        while not self.done:
            yield self.head
            if inside:  # no window cut can fall inside this run: pass batches straight through
                for batch in self._it:
                    if batch.num_rows:
                        self._checked_ts(batch)
                        yield batch
                self._finish()
                return
            self._advance()

    @property
    def last(self) -> int:
        return int(self.ts[-1])

    def take_upto(self, bound: int) -> pa.RecordBatch | None:
        """Remove and return the head rows with ts <= bound."""
        n = int(np.searchsorted(self.ts, bound, side="right"))
        if n == 0:
            return None
        if n == len(self.ts):
            out = self.head
            self._advance()
            return out
        out = self.head.slice(0, n)
        self.head = self.head.slice(n)
        self.ts = self.ts[n:]
        return out


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch with exactly the topic schema (field metadata, list item names)."""
    if batch.schema.equals(schema, check_metadata=True):
        return batch
    if batch.schema.equals(schema, check_metadata=False):
        return pa.RecordBatch.from_arrays(batch.columns, schema=schema)
    return batch.cast(schema)


def _conformed(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """_conform for a stream of batches read from one file: the schema check is done once."""
    exact = None
    for batch in batches:
        if exact is None:
            exact = batch.schema.equals(schema, check_metadata=True)
        yield batch if exact else _conform(batch, schema)


def _rebatch(parts: Iterator[pa.RecordBatch], rows: int, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    pending: list[pa.RecordBatch] = []
    count = 0
    for part in parts:
        if part.num_rows == 0:
            continue
        if part.num_rows >= rows // 2:
            # big part: emit what is pending as one (short) batch and pass the part through in
            # zero-copy slices, instead of re-aligning (= copying) every following batch
            if pending:
                yield pa.Table.from_batches(pending, schema=schema).combine_chunks().to_batches()[0]
                pending, count = [], 0
            if part.num_rows <= rows:
                yield part
            else:
                for off in range(0, part.num_rows, rows):
                    yield part.slice(off, rows)
            continue
        pending.append(part)
        count += part.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending, schema=schema)
            head = table.slice(0, rows).combine_chunks().to_batches()
            yield head[0] if len(head) == 1 else pa.concat_batches(head)
            rest = table.slice(rows)
            pending = rest.combine_chunks().to_batches() if rest.num_rows else []
            count = rest.num_rows
    if count:
        table = pa.Table.from_batches(pending, schema=schema).combine_chunks()
        yield from table.to_batches()


def _cancelled() -> errors.MosaicoError:
    return errors.MosaicoError(errors.Kind.CANCELLED, "read cancelled: the client went away or the server is stopping")


def _merged(pending: list[_Run], make_cursor, schema, should_stop: Callable[[], bool]) -> Iterator[pa.RecordBatch]:
    """k-way merge of the runs (sorted by ts_min): only runs overlapping the current position are
    open.  Each step emits every open run's rows up to the smallest last timestamp of the open
    heads, so the run holding that timestamp always empties its head: the merge always advances."""
    active: list[_RunCursor] = []
    pending = list(pending)
    pending.reverse()  # popped from the end
    while active or pending:
        if should_stop():
            raise _cancelled()
        if not active:
            c = make_cursor(pending.pop())
            if not c.done:
                active.append(c)
            continue
        if len(active) == 1 and not (pending and pending[-1].ts_min <= active[0].run.ts_max):
            for batch in _conformed(active.pop().drain(), schema):  # disjoint run: no merge needed
                yield batch
                if should_stop():
                    raise _cancelled()
            continue
        bound = min(c.last for c in active)
        while pending and pending[-1].ts_min <= bound:
            c = make_cursor(pending.pop())
            if not c.done:
                active.append(c)
                bound = min(bound, c.last)
        parts = []
        for c in active:
            part = c.take_upto(bound)
            if part is not None:
                parts.append(_conform(part, schema))
        active = [c for c in active if not c.done]
        if len(parts) == 1:
            yield parts[0]
        elif parts:
            table = pa.Table.from_batches(parts, schema=schema)
            table = table.take(pc.sort_indices(table, sort_keys=[(TS, "ascending")]))
            yield from table.combine_chunks().to_batches()


def open_parquet(store: ObjectStore, key: str, metadata: pq.FileMetaData | None = None) -> pq.ParquetFile:
    """A chunk file: a native file for a local store, fsspec otherwise.  ``metadata``: the footer
    already read once (not fetched and parsed again)."""
    local = store.local_path(key)
    return pq.ParquetFile(local if local is not None else store.open_read(key), metadata=metadata,
                          memory_map=False)


def read_topic(store: ObjectStore, data_files: list[str | tuple[str, int | None]], schema: pa.Schema, start: int | None = None,
               end: int | None = None, columns: list[str] | None = None, batch_rows: int = 65536,
               should_stop: Callable[[], bool] | None = None) -> Iterator[pa.RecordBatch]:
    """Rows of a topic with ``start <= timestamp_ns < end``, in ascending timestamp order (rows with
    equal timestamps all kept), in batches of at most ``batch_rows`` rows (shorter ones at run
    boundaries and at the end; never copied just to re-align).  Never yields empty batches.

    ``data_files``: chunk keys, or ``(key, order)`` pairs with the ``Order`` checked when the chunk
    was indexed; row groups of a file not known to be sorted (``Order.UNSORTED`` or unknown) are
    sorted here, one at a time.  ``should_stop`` is polled between steps: when it returns true the
    read raises a CANCELLED error."""
    if columns is not None:
        if TS not in columns:
            columns = [TS] + list(columns)
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    runs: list[_Run] = []
    footers: dict[str, pq.FileMetaData] = {}  # footers only: the files are reopened when read
    for item in data_files:
        key, order = (item, None) if isinstance(item, str) else item
        pf = open_parquet(store, key)
        sorted_rows = order is not None and order >= Order.ROW_GROUPS
        file_runs = _row_group_runs(key, pf, start, end, sorted_rows)
        if file_runs:
            footers[key] = pf.metadata
            runs.extend(file_runs)
    runs.sort(key=lambda r: (r.ts_min, r.ts_max))
    # a file stays open only while some of its runs are still to be read
    remaining: dict[str, int] = {}
    for r in runs:
        remaining[r.key] = remaining.get(r.key, 0) + 1
    open_files: dict[str, pq.ParquetFile] = {}

    def make_cursor(run: _Run) -> _RunCursor:
        pf = open_files.get(run.key) or open_files.setdefault(
            run.key, open_parquet(store, run.key, footers[run.key]))
        remaining[run.key] -= 1
        if remaining[run.key] == 0:
            del open_files[run.key]
            del footers[run.key]
        return _RunCursor(pf, run, columns, batch_rows, start, end, schema)

    try:
        yield from _rebatch(_merged(runs, make_cursor, schema, should_stop or _never), batch_rows, schema)
    except OrderViolation as exc:
        log.error("chunk file not in the order it was indexed with", problem=str(exc))
        raise errors.internal("a data file of this topic is not in timestamp order although it was indexed "
                              "as sorted; run `mosaicod rebuild-catalog` to re-check the store") from None


def _never() -> bool:
    return False
