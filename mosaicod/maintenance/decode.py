"""Step 9 of a catalog rebuild: stream every Parquet data file once and recompute what the catalog
keeps about it (row count, Arrow size, exact timestamp range, per-column statistics).

Files are decoded batch by batch (memory bounded by one row group per worker) by a pool of
threads or processes; ``ordered_map`` keeps at most ``window`` files in flight and yields the
results in submission order, so the loader can commit sequence by sequence.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from .. import errors
from ..store.chunks import open_parquet
from ..store.objstore import ObjectStore
from ..store.stats import ChunkStats

BATCH_ROWS = 65536


@dataclass
class FileResult:
    key: str
    size: int
    row_count: int = 0
    arrow_size_bytes: int = 0
    ts_min: int | None = None
    ts_max: int | None = None
    ts_order: int | None = None  # store.stats.Order, checked row by row
    schema_bytes: bytes | None = None
    columns: dict[str, dict] = field(default_factory=dict)  # name -> stats row (+ "kind")
    error: str | None = None
    error_kind: str = "corrupt-file"  # problem kind reported for ``error``


class Refused(ValueError):
    """A readable file whose rows cannot be indexed (reported as ``kind``, not as corrupt)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def footer_rows(store: ObjectStore, key: str) -> int:
    return open_parquet(store, key).metadata.num_rows


def decode_file(store: ObjectStore, key: str, size: int, batch_rows: int = BATCH_ROWS) -> FileResult:
    res = FileResult(key, size)
    try:
        pf = open_parquet(store, key)
        schema = pf.schema_arrow
        if "timestamp_ns" not in schema.names or not pa.types.is_int64(schema.field("timestamp_ns").type):
            raise ValueError("no int64 timestamp_ns column")
        stats = ChunkStats(schema)
        for rg in range(pf.metadata.num_row_groups):  # per row group: the order check needs the bounds
            stats.start_row_group()
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], use_threads=False):
                stats.update(batch)
        footer = pf.metadata.num_rows
        if footer != stats.row_count:
            raise ValueError(f"footer says {footer} rows, decoded {stats.row_count}")
        if stats.ts_nulls:
            raise Refused("null-timestamps", f"{stats.ts_nulls} rows have a null timestamp_ns")
    except Refused as exc:
        res.error, res.error_kind = str(exc), exc.kind
        return res
    except Exception as exc:  # noqa: BLE001 - corrupt/truncated files are reported, not fatal
        res.error = f"{type(exc).__name__}: {errors.first_line(exc, '')}"
        return res
    res.row_count = stats.row_count
    res.arrow_size_bytes = stats.arrow_size_bytes
    res.ts_min, res.ts_max, res.ts_order = stats.ts_min, stats.ts_max, stats.ts_order
    res.schema_bytes = schema.serialize().to_pybytes()
    res.columns = {name: {"kind": cs.kind, **cs.row()} for name, cs in stats.items()}
    return res


# -- pools ---------------------------------------------------------------------------------------

_WORKER_STORE: ObjectStore | None = None


def _init_worker(store: ObjectStore) -> None:
    global _WORKER_STORE
    _WORKER_STORE = store


def _decode_in_worker(args: tuple[str, int, int]) -> FileResult:
    assert _WORKER_STORE is not None
    return decode_file(_WORKER_STORE, *args)


def make_executor(store: ObjectStore, kind: str, jobs: int) -> tuple[Executor, Callable[[tuple], FileResult]]:
    jobs = max(1, jobs or (os.cpu_count() or 1))
    if kind == "process":
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        return (ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                    initargs=(store,)), _decode_in_worker)
    return ThreadPoolExecutor(max_workers=jobs), lambda a: decode_file(store, *a)


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], executor: Executor, window: int) -> Iterator[Any]:
    """executor.map with at most ``window`` tasks in flight (bounded memory), results in order."""
    it = iter(items)
    pending: deque = deque()
    for item in it:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
            break
    while pending:
        fut = pending.popleft()
        nxt = next(it, _END)
        if nxt is not _END:
            pending.append(executor.submit(fn, nxt))
        yield fut.result()


_END = object()
