"""The rows a sequence should have in the catalog (from the rebuild plan and the decoded files),
and their difference from the rows it has (``catalog.rebuild.current_rows``).

Rows are compared in the canonical form of ``catalog.rebuild.Rows``: keyed by natural keys
(locators, data-file keys, column names), never by serial ids or chunk UUIDs.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..catalog.rebuild import TABLE_ORDER, Rows, stats_key
from .decode import FileResult
from .plan import SequencePlan, TopicPlan
from .scan import Problem


def desired_rows(seq: SequencePlan, sessions: list, topics: list[TopicPlan],
                 results: dict[str, FileResult], problems: list[Problem]) -> Rows:
    """Rows the catalog should hold for one sequence; updates topic time ranges and schemas."""
    rows = Rows()
    rows.add("sequence_t", seq.locator, {"sequence_uuid": seq.uuid, "user_metadata": seq.user_metadata,
                                         "path_in_store": seq.path_in_store,
                                         "creation_unix_tstamp": seq.created})
    for s in sessions:
        rows.add("session_t", s.locator, {"session_uuid": s.uuid, "sequence": s.sequence,
                                          "creation_unix_tstamp": s.created,
                                          "completion_unix_tstamp": s.completed})
    for t in topics:
        schema_bytes = t.schema_bytes
        schema = _read_schema(schema_bytes)
        lo = hi = None
        for fp in t.files:
            r = results.get(fp.key)
            if r is None or r.error:
                continue
            if r.row_count == 0:
                problems.append(Problem("empty-file", fp.key, "zero-row data file: no chunk row"))
                continue
            file_schema = _read_schema(r.schema_bytes)
            if schema is None:
                schema, schema_bytes = file_schema, r.schema_bytes
            elif file_schema is not None and not file_schema.equals(schema, check_metadata=False):
                problems.append(Problem("schema-mismatch", fp.key, "schema differs from the topic's; indexed anyway"))
            c = fp.committed or {}
            exact_arrow = isinstance(c.get("arrow_size_bytes"), int)
            rows.add("chunk_t", fp.key, {
                "topic": t.locator, "size_bytes": fp.size, "row_count": r.row_count,
                "arrow_size_bytes": c["arrow_size_bytes"] if exact_arrow else r.arrow_size_bytes,
                "start_timestamp_ns": r.ts_min, "end_timestamp_ns": r.ts_max, "timestamp_order": r.ts_order,
            }, None if exact_arrow else {"arrow_size_bytes"})
            if isinstance(c.get("row_count"), int) and c["row_count"] != r.row_count:
                problems.append(Problem("commit-mismatch", fp.key,
                                        f"_COMMIT.json says {c['row_count']} rows, file has {r.row_count}"))
            for name, st in r.columns.items():
                table = "column_chunk_numeric_t" if st["kind"] == "numeric" else "column_chunk_textual_t"
                row = {k: v for k, v in st.items() if k != "kind"}
                rows.add(table, stats_key(fp.key, t.ontology_tag, name), row)
            if r.ts_min is not None:
                lo = r.ts_min if lo is None else min(lo, r.ts_min)
                hi = r.ts_max if hi is None else max(hi, r.ts_max)
        rows.add("topic_t", t.locator, {
            "topic_uuid": t.uuid, "sequence": t.sequence, "session": t.session,
            "user_metadata": t.user_metadata, "path_in_store": t.path_in_store,
            "serialization_format": t.serialization_format, "ontology_tag": t.ontology_tag,
            "creation_unix_tstamp": t.created, "completion_unix_tstamp": t.completed,
            "start_index_timestamp": lo, "end_index_timestamp": hi,
            "optimization_end_unix_tstamp": t.optimization_end, "arrow_schema": schema_bytes,
            "interrupted_unix_tstamp": t.interrupted,
        }, {"optimization_end_unix_tstamp"})
    return rows


def _read_schema(b: bytes | None) -> pa.Schema | None:
    if not b:
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(b))
    except Exception:  # noqa: BLE001
        return None


def diff(want: Rows, have: Rows) -> list[dict]:
    """Differences, table by table: missing_in_catalog / only_in_catalog / different."""
    out: list[dict] = []
    for table in TABLE_ORDER:
        w, h = want.tables[table], have.tables[table]
        for key in sorted(w.keys() - h.keys(), key=str):
            out.append({"table": table, "key": key, "change": "missing_in_catalog"})
        for key in sorted(h.keys() - w.keys(), key=str):
            if table == "topic_t" and h[key].get("path_in_store") is None:
                continue  # created but never uploaded: no folder exists, cannot be restored (known limit)
            out.append({"table": table, "key": key, "change": "only_in_catalog"})
        for key in sorted(w.keys() & h.keys(), key=str):
            skip = want.inexact.get((table, key), set())
            fields = {c: {"catalog": _show(h[key].get(c)), "store": _show(v)}
                      for c, v in w[key].items() if c not in skip and h[key].get(c) != v}
            if fields:
                out.append({"table": table, "key": key, "change": "different", "fields": fields})
    return out


def _show(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(v))} bytes>"
    return v


