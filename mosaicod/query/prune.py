"""Chunk pruning with per-chunk column statistics (docs/query.md#chunk-pruning).

For every ontology expression a condition on the chunk's statistics row is built that is true
whenever the chunk *could* hold a matching row; the candidate chunks are those satisfying all of
them (plus the sequence/topic clauses).  Pruning is conservative by construction:

* strict comparisons are checked non-strictly (int64 statistics are float64, rounded outwards by
  ``store/stats.py``, so ``v`` and a bound may collapse to the same float);
* ``$neq v`` prunes only chunks whose every value is exactly ``v`` (min = max = v, no null, no
  NaN, ``v`` exactly representable) — the upstream rule dropped valid chunks;
* text bounds are compared with ``COLLATE "C"`` (byte order, as the statistics were computed);
* temporal columns (stored as Arrow-cast text), plain-list literals, ``$match`` and mixed-type
  columns only require the column to exist in the chunk; ``$nex`` requires ``has_null``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..catalog.tables import chunk_overlaps, chunk_t, column_chunk_numeric_t, column_chunk_textual_t, column_t, sequence_t, topic_t
from .parse import Cond, OntoFilter
from .rowfilter import Resolved

MAX_IN_PRUNE = 256  # longer $in lists only require the column to exist


@dataclass(frozen=True)
class Term:
    column_name: str
    mode: str  # numeric | textual | exists_numeric | exists_textual | exists_any | null_numeric | null_textual | null_any
    cond: Cond


def term_for(f: OntoFilter, resolved: list[Resolved]) -> Term:
    """Pruning term for one expression given its resolution in every schema where it exists."""
    leaves = {r.leaf for r in resolved}
    plain = any(r.spec == "plain" for r in resolved)
    if leaves <= {"number", "bool"}:
        table = "numeric"
    elif leaves <= {"text", "temporal"}:
        table = "textual"
    else:
        table = "any"
    c = f.cond
    if c.op == "$nex":
        return Term(f.column_name, f"null_{table}", c)
    if (c.op in ("$ex", "$match") or plain or table == "any" or "temporal" in leaves
            or len(leaves) != 1 or (c.op == "$in" and len(c.value) > MAX_IN_PRUNE)):
        return Term(f.column_name, f"exists_{table}", c)
    if leaves == {"bool"}:
        v = c.value
        c = Cond(c.op, [float(x) for x in v] if isinstance(v, list) else float(v))
    return Term(f.column_name, table, c)


def _exact_float(v: Any) -> bool:
    try:
        return float(v) == v
    except OverflowError:
        return False


def _bounds(stats, t: Term):
    c = t.cond
    lo, hi = stats.c.min_value, stats.c.max_value
    numeric = t.mode == "numeric"

    def lit(v):
        if numeric:
            return sa.literal(float(v), sa.Float(53))
        return sa.literal(v, sa.Text).collate("C")

    if not numeric:
        lo, hi = lo.collate("C"), hi.collate("C")
    v = c.value
    if c.op == "$eq":
        return sa.and_(lo <= lit(v), hi >= lit(v))
    if c.op == "$neq":
        if numeric and not _exact_float(v):
            return sa.true()
        only_v = sa.and_(lo == lit(v), hi == lit(v), sa.not_(stats.c.has_null))
        if numeric:
            only_v = sa.and_(only_v, sa.not_(stats.c.has_nan))
        return sa.not_(only_v)
    if c.op in ("$lt", "$leq"):
        return lo <= lit(v)
    if c.op in ("$gt", "$geq"):
        return hi >= lit(v)
    if c.op == "$between":
        return sa.and_(lo <= lit(v[1]), hi >= lit(v[0]))
    if c.op == "$outside":
        return sa.or_(lo <= lit(v[0]), hi >= lit(v[1]))
    if c.op == "$in":
        return sa.or_(*[sa.and_(lo <= lit(x), hi >= lit(x)) for x in v])
    raise AssertionError(c.op)


def term_clause(t: Term, column_ids: dict[str, int]):
    """EXISTS(...) over the statistics of the outer ``chunk_t`` row."""
    cid = column_ids[t.column_name]

    def ex(stats, extra=None):
        conds = [stats.c.chunk_id == chunk_t.c.chunk_id, stats.c.column_id == cid]
        if extra is not None:
            conds.append(extra)
        return sa.exists(sa.select(sa.literal(1)).select_from(stats).where(*conds))

    num, txt = column_chunk_numeric_t, column_chunk_textual_t
    kind, _, table = t.mode.partition("_")
    if kind in ("numeric", "textual"):
        stats = num if kind == "numeric" else txt
        return ex(stats, _bounds(stats, t))
    tables = {"numeric": [num], "textual": [txt], "any": [num, txt]}[table]
    if kind == "exists":
        return sa.or_(*[ex(s) for s in tables])
    return sa.or_(*[ex(s, s.c.has_null) for s in tables])


def column_ids(conn: sa.Connection, tag: str, names: set[str]) -> dict[str, int]:
    rows = conn.execute(sa.select(column_t.c.column_name, column_t.c.column_id)
                        .where(column_t.c.ontology_tag == tag, column_t.c.column_name.in_(sorted(names))))
    return {name: cid for name, cid in rows}


def candidate_chunks(conn: sa.Connection, tag: str, terms: list[Term], where: list,
                     window: tuple[int | None, int | None] | None = None) -> list[sa.Row] | None:
    """Chunks of topics tagged ``tag`` (restricted by ``where``) whose statistics satisfy every
    term, ordered by topic then time.  None when a referenced column has no statistics at all
    (no chunk can match)."""
    ids = column_ids(conn, tag, {t.column_name for t in terms}) if terms else {}
    if any(t.column_name not in ids for t in terms):
        return None
    stmt = (sa.select(chunk_t.c.chunk_id, chunk_t.c.topic_id, chunk_t.c.data_file, chunk_t.c.row_count,
                      chunk_t.c.timestamp_order,
                      topic_t.c.locator_name.label("topic"), topic_t.c.ontology_tag,
                      sequence_t.c.locator_name.label("sequence"), sequence_t.c.sequence_id,
                      sa.func.md5(topic_t.c.arrow_schema).label("schema_md5"))
            .select_from(chunk_t.join(topic_t, chunk_t.c.topic_id == topic_t.c.topic_id)
                         .join(sequence_t, topic_t.c.sequence_id == sequence_t.c.sequence_id))
            .where(topic_t.c.ontology_tag == tag, chunk_t.c.row_count > 0, *where,
                   *[term_clause(t, ids) for t in terms])
            .order_by(topic_t.c.topic_id, chunk_t.c.start_timestamp_ns, chunk_t.c.chunk_id))
    if window is not None:
        stmt = stmt.where(*chunk_overlaps(*window))
    return list(conn.execute(stmt))
