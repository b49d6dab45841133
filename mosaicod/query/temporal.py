"""`topic_filter_clusterize` / `topic_filter_intersect`
(docs/query.md#temporal-refinement-actions).

A topic's rows are streamed in ascending ``timestamp_ns`` order by
``store.reader.read_topic`` (only chunks that can match — statistics pruning and the time window
— are opened), the ontology predicate keeps matching rows, and consecutive matching timestamps
``t_prev, t`` share a cluster iff ``t - t_prev <= clustering_dt_ns`` (0 = one cluster).  Clusters
are yielded as soon as they close; nothing is held but the current batch.  Intersect walks the
cluster streams of >= 2 topics of one sequence and emits the overlapping windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from .. import errors, locators
from ..errors import shown
from ..catalog.tables import topic_t
from ..store.chunks import TS
from ..store.objstore import ObjectStore
from ..store.reader import read_topic
from . import prune, sql
from .engine import BATCH_ROWS, compile_for_schemas
from .parse import INT64_MAX, INT64_MIN, OntoFilter, bad, kind_of, parse_ontology_filters
from .rowfilter import RowPredicate


@dataclass(frozen=True)
class ClusterRequest:
    locator: str
    dt: int  # 0 = unbounded
    filters: list[OntoFilter]
    start: int | None
    end: int | None


def _int(where: str, v: Any, minimum: int | None = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise bad(where, f"expected an integer, got {kind_of(v) if v is not None else 'null'}")
    if not INT64_MIN <= v <= INT64_MAX:
        raise bad(where, f"{shown(v, 40)} is out of range (an integer between -2^63 and 2^63-1 is expected)")
    if minimum is not None and v < minimum:
        raise bad(where, f"must be >= {minimum}, got {v}")
    return v


def parse_cluster_request(raw: Any, where: str) -> ClusterRequest:
    if not isinstance(raw, dict):
        raise bad(where, f"expected an object, got {type(raw).__name__}")
    if "locator" not in raw:
        raise bad(where, "missing 'locator'")
    loc = raw["locator"]
    if not isinstance(loc, str):
        raise bad(f"{where}.locator", "expected a topic locator string 'sequence/topic'")
    try:
        loc = locators.topic(loc)
    except errors.MosaicoError:
        raise bad(f"{where}.locator", f"invalid topic locator {loc!r}") from None
    dt = _int(f"{where}.clustering_dt_ns", raw.get("clustering_dt_ns", 0) or 0)
    onto = raw.get("ontology") or {}
    filters = parse_ontology_filters(onto, f"{where}.ontology")
    start = end = None
    tr = raw.get("timestamp_range")
    if tr is not None:
        if not isinstance(tr, dict):
            raise bad(f"{where}.timestamp_range", "expected {\"start_ns\": int, \"end_ns\": int} or null")
        if tr.get("start_ns") is not None:
            start = _int(f"{where}.timestamp_range.start_ns", tr["start_ns"], None)
        if tr.get("end_ns") is not None:
            end = _int(f"{where}.timestamp_range.end_ns", tr["end_ns"], None)
        if start is not None and end is not None and start >= end:
            raise bad(f"{where}.timestamp_range", f"invalid range: start_ns {start} must be < end_ns {end}")
    return ClusterRequest(loc, dt, filters, start, end)


def _require_conditions(req: ClusterRequest, where: str) -> None:
    """Without an ontology condition every row would match: refused, as upstream does."""
    if not req.filters:
        raise bad(f"{where}.ontology", "At least 1 filtering condition is required, found 0")


@dataclass(frozen=True)
class _Prepared:
    req: ClusterRequest
    schema: pa.Schema | None
    pred: RowPredicate
    files: list[tuple[str, int | None]]


def _prepare(conn: sa.Connection, req: ClusterRequest) -> _Prepared:
    row = conn.execute(sa.select(topic_t.c.topic_id, topic_t.c.ontology_tag, topic_t.c.arrow_schema)
                       .select_from(sql.topics_from())
                       .where(topic_t.c.locator_name == req.locator)).first()
    if row is None:
        raise errors.not_found(f"topic `{req.locator}`")
    topic_id, tag, blob = row
    for f in req.filters:
        if f.tag != tag:
            raise bad(f.where, f"wrong ontology tag {f.tag}, topic uses {tag}")
    if blob is None:
        return _Prepared(req, None, RowPredicate(()), [])
    schema = pa.ipc.read_schema(pa.py_buffer(blob))
    preds, terms = compile_for_schemas({"": schema}, req.filters)
    rows = prune.candidate_chunks(conn, tag, terms, [topic_t.c.topic_id == topic_id],
                                  window=(req.start, req.end))
    files = [(r.data_file, r.timestamp_order) for r in rows or []]
    return _Prepared(req, schema, preds[""], files)


def _matching_timestamps(store: ObjectStore, p: _Prepared) -> Iterator[np.ndarray]:
    """Ascending arrays of matching timestamps, one per batch read."""
    if p.schema is None or not p.files:
        return
    for batch in read_topic(store, p.files, p.schema, p.req.start, p.req.end,
                            columns=p.pred.columns, batch_rows=BATCH_ROWS):
        ts = batch.column(TS)  # never null: refused at ingest and by rebuild-catalog, dropped by read_topic
        mask = p.pred.mask(batch)
        if mask.any():
            yield np.asarray(ts.to_numpy(zero_copy_only=False), dtype=np.int64)[mask]


def _clusters(store: ObjectStore, p: _Prepared) -> Iterator[tuple[int, int]]:
    dt = p.req.dt
    start = end = None
    for ts in _matching_timestamps(store, p):
        if start is None:
            start = int(ts[0])
        elif dt and int(ts[0]) - end > dt:
            yield start, end
            start = int(ts[0])
        if dt and len(ts) > 1:
            for b in np.nonzero(np.diff(ts) > dt)[0]:
                yield start, int(ts[b])
                start = int(ts[b + 1])
        end = int(ts[-1])
    if start is not None:
        yield start, end


def _numbered(pairs: Iterator[tuple[int, int]]) -> Iterator[dict]:
    for i, (a, b) in enumerate(pairs):
        yield {"id": i, "ts": {"start_ns": a, "end_ns": b}}


def clusterize(engine: sa.Engine, store: ObjectStore, body: dict) -> Iterator[dict]:
    """Validate now (errors raise here), then return the lazy stream of clusters."""
    req = parse_cluster_request(body, "topic_filter_clusterize")
    _require_conditions(req, "topic_filter_clusterize")
    with engine.connect() as conn:
        p = _prepare(conn, req)
    return _numbered(_clusters(store, p))


def intersect(engine: sa.Engine, store: ObjectStore, body: dict) -> Iterator[dict]:
    where = "topic_filter_intersect"
    if not isinstance(body, dict):
        raise bad(where, f"expected an object, got {type(body).__name__}")
    topics = body.get("topics")
    if not isinstance(topics, list) or len(topics) < 2:
        raise bad(f"{where}.topics", "at least 2 topics are required")
    dt = _int(f"{where}.intersect_dt_ns", body.get("intersect_dt_ns", 0) or 0)
    reqs = [parse_cluster_request(t, f"{where}.topics[{i}]") for i, t in enumerate(topics)]
    seqs = {r.locator.partition("/")[0] for r in reqs}
    if len(seqs) > 1:
        raise bad(f"{where}.topics", f"all topics must belong to the same sequence, got {sorted(seqs)}")
    for i, r in enumerate(reqs):
        _require_conditions(r, f"{where}.topics[{i}]")
    with engine.connect() as conn:
        prepared = [_prepare(conn, r) for r in reqs]
    return _numbered(_intersect(store, prepared, dt))


def _intersect(store: ObjectStore, prepared: list[_Prepared], dt: int) -> Iterator[tuple[int, int]]:
    streams = [_clusters(store, p) for p in prepared]
    cur = [next(s, None) for s in streams]
    if any(c is None for c in cur):
        return  # one topic never matches: nothing happens "at once"
    half = dt // 2
    while True:
        max_start = max(c[0] for c in cur)
        k = min(range(len(cur)), key=lambda i: cur[i][1])
        min_end = cur[k][1]
        if max_start <= min_end + dt:
            if max_start <= min_end:
                yield max_start, min_end
            else:
                lo = max_start - half
                yield (max(lo, 0) if max_start >= 0 else lo), min_end + (dt - half)
        cur[k] = next(streams[k], None)
        if cur[k] is None:
            return
