"""View types on the read path, as upstream 0.7 returns topics.

Upstream reads topics back through DataFusion's Parquet reader, which turns **top-level**
``string``/``large_string`` columns into ``string_view`` and ``binary``/``large_binary`` into
``binary_view``.  Nested types (struct children, list items, map entries) are untouched.  Storage
keeps the uploaded types; the substitution happens only on output (GetSchema, the DoGet schema and
every DoGet batch, the legacy FlightInfo schema).  Field names, nullability and field metadata, and
the schema-level metadata, are kept exactly.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import pyarrow as pa

_VIEW_OF = {pa.string(): pa.string_view(), pa.large_string(): pa.string_view(),
            pa.binary(): pa.binary_view(), pa.large_binary(): pa.binary_view()}


def view_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with its top-level string/binary fields as view types."""
    fields = [f.with_type(_VIEW_OF[f.type]) if f.type in _VIEW_OF else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def as_view(array: pa.Array, view_type: pa.DataType) -> pa.Array:
    """``array`` cast to ``view_type``.  The cast references the character data in place, and the
    IPC writer sends a view array's data buffers whole: a slice of a larger array (a window cut, a
    split batch) is compacted first, so a batch never carries the bytes of its neighbours."""
    if array.get_total_buffer_size() > 2 * array.nbytes + 65536:
        array = pa.concat_arrays([array])  # copies only the slice's values
    return array.cast(view_type)


def view_batches(batches: Iterable[pa.RecordBatch], stored: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Each batch (of the ``stored`` schema) with its top-level string/binary columns cast to view
    types; batches pass through untouched when the schema has no such column."""
    out_schema = view_schema(stored)
    casts = [(i, out_schema.field(i).type) for i, f in enumerate(stored) if f.type in _VIEW_OF]
    if not casts:
        yield from batches
        return
    for batch in batches:
        columns = list(batch.columns)
        for i, view_type in casts:
            columns[i] = as_view(columns[i], view_type)
        yield pa.RecordBatch.from_arrays(columns, schema=out_schema)
