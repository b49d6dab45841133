"""The time-ordered reader used by do_get, clusterize and the store optimizer.

A topic's chunk files are cut into *runs*: one per Parquet row group that may hold rows of the
window ``[start, end)`` (row-group statistics prune the others).  A run whose rows were found
sorted when its chunk was indexed (``chunk_t.timestamp_order``) is streamed batch by batch;
any other run (a foreign file, a chunk indexed before the order was recorded) is read whole and
sorted, one row group at a time.  Sortedness is still checked on every batch read: a run indexed
as sorted that is not ends the read with a clear error instead of a wrong answer.

Runs are sorted by their first timestamp and cut into *components* of runs whose time ranges
overlap.  A component of one run (data uploaded in order, or in reverse) is streamed as is.
Overlapping runs (out-of-order uploads, clock jitter, several producers) are merged with a k-way
merge that keeps open only the runs overlapping the current position, so memory is bounded by the
number of runs that overlap one instant, which the plan bounds whatever the arrival order:

* two sorted row groups (``PARQUET_FAN_IN``; clock jitter, the seam between two producers) are
  merged straight from Parquet, each through a small buffered reader (a Parquet reader holds a
  page, often a dictionary page too, per column: ~2 MiB per column, 25-35 MB for an IMU row
  group; an in-order read holds one whole row group, ~65 MB);
* beyond that, each row group of the component is first copied, sorted, into a temporary Arrow
  IPC file of ~1 MiB batches (one row group at a time: the memory of an in-order read), in the
  system temp directory (``TMPDIR``, in a ``mosaicod-merge-<pid>-*`` folder; the files are deleted
  as they are consumed and when the read ends; those a killed process left are removed when serve,
  cleanup or store-optimizer starts: ``remove_stale_spill_dirs``); a merge then reads up to ``fan_in``
  (32) of those files at once, one small batch each, and where more overlap, groups of ``fan_in``
  are merged into one file first, until none do.

Reading a disordered topic thus costs disk I/O and time, not memory; the store optimizer rewrites
it once into sorted, non-overlapping chunks, which read like an in-order topic.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import errors, logs
from .chunks import TS, open_parquet, sort_by_timestamp
from .objstore import ObjectStore
from .rowgroup import DamagedFile, RowGroupBuffer
from .stats import Order

log = logs.get(__name__)

FAN_IN = 32  # spilled runs one merge reads at once (each holds one batch of ~MERGE_BATCH_BYTES)
PARQUET_FAN_IN = 2  # row groups merged straight from Parquet (each holds ~2 MiB per column)
MERGE_READ_BUFFER = 64 * 1024  # per-column read buffer of a row group being merged
MERGE_BATCH_BYTES = 1 << 20  # rows read at once from a run being merged, and per spilled batch
SPILL_PREFIX = "mosaicod-merge-"  # + "<owning pid>-<random>": a spill folder in the temp directory
_SPILL_NAME = re.compile(re.escape(SPILL_PREFIX) + r"([0-9]+)-.+")


@dataclass(eq=False)
class _Run:
    """Rows sorted by timestamp (once opened): a Parquet row group, or a temporary spill file."""

    ts_min: int
    ts_max: int
    key: str | None = None  # chunk file (opened only while the run is read)
    row_group: int = -1
    sorted: bool = True  # rows known to be in timestamp order (checked when the chunk was indexed)
    spill: str | None = None  # temporary Arrow IPC stream of sorted rows
    merged: bool = False  # read together with overlapping runs (small buffered reads)
    merge_rows: int = 1  # rows of about MERGE_BATCH_BYTES


class OrderViolation(Exception):
    """A run indexed as sorted is not: reading on would give wrong answers (or never end)."""


def _cancelled() -> errors.MosaicoError:
    return errors.MosaicoError(errors.Kind.CANCELLED, "read cancelled: the client went away or the server is stopping")


class _Reader:
    """One read: the window, the columns, the chunk files (footers read once) and the spill dir."""

    def __init__(self, store: ObjectStore, schema: pa.Schema, columns, start, end, batch_rows: int,
                 fan_in: int, should_stop: Callable[[], bool]):
        self.store, self.schema, self.columns = store, schema, columns
        self.start, self.end, self.batch_rows, self.fan_in = start, end, batch_rows, fan_in
        self.should_stop = should_stop
        self.footers: dict[str, pq.FileMetaData] = {}
        self._shared: dict[str, pq.ParquetFile] = {}  # streamed files, open while runs of them remain
        self._remaining: dict[str, int] = {}
        self._spill_dir: str | None = None
        self._rg_buffer = RowGroupBuffer()  # streamed row groups of a local store are read into it

    def check(self) -> None:
        if self.should_stop():
            raise _cancelled()

    # -- runs ---------------------------------------------------------------------------------
    def runs_of(self, key: str, order: int | None) -> list[_Run]:
        try:
            pf = open_parquet(self.store, key)
        except (OSError, pa.ArrowInvalid) as exc:
            self._damaged(key, exc)
            raise
        md = pf.metadata
        ts_col = pf.schema_arrow.get_field_index(TS)
        sorted_rows = order is not None and order >= Order.ROW_GROUPS
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
            if (self.end is not None and lo >= self.end) or (self.start is not None and hi < self.start):
                continue
            rows = max(1, MERGE_BATCH_BYTES * g.num_rows // max(1, g.total_byte_size))
            runs.append(_Run(lo, hi, key=key, row_group=rg, sorted=sorted_rows, merge_rows=rows))
        if runs:
            self.footers[key] = md
            self._remaining[key] = len(runs)
        return runs

    def open(self, run: _Run) -> "_Cursor":
        rows = min(self.batch_rows, run.merge_rows) if run.merged else self.batch_rows
        if run.spill is not None:
            return _Cursor(self, run, _spilled(run.spill))
        try:
            batches = self._batches(run, rows)
        except (OSError, pa.ArrowInvalid) as exc:
            self._damaged(run.key, exc)
            raise
        return _Cursor(self, run, self._checked_file(run.key, batches))

    def _damaged(self, key: str, exc: BaseException) -> None:
        """Raise DamagedFile for a failure reading chunk file ``key`` that means the file is
        damaged: any from a local store (a disk error or a file that is not what its footer or the
        catalog says), a malformed file from a remote one; a remote store's OSError (an outage)
        is left to the caller."""
        if isinstance(exc, DamagedFile):
            return
        if self.store.local_path(key) is None and isinstance(exc, OSError):
            return
        if isinstance(exc, FileNotFoundError):
            reason = "missing"
        elif isinstance(exc, OSError) and exc.errno is not None:
            reason = f"unreadable: {exc.strerror}"
        else:
            reason = "not a valid Parquet file"
        raise DamagedFile(reason, f"{key}: {errors.first_line(exc)}") from None

    def _checked_file(self, key: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        try:
            yield from batches
        except (OSError, pa.ArrowInvalid) as exc:
            self._damaged(key, exc)
            raise

    def _batches(self, run: _Run, rows: int) -> Iterator[pa.RecordBatch]:
        pf = self._parquet(run)
        if run.sorted:
            # a local file is decoded on this thread: column-parallel decoding on Arrow's pool cost
            # ~25% more decode CPU per byte in thread hand-offs, and was not even faster (a server
            # streams several reads at once anyway); a remote file keeps the pool, whose threads
            # overlap one column's fetch with another's decoding
            threads = not run.merged and self.store.local_path(run.key) is None
            return pf.iter_batches(batch_size=rows, row_groups=[run.row_group], columns=self.columns,
                                   use_threads=threads)
        return self._sorted_row_group(pf, run, rows)

    def _parquet(self, run: _Run) -> pq.ParquetFile:
        """The chunk file of a run.  A merged run gets its own reader with small read buffers (only
        pages, not whole column chunks, in memory).  A streamed run of a local store has its row
        group's column chunks read into the read's reused buffer (``rowgroup.py``: no memory map,
        whose pages would SIGBUS the process if the file were truncated meanwhile; no fresh zeroed
        buffer per column chunk, which cost ~22% of a read's server CPU in perf).  Remote streamed
        runs share one reader per file (one fsspec handle), released after the last of them."""
        key = run.key
        assert key is not None
        self._remaining[key] -= 1
        last = self._remaining[key] == 0
        footer = self.footers.pop(key) if last else self.footers[key]
        local = self.store.local_path(key)
        if run.merged:
            pf = open_parquet(self.store, key, footer, buffer_size=MERGE_READ_BUFFER)
        elif local is not None:
            pf = pq.ParquetFile(self._rg_buffer.load(local, footer, run.row_group, self.columns), metadata=footer)
        else:
            pf = self._shared.get(key) or self._shared.setdefault(key, open_parquet(self.store, key, footer))
        if last:
            self._shared.pop(key, None)
        return pf

    def _sorted_row_group(self, pf: pq.ParquetFile, run: _Run, rows: int) -> Iterator[pa.RecordBatch]:
        """A row group not known to be sorted: read whole, cut to the window, sorted (stable; rows
        without a timestamp have no place in time and are dropped).  Memory: one row group."""
        table = pf.read_row_group(run.row_group, columns=self.columns, use_threads=True)
        ts = table.column(TS)
        keep = pc.is_valid(ts) if ts.null_count else None
        for bound, op in ((self.start, pc.greater_equal), (self.end, pc.less)):
            if bound is not None:
                m = op(ts, pa.scalar(bound, pa.int64()))
                keep = m if keep is None else pc.and_(keep, m)
        if keep is not None:
            table = table.filter(keep)
        return iter(sort_by_timestamp(table).combine_chunks().to_batches(max_chunksize=rows))

    # -- spilling -----------------------------------------------------------------------------
    def _spill_path(self) -> str:
        if self._spill_dir is None:
            self._spill_dir = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-")
        fd, path = tempfile.mkstemp(suffix=".arrows", dir=self._spill_dir)
        os.close(fd)
        return path

    def spill(self, runs: list[_Run]) -> _Run | None:
        """Merge ``runs`` (at most fan_in of them overlap anywhere) into one sorted temporary run
        (None when the window leaves no row)."""
        path = self._spill_path()
        lo = hi = None
        rows = 1
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, self.schema) as out:
            for batch in _merged(self, runs):
                rows = max(1, MERGE_BATCH_BYTES * batch.num_rows // max(1, batch.nbytes))
                for off in range(0, batch.num_rows, rows):  # small batches: cheap to hold when merged
                    out.write_batch(batch.slice(off, rows))
                ts = batch.column(TS)
                lo = ts[0].as_py() if lo is None else lo
                hi = ts[-1].as_py()
        if lo is None:  # the window cut everything
            os.remove(path)
            return None
        return _Run(lo, hi, spill=path, merged=True, merge_rows=rows)

    def close(self) -> None:
        self._shared.clear()
        self._rg_buffer.close()
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill_dir = None

    # -- planning -----------------------------------------------------------------------------
    def plan(self, runs: list[_Run]) -> Iterator[_Run]:
        """The runs to read, component by component (runs whose time ranges overlap): a lone run is
        streamed; a few overlapping sorted row groups are merged straight from Parquet; otherwise
        each row group is copied, sorted, into a spill file of small batches (one at a time: the
        memory of an in-order read), and where more than ``fan_in`` spill files overlap, groups
        of ``fan_in`` are merged into one until none do."""
        for comp in _components(_by_start(runs)):
            if len(comp) == 1:
                yield comp[0]
                continue
            for r in comp:
                r.merged = True
            if all(r.sorted for r in comp) and _depth(comp) <= min(self.fan_in, PARQUET_FAN_IN):
                yield from comp
                continue
            comp = _by_start(self.spill([r]) for r in comp)
            while _depth(comp) > self.fan_in:
                comp = _by_start(self.spill(comp[i:i + self.fan_in]) for i in range(0, len(comp), self.fan_in))
            yield from comp


def _by_start(runs) -> list[_Run]:
    """The runs (None: a spill the window left empty, dropped) in the order a merge takes them."""
    return sorted((r for r in runs if r is not None), key=lambda r: (r.ts_min, r.ts_max))


def _components(runs: list[_Run]) -> Iterator[list[_Run]]:
    comp: list[_Run] = []
    hi = None
    for r in runs:
        if comp and r.ts_min > hi:
            yield comp
            comp = []
        comp.append(r)
        hi = r.ts_max if len(comp) == 1 else max(hi, r.ts_max)
    if comp:
        yield comp


def _depth(runs: list[_Run]) -> int:
    """The largest number of runs whose (closed) time ranges contain one same instant."""
    events = sorted([(r.ts_min, 0) for r in runs] + [(r.ts_max, 1) for r in runs])  # starts first on ties
    depth = best = 0
    for _, kind in events:
        depth += 1 if kind == 0 else -1
        best = max(best, depth)
    return best


def _spilled(path: str) -> Iterator[pa.RecordBatch]:
    with pa.OSFile(path, "rb") as f:
        yield from pa.ipc.open_stream(f)
    os.remove(path)


class _Cursor:
    """Reads one run in timestamp order, batch by batch, window-sliced; ``head`` is the current
    slice.  Every batch is checked to continue the order (an unsorted run raises OrderViolation
    instead of giving wrong rows)."""

    def __init__(self, reader: _Reader, run: _Run, batches: Iterator[pa.RecordBatch]):
        self.run = run
        self._it = batches
        self.start, self.end = reader.start, reader.end
        self.head: pa.RecordBatch | None = None
        self.ts: np.ndarray | None = None
        self.done = False
        self._prev: int | None = None  # last timestamp read from the run
        self._advance()

    def _where(self) -> str:
        return self.run.spill or f"{self.run.key} row group {self.run.row_group}"

    def _checked_ts(self, batch: pa.RecordBatch) -> np.ndarray:
        col = batch.column(TS)
        if col.null_count:
            raise OrderViolation(f"{self._where()}: null timestamp_ns")
        ts = col.to_numpy(zero_copy_only=False)
        if (self._prev is not None and ts[0] < self._prev) or bool(np.any(ts[1:] < ts[:-1])):
            raise OrderViolation(f"{self._where()}: not sorted by timestamp_ns")
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


def _merged(reader: _Reader, runs: Iterator[_Run] | list[_Run]) -> Iterator[pa.RecordBatch]:
    """k-way merge of runs given in ascending ts_min order: only runs overlapping the current
    position are open.  Each step emits every open run's rows up to the smallest last timestamp of
    the open heads, so the run holding that timestamp always empties its head: the merge always
    advances.  Every open run contains that timestamp, so no more runs are open than overlap."""
    schema = reader.schema
    source = iter(runs)
    nxt = next(source, None)
    active: list[_Cursor] = []

    def pop() -> _Run:
        nonlocal nxt
        run, nxt = nxt, next(source, None)
        return run

    while active or nxt is not None:
        reader.check()
        if not active:
            c = reader.open(pop())
            if not c.done:
                active.append(c)
            continue
        if len(active) == 1 and not (nxt is not None and nxt.ts_min <= active[0].run.ts_max):
            for batch in _conformed(active.pop().drain(), schema):  # disjoint run: no merge needed
                yield batch
                reader.check()
            continue
        bound = min(c.last for c in active)
        while nxt is not None and nxt.ts_min <= bound:
            c = reader.open(pop())
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


def read_topic(store: ObjectStore, data_files: list[str | tuple[str, int | None]], schema: pa.Schema,
               start: int | None = None, end: int | None = None, columns: list[str] | None = None,
               batch_rows: int = 65536, should_stop: Callable[[], bool] | None = None,
               fan_in: int = FAN_IN) -> Iterator[pa.RecordBatch]:
    """Rows of a topic with ``start <= timestamp_ns < end``, in ascending timestamp order (rows with
    equal timestamps all kept), in batches of at most ``batch_rows`` rows (shorter ones at run
    boundaries and at the end; never copied just to re-align).  Never yields empty batches.

    ``data_files``: chunk keys, or ``(key, order)`` pairs with the ``Order`` checked when the chunk
    was indexed (a plain key: order unknown, each row group is sorted here).  ``should_stop`` is
    polled between steps: when it returns true the read ends with a CANCELLED error.  ``fan_in``:
    at most that many runs are read at once (see the module docstring)."""
    if columns is not None:
        if TS not in columns:
            columns = [TS] + list(columns)
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    reader = _Reader(store, schema, columns, start, end, batch_rows, max(2, fan_in), should_stop or _never)
    try:
        runs: list[_Run] = []
        for item in data_files:
            key, order = (item, None) if isinstance(item, str) else item
            runs.extend(reader.runs_of(key, order))
        yield from _rebatch(_merged(reader, reader.plan(runs)), batch_rows, schema)
    except DamagedFile as exc:
        log.error("chunk file damaged: read stopped", reason=exc.reason, problem=str(exc))
        raise errors.MosaicoError(
            errors.Kind.DATA_LOSS,
            f"a data file of this topic is damaged ({exc.reason}): the read stopped there. An operator must "
            "restore the file from a backup (`mosaicod rebuild-catalog --dry-run` lists damaged files; "
            "`mosaicod rebuild-catalog` re-indexes the store as it is)") from None
    except OrderViolation as exc:
        log.error("chunk file not in the order it was indexed with", problem=str(exc))
        raise errors.internal("a data file of this topic is not in timestamp order although it was indexed "
                              "as sorted; run `mosaicod rebuild-catalog` to re-check the store") from None
    finally:
        reader.close()


def _never() -> bool:
    return False


def remove_stale_spill_dirs(*, starting: bool = True) -> int:
    """Remove the spill folders a killed process left in the temp directory (a read removes its own
    when it ends, but not after a SIGKILL): those whose owning process is dead and, when
    ``starting``, those named with this process's own pid (a previous process with the same pid,
    e.g. PID 1 of a restarted container; a process that is starting reads nothing yet).  A live
    process's folder and folders not named ``mosaicod-merge-<pid>-*`` are left alone.  Returns
    the number removed."""
    root = tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        owner = _SPILL_NAME.fullmatch(name)
        if owner is None:
            continue
        pid = int(owner[1])
        stale = (starting and pid == os.getpid()) or not _alive(pid)
        if not stale:
            continue
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed += not os.path.exists(path)
    if removed:
        log.info("removed temporary merge folders left by stopped processes", folders=removed, dir=root)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
