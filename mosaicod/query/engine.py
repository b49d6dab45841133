"""The `query` action (docs/query.md#ontology-filters).

1. sequence/topic/user-metadata filters -> SQL clauses over ``topic_t JOIN sequence_t``;
2. without an ontology section: the matching topics, grouped by sequence;
3. with one: per ontology tag, resolve the expressions against the distinct topic schemas of the
   tag (unknown fields / wrong operand types are errors), prune chunks with statistics, then
   check the candidate Parquet files exactly — a topic matches when one row satisfies every
   expression of the group; reading stops at the first hit;
4. tag groups combine by intersecting sequences and uniting their topics.
Sequences are sorted by name, topics by locator.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from ..catalog.tables import sequence_t, topic_t
from ..store.chunks import open_parquet
from ..store.objstore import ObjectStore
from . import prune, sql
from .parse import OntoFilter, Query, bad, parse_query
from .rowfilter import RowPredicate, Unresolved, compile_predicate, resolve

MAX_CONCURRENT_CHUNK_QUERIES = 4  # topics checked in parallel (pyarrow releases the GIL)
BATCH_ROWS = 65536


@dataclass
class QueryStats:
    """What the ontology stage did (for benchmarks and logs)."""

    chunks_candidate: int = 0  # chunks surviving statistics pruning
    chunks_read: int = 0  # Parquet files opened
    batches_read: int = 0
    topics_checked: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, chunks: int, batches: int) -> None:
        with self._lock:
            self.chunks_read += chunks
            self.batches_read += batches


def run_query(engine: sa.Engine, store: ObjectStore, body: dict) -> dict:
    return execute(engine, store, parse_query(body))


def execute(engine: sa.Engine, store: ObjectStore, q: Query, stats: QueryStats | None = None) -> dict:
    stats = stats if stats is not None else QueryStats()
    where = sql.where_clauses(q)
    with engine.connect() as conn:
        if q.ontology is None:
            if not where:
                return {"items": []}
            rows = conn.execute(sa.select(sequence_t.c.locator_name, topic_t.c.locator_name,
                                          topic_t.c.ontology_tag)
                                .select_from(sql.topics_from()).where(*where))
            return _items(conn, ((s, t, tag) for s, t, tag in rows))
        if not q.ontology:
            return {"items": []}  # present-but-empty ontology: upstream returns nothing
        groups: dict[str, list[OntoFilter]] = defaultdict(list)
        for f in q.ontology:
            groups[f.tag].append(f)
        keep: set[int] | None = None
        found: list[tuple[str, str, str, int]] = []
        for tag, filters in groups.items():
            clauses = list(where)
            if keep is not None:
                clauses.append(sequence_t.c.sequence_id == sa.any_(sa.literal(sorted(keep), ARRAY(sa.BigInteger))))
            matched = _match_tag(conn, store, tag, filters, clauses, stats)
            seqs = {m[3] for m in matched}
            keep = seqs if keep is None else keep & seqs
            found.extend(matched)
            if not keep:
                return {"items": []}
        return _items(conn, ((s, t, tag) for s, t, tag, sid in found if sid in keep))


def _items(conn: sa.Connection, rows) -> dict:
    """The reply: topics grouped by sequence, each with its `timestamp_range` ``[first, last]``
    when it has data (read by the older dialect; 0.7 clients ignore it)."""
    by_seq: dict[str, dict[str, str]] = defaultdict(dict)
    for seq, topic, tag in rows:
        by_seq[seq][topic] = tag
    ranges = _time_ranges(conn, [t for topics in by_seq.values() for t in topics])

    def entry(locator: str, tag: str) -> dict:
        out = {"locator": locator, "ontology_tag": tag}
        if locator in ranges:
            out["timestamp_range"] = ranges[locator]
        return out

    return {"items": [{"sequence": s, "topics": [entry(t, by_seq[s][t]) for t in sorted(by_seq[s])]}
                      for s in sorted(by_seq)]}


def _time_ranges(conn: sa.Connection, locators: list[str]) -> dict[str, list[int]]:
    if not locators:
        return {}
    rows = conn.execute(sa.select(topic_t.c.locator_name, topic_t.c.start_index_timestamp,
                                  topic_t.c.end_index_timestamp)
                        .where(topic_t.c.locator_name.in_(locators),
                               topic_t.c.start_index_timestamp.isnot(None)))
    return {loc: [int(lo), int(hi)] for loc, lo, hi in rows}


# ---------------------------------------------------------------------------------------------
# ontology


def schemas_of_tag(conn: sa.Connection, tag: str, where: list) -> dict[str, pa.Schema]:
    rows = conn.execute(sa.select(sa.func.md5(topic_t.c.arrow_schema), topic_t.c.arrow_schema)
                        .select_from(sql.topics_from())
                        .where(topic_t.c.ontology_tag == tag, topic_t.c.arrow_schema.isnot(None), *where)
                        .distinct())
    return {md5: pa.ipc.read_schema(pa.py_buffer(blob)) for md5, blob in rows}


def compile_for_schemas(schemas: dict[str, pa.Schema], filters: list[OntoFilter]
                        ) -> tuple[dict[str, RowPredicate | None], list[prune.Term]]:
    """Predicate per schema (None where a path is missing) and the pruning terms.  Raises
    bad_request when a path exists in none of the schemas or an operand has the wrong type."""
    preds: dict[str, RowPredicate | None] = {}
    first_missing: Unresolved | None = None
    for key, schema in schemas.items():
        try:
            preds[key] = compile_predicate(schema, filters)
        except Unresolved as exc:
            preds[key] = None
            first_missing = first_missing or exc
    if schemas and all(p is None for p in preds.values()):
        raise bad(first_missing.where, f"unknown field: {first_missing.message}")
    terms = []
    for f in filters:
        resolved = []
        for schema in schemas.values():
            try:
                resolved.append(resolve(schema, f))
            except Unresolved:
                pass
        terms.append(prune.term_for(f, resolved))
    return preds, terms


def chunk_has_match(store: ObjectStore, data_file: str, pred: RowPredicate, stats: QueryStats) -> bool:
    cols = pred.columns
    batches = 0
    try:
        pf = open_parquet(store, data_file)  # native file for a local store: no GIL per page
        if not cols:  # only $ex/$nex: any row matches
            return pf.metadata.num_rows > 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=cols):
            batches += 1
            if pred.mask(batch).any():
                return True
        return False
    finally:
        stats.add(1, batches)


def _match_tag(conn, store, tag, filters, where, stats) -> list[tuple[str, str, str, int]]:
    schemas = schemas_of_tag(conn, tag, where)
    if not schemas:
        return []  # no topic of this tag has data
    preds, terms = compile_for_schemas(schemas, filters)
    chunks = prune.candidate_chunks(conn, tag, terms, where)
    if not chunks:
        return []
    stats.chunks_candidate += len(chunks)
    by_topic: dict[int, list] = defaultdict(list)
    for row in chunks:
        if preds.get(row.schema_md5) is not None:
            by_topic[row.topic_id].append(row)
    stats.topics_checked += len(by_topic)

    def check(rows) -> tuple | None:
        pred = preds[rows[0].schema_md5]
        for row in rows:
            if chunk_has_match(store, row.data_file, pred, stats):
                return (row.sequence, row.topic, row.ontology_tag, row.sequence_id)
        return None

    topic_rows = list(by_topic.values())
    if len(topic_rows) <= 1:
        results = [check(r) for r in topic_rows]
    else:
        with ThreadPoolExecutor(max_workers=min(MAX_CONCURRENT_CHUNK_QUERIES, len(topic_rows))) as pool:
            results = list(pool.map(check, topic_rows))
    return [r for r in results if r is not None]


def run_query_with_stats(engine: sa.Engine, store: ObjectStore, body: dict) -> tuple[dict, QueryStats]:
    stats = QueryStats()
    return execute(engine, store, parse_query(body), stats), stats


__all__: list[Any] = ["run_query", "run_query_with_stats", "execute", "QueryStats"]
