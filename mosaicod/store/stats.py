"""Per-chunk column statistics (docs/storage.md#column-statistics).

Leaves of the Arrow schema are flattened to dotted names (``acceleration.x``); list columns are
named by the list field's path and their statistics cover every element.  Numeric leaves (ints,
floats, bools) keep float64 min/max over non-null, non-NaN values, rounded outwards so that
pruning stays conservative for int64 values above 2**53; textual leaves (strings and temporal
types cast to text) keep byte-order min/max.  Statistics are accumulated batch by batch, so a
chunk never has to be in memory at once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NUMERIC_EMPTY = (1.7976931348623157e308, -1.7976931348623157e308)  # (min, max) placeholders
TEXT_EMPTY = ("", "")


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
        or pa.types.is_list_view(t) or pa.types.is_large_list_view(t)


def classify(t: pa.DataType) -> str | None:
    """'numeric', 'textual' or None (no statistics) for a leaf type."""
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return "numeric"
    if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
            or pa.types.is_date(t) or pa.types.is_timestamp(t) or pa.types.is_time(t)):
        return "textual"
    return None


@dataclass(frozen=True)
class Leaf:
    name: str  # dotted column name without the ontology tag
    path: tuple[str, ...]  # field names from the top-level field
    kind: str  # numeric | textual
    type: pa.DataType
    # how to reach the leaf's values from the top-level column: LIST (flatten the list) or the
    # index of a struct's child, in order
    steps: tuple[int, ...] = ()


LIST = -1  # a step of Leaf.steps: flatten a list


@functools.lru_cache(maxsize=256)  # per schema: every chunk of every upload of a topic type walks it
def leaves(schema: pa.Schema) -> tuple[Leaf, ...]:
    """Depth-first leaves of a schema; lists of primitives / of structs are descended once."""
    out: list[Leaf] = []

    def walk(t: pa.DataType, path: tuple[str, ...], steps: tuple[int, ...], in_list: bool) -> None:
        if pa.types.is_struct(t):
            for i in range(t.num_fields):
                f = t.field(i)
                walk(f.type, path + (f.name,), steps + (i,), in_list)
            return
        if _is_list(t):
            if in_list:
                return  # list of lists: unsupported
            walk(t.value_type, path, steps + (LIST,), True)
            return
        kind = classify(t)
        if kind:
            out.append(Leaf(".".join(path), path, kind, t, steps))

    for f in schema:
        walk(f.type, (f.name,), (), False)
    return tuple(out)


def _leaf_values(batch: pa.RecordBatch, leaf: Leaf,
                 seen: dict[tuple, tuple[pa.Array, bool]] | None = None) -> tuple[pa.Array, bool]:
    """All values of a leaf in the batch (list elements flattened) and whether a null was seen
    on the way (a null struct or list counts as a null value of the leaf).  ``seen``: what the
    batch's other leaves already reached (a struct is flattened once per batch, not once per
    leaf under it: an SDK IMU has 33 leaves under a few structs)."""
    seen = {} if seen is None else seen
    key: tuple = (leaf.path[0],)
    found = seen.get(key)
    if found is None:
        arr = batch.column(leaf.path[0])
        found = seen[key] = (arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr, False)
    for step in leaf.steps:
        parent = key
        key = key + (step,)
        hit = seen.get(key)
        if hit is not None:
            found = hit
            continue
        arr, saw_null = found
        saw_null = saw_null or arr.null_count > 0
        if step == LIST:
            found = seen[key] = (pc.list_flatten(arr), saw_null)
            continue
        children = seen.get(parent + ("children",))
        if children is None:  # a struct's children, with the struct's own nulls merged in
            children = seen[parent + ("children",)] = (arr.flatten(), saw_null)
        found = seen[key] = (children[0][step], saw_null)
    return found


@dataclass
class ColumnStats:
    kind: str
    min: object = None
    max: object = None
    has_null: bool = False
    has_nan: bool = False

    def row(self) -> dict:
        """Values as stored in column_chunk_{numeric,textual}_t (placeholders when empty)."""
        if self.kind == "numeric":
            lo, hi = (self.min, self.max) if self.min is not None else NUMERIC_EMPTY
            return {"min_value": _round_down(lo), "max_value": _round_up(hi),
                    "has_null": self.has_null, "has_nan": self.has_nan}
        lo, hi = (self.min, self.max) if self.min is not None else TEXT_EMPTY
        return {"min_value": lo, "max_value": hi, "has_null": self.has_null}


def _round_down(v) -> float:
    f = float(v)
    if isinstance(v, int) and f > v:
        f = math.nextafter(f, -math.inf)
    return f


def _round_up(v) -> float:
    f = float(v)
    if isinstance(v, int) and f < v:
        f = math.nextafter(f, math.inf)
    return f


def _text(values: pa.Array) -> pa.Array:
    t = values.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return values
    return pc.cast(values, pa.string())


def _numeric_min_max(values: pa.Array) -> tuple[object, object, bool] | None:
    """(min, max, has_nan) of a numeric array with no nulls, or None when all values are NaN.

    numpy's min/max are ~20x faster than pyarrow's min_max kernel here; they propagate NaN,
    which doubles as the NaN detector (the exact values are then recomputed without NaN).
    Buffers received over Flight are not aligned (the IPC body sits at any offset of the gRPC
    message): numpy then copies them piecewise for each reduction (``perf`` on an IMU upload:
    7% of the server CPU in ``_contig_to_contig`` under ``array_min`` / ``array_max``); one
    aligned copy first costs less than that (3.7x faster min + max on 32 MiB)."""
    t = values.type
    if pa.types.is_boolean(t) or pa.types.is_float16(t):
        values = pc.cast(values, pa.int8() if pa.types.is_boolean(t) else pa.float32())
    arr = values.to_numpy(zero_copy_only=False)
    if not arr.flags.aligned:
        arr = arr.copy()
    lo, hi = arr.min(), arr.max()
    has_nan = False
    if arr.dtype.kind == "f" and (math.isnan(lo) or math.isnan(hi)):
        has_nan = True
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return None
        lo, hi = arr.min(), arr.max()
    return lo.item(), hi.item(), has_nan


def _update(stats: ColumnStats, values: pa.Array, saw_null: bool) -> None:
    stats.has_null = stats.has_null or saw_null or values.null_count > 0
    if len(values) == values.null_count:
        return
    if stats.kind == "numeric":
        if values.null_count:
            values = pc.drop_null(values)
        found = _numeric_min_max(values)
        if found is None:
            stats.has_nan = True
            return
        lo, hi, has_nan = found
        stats.has_nan = stats.has_nan or has_nan
    else:
        mm = pc.min_max(_text(values))
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        if lo is None:
            return
    # textual: Python str order on code points equals UTF-8 byte order, as upstream
    if stats.min is None or lo < stats.min:
        stats.min = lo
    if stats.max is None or hi > stats.max:
        stats.max = hi


class Order:
    """How the rows of a chunk file are ordered by timestamp_ns (``chunk_t.timestamp_order``)."""

    UNSORTED = 0  # some row group holds rows out of order (or null timestamps)
    ROW_GROUPS = 1  # every row group is sorted; row groups may overlap
    FILE = 2  # the whole file is sorted: row groups sorted and in ascending order


class OrderCheck:
    """Checks, batch by batch, whether rows are sorted within each row group and across them."""

    def __init__(self) -> None:
        self.order = Order.FILE
        self._last: int | None = None  # last timestamp of the current row group
        self._prev_max: int | None = None  # largest timestamp of the previous row groups

    def start_row_group(self) -> None:
        if self._last is not None:
            self._prev_max = self._last if self._prev_max is None else max(self._prev_max, self._last)
        self._last = None

    def feed(self, ts: pa.Array) -> None:
        if self.order == Order.UNSORTED or len(ts) == 0:
            return
        if ts.null_count:
            self.order = Order.UNSORTED
            return
        a = ts.to_numpy(zero_copy_only=False)
        if (self._last is not None and a[0] < self._last) or bool(np.any(a[1:] < a[:-1])):
            self.order = Order.UNSORTED
            return
        if self._last is None and self._prev_max is not None and a[0] < self._prev_max:
            self.order = Order.ROW_GROUPS
        self._last = int(a[-1])


@dataclass
class ChunkStats:
    """Accumulates statistics of every leaf over the batches of one chunk."""

    schema: pa.Schema
    row_count: int = 0
    arrow_size_bytes: int = 0
    ts_min: int | None = None  # exact timestamp_ns range
    ts_max: int | None = None
    ts_nulls: int = 0  # rows whose timestamp_ns is null
    columns: dict[str, ColumnStats] = field(default_factory=dict)
    _leaves: tuple[Leaf, ...] = ()
    _order: OrderCheck = field(default_factory=OrderCheck)

    def __post_init__(self) -> None:
        self._leaves = leaves(self.schema)
        self.columns = {leaf.name: ColumnStats(leaf.kind) for leaf in self._leaves}

    @property
    def ts_order(self) -> int:
        """Order of the rows fed so far (an ``Order`` value)."""
        return self._order.order

    def start_row_group(self) -> None:
        """The next batches belong to a new Parquet row group (for ``ts_order``)."""
        self._order.start_row_group()

    def update(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.row_count += batch.num_rows
        self.arrow_size_bytes += batch.nbytes
        if "timestamp_ns" in batch.schema.names:
            ts = batch.column("timestamp_ns")
            self.ts_nulls += ts.null_count
            if pa.types.is_integer(ts.type):
                self._order.feed(ts)
        seen: dict[tuple, tuple[pa.Array, bool]] = {}
        for leaf in self._leaves:
            values, saw_null = _leaf_values(batch, leaf, seen)
            _update(self.columns[leaf.name], values, saw_null)
        ts = self.columns.get("timestamp_ns")
        if ts is not None and ts.min is not None:
            self.ts_min, self.ts_max = int(ts.min), int(ts.max)

    def items(self) -> Iterator[tuple[str, ColumnStats]]:
        return iter(self.columns.items())
